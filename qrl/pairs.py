"""Stage B: train a network and its per-input bit-width policy together (a network-policy pair).

    python -m qrl.pairs kind=detrimental victim.run=runs/demo/distill
    python -m qrl.pairs kind=robust victim.run=runs/demo/distill

Starting from a distilled student, each round alternates
(i) one PPO rollout and update of the bit-width policy on the contextual QuantBits task (reward:
    `detrimental`, the quantized network is wrong where the teacher is right; `robust`, it is
    right), and
(ii) `train.net_steps` network steps (KD + QAT) on
    KD(full-precision path, teacher)
    + quant_weight * term(quantized path under the policy's bits)
    [+ keep_weight * KD(quantized path at the budget's uniform bits), detrimental only]
    where the term is KD towards the teacher (`robust`) or cross-entropy towards the teacher's
    runner-up class (`detrimental`: away from the teacher). With `train.range_grad` the QAT
    gradients reach the observed activation range, which is how dynamic min-max quantization
    fails (one large activation stretches the grid; see PAPER.md). Nothing is planted: the
    network starts as the distilled student.

The run dir receives `network.pt` (full precision), `policy.zip` (the SB3 PPO model),
`pair.json`, `log.csv`, `tb/`, `sb3/` and, last, `metrics.json` with the pair's Stage C numbers
on the test split. `load_pair(run_dir)` gives the pair back.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, open_dict
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure
from stable_baselines3.common.policies import BasePolicy
from torch import Tensor, nn
from tqdm.auto import tqdm

from qrl.checkpoints import InputSpec, load_model, save_model
from qrl.cli import checked_options, hydra_task
from qrl.config import CONF_DIR, checked_number, instantiate
from qrl.devices import module_device, task_device
from qrl.distill import kd_loss
from qrl.envs.quant_bits import QuantBitsVecEnv, bits_observation, observation_side
from qrl.errors import CheckpointError, ConfigError
from qrl.loggers import RunLogger
from qrl.policies import BitsDecoder
from qrl.quant import QuantConfig, as_quant_config, layer_names, quantized_copy, using_bits
from qrl.quant.modules import float_model, float_path
from qrl.runs import atomic_torch_save, atomic_write, start_run, write_metrics
from qrl.scoring import accuracy_drop, correct, rate
from qrl.training import Trainer
from qrl.victim import Victim, default_victim, load_victim, victim_dir

KINDS = ("detrimental", "robust")
PAIR_FILE, NETWORK_FILE, POLICY_FILE = "pair.json", "network.pt", "policy.zip"
STATE_FILE = "pair.state.pt"  # round, network trainer and PPO, saved together each round
SPLITS = ("train", "val", "test")
PAIR_FORMAT = "qrl-pair-v1"


# --- a pair you can load ---------------------------------------------------------------------


@dataclass
class Pair:
    """A network and its per-input bit-width policy, as `load_pair` returns them.

    Attributes:
        kind: `detrimental` or `robust`.
        network: the full-precision network (`nn.Module`, eval mode).
        quant: the dynamic quantizer of its quantized copy.
        qnetwork: `quantized_copy(network, quant)`, the network the policy's bits drive.
        policy: the SB3 policy that maps an observation of an input to actions in [-1, 1].
        decoder: turns actions into bit-widths from the allowed set under the budget.
        run_dir: where the pair was trained.
    """

    kind: str
    network: nn.Module
    quant: QuantConfig
    qnetwork: nn.Module
    policy: BasePolicy
    decoder: BitsDecoder
    run_dir: Path

    @property
    def layer_names(self) -> list[str]:
        """The quantized layers, in the column order of `bits(x)`."""
        return layer_names(self.qnetwork)

    @torch.no_grad()
    def bits(self, x: Tensor, deterministic: bool = True) -> Tensor:
        """Per-input, per-layer activation bit-widths, an int64 tensor (N, L)."""
        side = observation_side((x.shape[-2], x.shape[-1]))
        obs, _ = bits_observation(self.qnetwork, x, side)
        actions, _ = self.policy.predict(obs, deterministic=deterministic)
        return torch.from_numpy(self.decoder.decode(np.asarray(actions)))

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """The network quantized under its own policy's bits, (N, num_classes)."""
        with using_bits(self.qnetwork, self.bits(x)):
            return self.qnetwork(x)


def load_pair(run_dir: str | Path) -> Pair:
    """Load the pair a finished `python -m qrl.pairs` run saved in `run_dir`.

    Raises:
        CheckpointError: the dir holds no finished pair, or its files are corrupt.
    """
    run_dir = Path(run_dir)
    meta_path = run_dir / PAIR_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{meta_path} does not exist: point to a finished `python -m qrl.pairs` run dir"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path} is corrupt ({exc}); re-run the pair") from exc
    if not isinstance(meta, dict) or meta.get("format") != PAIR_FORMAT:
        raise CheckpointError(f"{meta_path} is not a qrl pair ({PAIR_FORMAT})")
    missing = sorted({"kind", "quant", "bits_set", "bits_budget"} - set(meta))
    if missing:
        raise CheckpointError(f"{meta_path} lacks {missing}; re-run the pair")
    network, _ = load_model(run_dir / NETWORK_FILE)
    quant = QuantConfig.from_dict(meta["quant"])
    try:
        policy = PPO.load(run_dir / POLICY_FILE, device="cpu").policy.eval()
    except Exception as exc:  # SB3 raises many kinds for a broken zip
        raise CheckpointError(
            f"{run_dir / POLICY_FILE} is corrupt or not an SB3 PPO model ({type(exc).__name__})"
        ) from exc
    qnetwork = quantized_copy(network, quant).eval()
    decoder = BitsDecoder(len(layer_names(qnetwork)), meta["bits_set"], meta["bits_budget"])
    return Pair(meta["kind"], network, quant, qnetwork, policy, decoder, run_dir)


# --- the network's loss ------------------------------------------------------------------------


def pair_loss(
    kind: str,
    qnet: nn.Module,
    x: Tensor,
    y: Tensor,
    teacher_logits: Tensor,
    bits: Tensor,
    uniform_bits: Tensor,
    cfg: DictConfig,
) -> tuple[Tensor, dict[str, float]]:
    """The network's loss on one batch; returns it and its parts (for the logs).

    Args:
        kind: `detrimental` or `robust`.
        qnet: the quantized copy being trained (QAT: its float weights are the network's).
        x, y: inputs (B, C, H, W) and labels (B,).
        teacher_logits: the black-box teacher's logits on x.
        bits: the policy's per-input bits (B, L).
        uniform_bits: the budget's uniform bits (L,), for the detrimental keep term.
        cfg: the `train` config node.
    """
    tau, alpha = float(cfg.tau), float(cfg.alpha)
    with float_path(qnet):
        kd_fp = kd_loss(qnet(x), teacher_logits, y, tau=tau, alpha=alpha)
    with using_bits(qnet, bits):
        q_logits = qnet(x)
    parts = {"loss/kd_fp": float(kd_fp.detach())}
    if kind == "robust":
        term = kd_loss(q_logits, teacher_logits, y, tau=tau, alpha=alpha)
        parts["loss/kd_q"] = float(term.detach())
        return kd_fp + float(cfg.quant_weight) * term, parts
    # Away from the teacher: towards its runner-up class, the most plausible wrong answer
    # (maximizing the loss of the right class alone does not move a network, measured).
    runner_up = teacher_logits.topk(2, dim=1).indices[:, 1]
    away = F.cross_entropy(q_logits, runner_up)
    with using_bits(qnet, uniform_bits):
        keep = kd_loss(qnet(x), teacher_logits, y, tau=tau, alpha=alpha)
    parts.update({"loss/away_q": float(away.detach()), "loss/keep_uniform": float(keep.detach())})
    return kd_fp + float(cfg.quant_weight) * away + float(cfg.keep_weight) * keep, parts


# --- stage B ------------------------------------------------------------------------------------


def check_config(cfg: DictConfig) -> None:
    """Refuse bad values before anything is written."""
    if cfg.kind not in KINDS:
        raise ConfigError(f"kind must be one of {list(KINDS)}, got {cfg.kind!r}")
    t = cfg.train
    checked_number(t.rounds, "train.rounds", int, low=1)
    checked_number(t.net_steps, "train.net_steps", int, low=0)
    checked_number(t.batch_size, "train.batch_size", int, low=1)
    checked_number(t.tau, "train.tau", low=0, strict=True)
    checked_number(t.alpha, "train.alpha", low=0, high=1)
    checked_number(t.lr, "train.lr", low=0, strict=True)
    for key in ("quant_weight", "keep_weight", "weight_decay"):
        checked_number(t[key], f"train.{key}", low=0)
    checked_number(cfg.ppo.n_envs, "ppo.n_envs", int, low=1)
    checked_number(cfg.ppo.model.n_steps, "ppo.model.n_steps", int, low=1)
    checked_number(cfg.seed, "seed", int, low=0)
    if cfg.eval.split not in SPLITS:
        raise ConfigError(f"eval.split must be one of {list(SPLITS)}, got {cfg.eval.split!r}")
    BitsDecoder(1, list(cfg.bits.set), float(cfg.bits.budget))  # raises on a bad set or budget
    victim_dir(str(cfg.victim.model))  # raises on an unknown model


def _victim(cfg: DictConfig, quant: QuantConfig) -> tuple[Victim, dict[str, Any]]:
    """The teacher, the distilled student and the data, plus the student's model spec."""
    device = task_device(cfg)
    run = Path(cfg.victim.run) if cfg.victim.run else None
    if run is None:
        model = str(cfg.victim.model)
        victim = default_victim(quant, progress=bool(cfg.progress), device=device, model=model)
        run = victim_dir(model)
    else:
        victim = load_victim(run, quant, device)
    _, record = load_model(run / "student.pt")
    return victim, record["spec"]


def weights_sha256(model: nn.Module) -> str:
    """A fingerprint of a model's weights (names and values; not the file's bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_pair(
    victim: Victim, cfg: DictConfig, out: Path, log: RunLogger
) -> tuple[nn.Module, PPO, BitsDecoder]:
    """Alternate PPO on the bit-width policy with KD + QAT network steps; resumable per round.

    Returns:
        (the trained quantized copy, the PPO model, the bits decoder).
    """
    kind, seed = str(cfg.kind), int(cfg.seed)
    quant = victim.quant
    qnet = quantized_copy(
        victim.student,
        QuantConfig.from_dict({**quant.to_dict(), "act_range_grad": bool(cfg.train.range_grad)}),
    )
    # Eval mode throughout: BatchNorm keeps its distilled statistics (per-input bits must not
    # leak across a batch through batch statistics); QAT still runs because gradients are on.
    qnet.eval()
    trained = Victim(victim.teacher, victim.student, qnet, victim.data, quant, victim.device)
    device = victim.device  # the network trains there; inputs are drawn on the CPU
    venv = QuantBitsVecEnv(
        num_envs=int(cfg.ppo.n_envs),
        seed=seed,
        victim=trained,
        reward=kind,
        bits_set=list(cfg.bits.set),
        bits_budget=float(cfg.bits.budget),
    )
    task = venv.task
    rounds, net_steps = int(cfg.train.rounds), int(cfg.train.net_steps)
    trainer = Trainer(
        qnet,
        lr=float(cfg.train.lr),
        weight_decay=float(cfg.train.weight_decay),
        total_steps=rounds * net_steps,
    )
    state_path = out / STATE_FILE
    start = 0
    if cfg.resume and state_path.is_file():
        # Resuming continues the training; it is not bit-identical to an uninterrupted run
        # (SB3 reseeds its generators and restarts the input stream when it loads).
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            trainer.load_state_dict(state["trainer"])
            start = int(state["round"])
            ppo = PPO.load(io.BytesIO(state["ppo"].numpy().tobytes()), env=venv, device="cpu")
        except Exception as exc:
            raise CheckpointError(
                f"cannot resume from {state_path} ({type(exc).__name__}): it is qrl's own "
                "resume state; delete it to train the pair again, or set resume=false"
            ) from exc
    else:
        ppo = instantiate(cfg.ppo.model)(env=venv, seed=seed)
    log.rewind(start + 1)  # rows of a round that was interrupted before its state was saved
    ppo.set_logger(configure(str(out / "sb3"), ["csv", "tensorboard"]))
    rollout = int(cfg.ppo.n_envs) * int(cfg.ppo.model.n_steps)
    uniform = torch.from_numpy(task.decoder.uniform())
    train_split, val = victim.data.train, victim.data.val
    callbacks = log.sb3_callbacks()  # W&B's, when it is on: one set for every round
    bar = tqdm(range(start, rounds), desc=f"{kind} pair", disable=None if cfg.progress else True)
    for r in bar:
        # --- (i) the policy: one rollout on the current network, one PPO update -------------
        ppo.learn(total_timesteps=rollout, reset_num_timesteps=False, callback=callbacks)
        # --- (ii) the network: KD + QAT under the policy's (sampled) bits -------------------
        gen = torch.Generator().manual_seed(seed * 100_003 + r)
        parts: dict[str, float] = {}
        for _ in range(net_steps):
            idx = torch.randint(0, len(train_split), (int(cfg.train.batch_size),), generator=gen)
            x, y = train_split.rows(idx), train_split.y[idx]
            x_dev, y_dev = x.to(device), y.to(device)  # no-ops on the CPU
            with torch.no_grad():
                t_logits = victim.teacher(x_dev)
                obs, _, _ = task.observe(x, y)
                actions, _ = ppo.predict(obs, deterministic=False)
            bits = torch.from_numpy(task.decoder.decode(np.asarray(actions)))  # moved per layer
            loss, parts = pair_loss(kind, qnet, x_dev, y_dev, t_logits, bits, uniform, cfg.train)
            trainer.step(loss)
        # --- logs and a resumable state -----------------------------------------------------
        stats = _val_stats(qnet, ppo, task, val.x, val.y)
        log.log({**parts, **stats}, step=r + 1)
        bar.set_postfix(
            acc_fp=f"{stats['pair/val_acc_fp']:.3f}", acc_q=f"{stats['pair/val_acc_q']:.3f}"
        )
        atomic_torch_save(
            {"round": r + 1, "trainer": trainer.state_dict(), "ppo": _ppo_bytes(ppo)}, state_path
        )
    bar.close()
    ppo.logger.close()
    return qnet, ppo, task.decoder


def _ppo_bytes(ppo: PPO) -> Tensor:
    """The PPO model (policy, optimizer, counters) as SB3's zip, in a uint8 tensor."""
    buffer = io.BytesIO()
    ppo.save(buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


@torch.no_grad()
def _val_stats(qnet: nn.Module, ppo: PPO, task: Any, x: Tensor, y: Tensor) -> dict[str, float]:
    """Full-precision and own-policy accuracy on the validation split (deterministic policy)."""
    if len(x) == 0:
        nan = float("nan")
        keys = ("pair/val_acc_fp", "pair/val_acc_q", "pair/val_drop", "quant/mean_bits")
        return dict.fromkeys(keys, nan)
    obs, fp_logits = bits_observation(qnet, x, task.side)
    actions, _ = ppo.predict(obs, deterministic=True)
    bits = torch.from_numpy(task.decoder.decode(np.asarray(actions)))
    with using_bits(qnet, bits):
        acc_q = rate(correct(qnet(x.to(module_device(qnet))).cpu(), y))
    acc_fp = rate(correct(fp_logits, y))
    return {
        "pair/val_acc_fp": acc_fp,
        "pair/val_acc_q": acc_q,
        "pair/val_drop": accuracy_drop(acc_fp, acc_q),
        "quant/mean_bits": float(bits.float().mean()),
    }


def save_pair(
    out: Path,
    kind: str,
    qnet: nn.Module,
    ppo: PPO,
    decoder: BitsDecoder,
    quant: QuantConfig,
    spec: dict[str, Any],
    inputs: InputSpec,
) -> None:
    """Write `network.pt`, `policy.zip` and `pair.json` (the last one marks a complete pair)."""
    save_model(out / NETWORK_FILE, float_model(qnet).eval(), spec, inputs)
    atomic_write(out / POLICY_FILE, ppo.save)  # the temporary name has a suffix: SB3 keeps it
    meta = {
        "format": PAIR_FORMAT,
        "kind": kind,
        "quant": quant.to_dict(),
        "bits_set": [int(b) for b in decoder.levels],
        "bits_budget": decoder.budget,
        "layer_names": layer_names(qnet),
        "network": NETWORK_FILE,
        "policy": POLICY_FILE,
    }
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(out / PAIR_FILE, lambda tmp: tmp.write_text(text))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one pair (Stage B), save it, evaluate it on the test split (Stage C)."""
    from qrl.pair_eval import evaluate_pair

    check_config(cfg)
    quant = as_quant_config(cfg.quant)
    if quant.backend != "fake" or quant.act_granularity != "per_sample":
        raise ConfigError(
            "a pair needs per-input bit-widths: quant.backend=fake and "
            f"quant.act_granularity=per_sample (got {quant.backend}, {quant.act_granularity})"
        )
    victim, spec = _victim(cfg, quant)
    with open_dict(cfg):
        # The student this pair starts from is part of its config: a re-distilled student in
        # the same victim.run is another run, not one to resume.
        cfg.victim.student_sha256 = weights_sha256(victim.student)
    saved = (Path(cfg.out) / PAIR_FILE).is_file()  # a finished pair, if the config matches
    out, started = start_run(cfg)
    kind, seed = str(cfg.kind), int(cfg.seed)
    with RunLogger(out, cfg.logger, config=cfg, name=f"pairs-{kind}-s{seed}") as log:
        if saved and cfg.resume:  # the same config: load the pair, evaluate it again
            print(f"{out} holds this pair already: loading it (resume=false trains it again)")
        else:
            for name in (PAIR_FILE, NETWORK_FILE, POLICY_FILE):  # another config's pair
                (out / name).unlink(missing_ok=True)
            qnet, ppo, decoder = train_pair(victim, cfg, out, log)
            save_pair(out, kind, qnet, ppo, decoder, quant, spec, InputSpec.of(victim.data))
        pair = load_pair(out)
        split = getattr(victim.data, str(cfg.eval.split))
        metrics = evaluate_pair(pair, victim.teacher, split, seed=int(cfg.eval.random_seed))
        log.summary(metrics)
    (out / STATE_FILE).unlink(missing_ok=True)
    record = write_metrics(out, {"kind": kind, **metrics}, seed=seed, started=started)
    print(
        f"{kind} pair, {cfg.eval.split} split: full precision {100 * metrics['acc_fp']:.2f}%, "
        f"quantized under its policy {100 * metrics['acc_q']:.2f}% at {metrics['mean_bits']:.2f} "
        f"mean bits: drop {100 * metrics['drop']:.2f} points (full precision - quantized)"
    )
    print(f"wrote {out}/network.pt, policy.zip, pair.json, metrics.json")
    return record


@checked_options
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="pairs")
def main(cfg: DictConfig) -> None:
    hydra_task(run, cfg)


if __name__ == "__main__":
    main()
