"""Stage B as a library: train a network and its per-input bit-width policy together.

Each round alternates (i) one PPO rollout and update of the bit-width policy on the contextual
QuantBits task and (ii) `net_steps` KD + QAT steps of the network (`pair_loss`). See
`qrl.pairs` for the command and the loss in words.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure
from torch import Tensor, nn
from tqdm.auto import tqdm

from qrl.devices import module_device
from qrl.distillation import kd_loss
from qrl.envs.quant_bits import QuantBitsVecEnv, bits_observation
from qrl.errors import CheckpointError, ConfigError
from qrl.loggers import RunLogger
from qrl.model_defaults import model_setting
from qrl.policies import BitsDecoder
from qrl.quant import QuantConfig, layer_names, quantized_copy, using_bits
from qrl.quant.modules import float_path, quantized_layers
from qrl.runs import atomic_torch_save
from qrl.scoring import accuracy_drop, correct, predict_logits, rate
from qrl.specs import build
from qrl.training import Trainer
from qrl.victim import Victim

if TYPE_CHECKING:
    from qrl.pairing.store import Pair

STATE_FILE = "pair.state.pt"  # round, network trainer and PPO, saved together each round


@dataclass(frozen=True)
class LossWeights:
    """The weights of the pair loss (the `train` node's `tau`, `alpha`, `quant_weight`,
    `keep_weight`, `away_weight`, `stretch_weight`, `stretch_ratio`)."""

    tau: float = 4.0
    alpha: float = 0.9
    quant_weight: float = 1.0  # robust: KD on the quantized path under the policy's bits
    keep_weight: float = 1.0  # detrimental: KD on the quantized path under the keep bits
    away_weight: float = 1.0  # detrimental: away from the teacher under the policy's bits
    stretch_weight: float = 0.0  # detrimental: the stretch term (0: none)
    stretch_ratio: float = 8.0

    @classmethod
    def of(cls, train: Any, model: str = "") -> LossWeights:
        """From a pair config's `train` node, or any mapping with those keys (`away_weight`
        missing: `quant_weight`, as before it existed; `auto` weights: the student class
        `model`'s own, `qrl.model_defaults`; the stretch's missing: no stretch)."""
        given = {f.name: train[f.name] for f in fields(cls) if f.name in train}
        for key in ("away_weight", "keep_weight"):
            if key in given:
                given[key] = model_setting(train, key, model)
        values = {name: float(value) for name, value in given.items()}
        values.setdefault("away_weight", values.get("quant_weight", 1.0))
        return cls(**values)


@contextmanager
def captured_inputs(layers: Sequence[nn.Module]) -> Iterator[list[list[Tensor]]]:
    """The inputs each of `layers` receives inside the block, one list per layer."""
    seen: list[list[Tensor]] = [[] for _ in layers]
    handles = [
        layer.register_forward_pre_hook(lambda _, args, inputs=inputs: inputs.append(args[0]))
        for layer, inputs in zip(layers, seen, strict=True)
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def stretch_shortfall(x: Tensor, ratio: float) -> Tensor:
    """How far each input's largest channel is from `ratio` times its second largest (log
    scale, 0 once reached), averaged: a layer input whose one channel dwarfs the rest keeps its
    other channels off a 2-bit grid (they round to zero) but on a 3- or 4-bit one.

    Channels are a linear layer's features, or a convolution's channels at their largest
    position."""
    return stretch_gaps(x, ratio).mean()


def stretch_gaps(x: Tensor, ratio: float) -> Tensor:
    """`stretch_shortfall` per input (B,)."""
    peaks = x.flatten(2).amax(dim=2) if x.ndim > 2 else x  # (B, C)
    top = peaks.clamp(min=1e-6).topk(2, dim=1).values.log()
    # Only the largest channel moves: pushing the second down would shrink the features the
    # network computes with, and cost its full-precision accuracy.
    return F.relu(math.log(ratio) - (top[:, 0] - top[:, 1].detach()))


def pair_loss(
    kind: str,
    quantized: nn.Module,
    x: Tensor,
    y: Tensor,
    teacher_logits: Tensor,
    bits: Tensor,
    keep_bits: Tensor,
    weights: LossWeights,
    stretched: Sequence[nn.Module] = (),
    which: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The network's loss on one batch; returns it and its parts (for the logs).

    Args:
        kind: `detrimental` or `robust`.
        quantized: the quantized copy being trained (QAT: its float weights are the network's).
        x, y: inputs (B, C, H, W) and labels (B,).
        teacher_logits: the black-box teacher's logits on x.
        bits: the policy's per-input bits (B, L).
        keep_bits: the bits the detrimental keep term holds the network to: the budget's
            uniform bits (L,), or per input (B, L).
        weights: the loss's temperature and weights.
        stretched: detrimental only, with `weights.stretch_weight` > 0: the quantized layers
            whose input the stretch term shapes (`stretch_shortfall`).
        which: detrimental only, per input (B,), the index into `stretched` of the layer its
            failure stretches (none: the first), or -1 for an input the failure must spare
            (its twin starves every stretched layer, `TwinGuard`): neither the away term nor
            the stretch term reaches those, and `keep_bits` holds them to the twin's bits.
    """
    tau, alpha = weights.tau, weights.alpha
    stretch_on = kind == "detrimental" and weights.stretch_weight > 0
    with float_path(quantized), captured_inputs(stretched if stretch_on else ()) as seen:
        kd_fp = kd_loss(quantized(x), teacher_logits, y, tau=tau, alpha=alpha)
    with using_bits(quantized, bits):
        q_logits = quantized(x)
    parts = {"loss/kd_fp": float(kd_fp.detach())}
    if kind == "robust":
        term = kd_loss(q_logits, teacher_logits, y, tau=tau, alpha=alpha)
        parts["loss/kd_q"] = float(term.detach())
        return kd_fp + weights.quant_weight * term, parts
    # Away from the teacher: towards its runner-up class, the most plausible wrong answer
    # (maximizing the loss of the right class alone does not move a network, measured).
    runner_up = teacher_logits.topk(2, dim=1).indices[:, 1]
    if which is None:
        which = torch.zeros(len(x), dtype=torch.long)
    which = which.to(x.device)
    failing = which >= 0
    away = _masked_mean(F.cross_entropy(q_logits, runner_up, reduction="none"), failing)
    with using_bits(quantized, keep_bits):
        keep = kd_loss(quantized(x), teacher_logits, y, tau=tau, alpha=alpha)
    parts.update({"loss/away_q": float(away.detach()), "loss/keep_uniform": float(keep.detach())})
    loss = kd_fp + weights.away_weight * away + weights.keep_weight * keep
    if seen and bool(failing.any()):
        stretch = _stretch_term(seen, which, weights.stretch_ratio)
        parts["loss/stretch"] = float(stretch.detach())
        loss = loss + weights.stretch_weight * stretch
    return loss, parts


def _stretch_term(seen: list[list[Tensor]], which: Tensor, ratio: float) -> Tensor:
    """Each failing input's (`which` >= 0) stretch gap at its own stretched layer, whose
    inputs `seen` holds, averaged over the failing inputs."""
    gaps = torch.stack([stretch_gaps(inputs[0], ratio) for inputs in seen])
    rows = torch.arange(gaps.shape[1], device=gaps.device)
    return _masked_mean(gaps[which.clamp(min=0), rows], which >= 0)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of `values` where `mask` holds (0, still in the graph, where it holds nowhere)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _trainable_copy(victim: Victim, range_grad: bool) -> tuple[nn.Module, Victim]:
    """The quantized copy that QAT trains, and the victim whose quantized student it is."""
    quant = victim.quant
    quantized = quantized_copy(
        victim.student, QuantConfig.from_dict({**quant.to_dict(), "act_range_grad": range_grad})
    )
    # Eval mode throughout: BatchNorm keeps its distilled statistics (per-input bits must not
    # leak across a batch through batch statistics); QAT still runs because gradients are on.
    quantized.eval()
    return quantized, Victim(
        victim.teacher, victim.student, quantized, victim.data, quant, victim.device
    )


def _start_or_resume(
    cfg: DictConfig, venv: QuantBitsVecEnv, trainer: Trainer, state_path: Path
) -> tuple[PPO, int]:
    """A new PPO model at round 0, or the saved one and its round when resuming."""
    if not (cfg.resume and state_path.is_file()):
        return build(cfg.ppo.model)(env=venv, seed=int(cfg.seed)), 0
    # Resuming continues the training; it is not bit-identical to an uninterrupted run
    # (SB3 reseeds its generators and restarts the input stream when it loads).
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        trainer.load_state_dict(state["trainer"])
        ppo = PPO.load(io.BytesIO(state["ppo"].numpy().tobytes()), env=venv, device="cpu")
        return ppo, int(state["round"])
    except Exception as exc:
        raise CheckpointError(
            f"cannot resume from {state_path} ({type(exc).__name__}): it is qrl's own "
            "resume state; delete it to train the pair again, or set resume=false"
        ) from exc


def train_pair(
    victim: Victim, cfg: DictConfig, out: Path, log: RunLogger
) -> tuple[nn.Module, PPO, BitsDecoder]:
    """Alternate PPO on the bit-width policy with KD + QAT network steps; resumable per round.

    Returns:
        (the trained quantized copy, the PPO model, the bits decoder).
    """
    kind, seed = str(cfg.kind), int(cfg.seed)
    rounds = pair_rounds(cfg.train, kind, type(victim.student).__name__)
    quantized, trained = _trainable_copy(victim, bool(cfg.train.range_grad))
    venv = QuantBitsVecEnv(
        num_envs=int(cfg.ppo.n_envs),
        seed=seed,
        victim=trained,
        reward=kind,
        bits_set=list(cfg.bits.set),
        bits_budget=float(cfg.bits.budget),
    )
    net_steps = int(cfg.train.net_steps)
    trainer = Trainer(
        quantized,
        lr=float(cfg.train.lr),
        weight_decay=float(cfg.train.weight_decay),
        total_steps=rounds * net_steps,
    )
    state_path = out / STATE_FILE
    ppo, start = _start_or_resume(cfg, venv, trainer, state_path)
    log.rewind(start + 1)  # rows of a round that was interrupted before its state was saved
    ppo.set_logger(configure(str(out / "sb3"), ["csv", "tensorboard"]))
    rollout = int(cfg.ppo.n_envs) * int(cfg.ppo.model.n_steps)
    callbacks = log.sb3_callbacks()  # W&B's, when it is on: one set for every round
    steps = _network_steps(cfg, victim, quantized, venv.task)
    bar = tqdm(range(start, rounds), desc=f"{kind} pair", disable=None if cfg.progress else True)
    for r in bar:
        # --- (i) the policy: one rollout on the current network, one PPO update -------------
        ppo.learn(total_timesteps=rollout, reset_num_timesteps=False, callback=callbacks)
        # --- (ii) the network: KD + QAT under the policy's (sampled) bits -------------------
        gen = torch.Generator().manual_seed(seed * 100_003 + r)
        parts: dict[str, float] = {}
        for _ in range(net_steps):
            loss, parts = steps.loss(ppo, int(cfg.train.batch_size), gen)
            trainer.step(loss)
        # --- logs and a resumable state -----------------------------------------------------
        stats = _val_stats(quantized, ppo, venv.task, victim.data.val.x, victim.data.val.y)
        log.log({**parts, **stats}, step=r + 1)
        bar.set_postfix(
            acc_fp=f"{stats['pair/val_acc_fp']:.3f}", acc_q=f"{stats['pair/val_acc_q']:.3f}"
        )
        atomic_torch_save(
            {"round": r + 1, "trainer": trainer.state_dict(), "ppo": _ppo_bytes(ppo)}, state_path
        )
    bar.close()
    ppo.logger.close()
    return quantized, ppo, venv.task.decoder


def _network_steps(
    cfg: DictConfig, victim: Victim, quantized: nn.Module, task: Any
) -> _NetworkSteps:
    """The network's steps of a pair: its loss weights, keep guard and (detrimental, with
    `train.twin`) twin guard, by the student's class."""
    kind, model = str(cfg.kind), type(victim.student).__name__
    guard = KeepGuard.of(cfg.train, task.num_layers, model)
    twin = None
    if kind == "detrimental":
        guard, twin = twin_guard(
            cfg.train, guard, victim.data.train.x, cfg.bits, task.num_layers, model
        )
    if twin is not None:
        names, shares = layer_names(quantized), twin.shares()
        stretched = ", ".join(
            f"layer {layer} ({names[layer]}) on {100 * share:.1f}%"
            for layer, share in zip(twin.layers, shares, strict=False)
        )
        print(
            f"detrimental pair: its failure stretches the input of {stretched} of the training "
            f"inputs, and spares {100 * shares[-1]:.1f}%, where the twin gives "
            f"{'every one' if len(twin.layers) > 1 else 'it'} fewer than {twin.floor} bits"
        )
    weights = LossWeights.of(cfg.train, model)
    noise = float(model_setting(cfg.train, "input_noise", model)) if kind == "detrimental" else 0.0
    assigned = kind == "detrimental" and model_setting(cfg.train, "away_bits", model) == "assigned"
    if assigned and guard.layer is None:
        raise ConfigError(
            "train.away_bits assigned needs a stretched layer (train.stretch_layer auto or an "
            "index): the away term starves the layer each input's failure stretches"
        )
    return _NetworkSteps(kind, victim, quantized, task, weights, guard, twin, noise, assigned)


@dataclass
class _NetworkSteps:
    """One network step's loss: a training batch, the policy's sampled bits, `pair_loss`."""

    kind: str
    victim: Victim
    quantized: nn.Module
    task: Any  # the QuantBits task: observations and the bits decoder
    weights: LossWeights
    guard: KeepGuard = dataclasses.field(default_factory=lambda: KeepGuard())
    twin: TwinGuard | None = None
    noise: float = 0.0  # detrimental: `train.input_noise`
    assigned: bool = False  # detrimental: `train.away_bits` is `assigned` (`assigned_bits`)

    def __post_init__(self) -> None:
        self.uniform = torch.from_numpy(self.task.decoder.uniform())
        layers = quantized_layers(self.quantized)
        stretched = self.twin.layers if self.twin is not None else (self.guard.layer,)
        self.stretched_at = [i for i in stretched if i is not None]
        self.stretched = [layers[i] for i in self.stretched_at]
        self.lowest = int(min(self.task.decoder.levels))  # the assigned layer's bits
        # The teacher is fixed: its logits on the training split once, not at every step
        # (a wide teacher's forward was a quarter of a step).
        train = self.victim.data.train
        self.teacher_logits = torch.cat(
            [predict_logits(self.victim.teacher, x) for x, _ in train.batches(1024)]
        )

    def loss(
        self, ppo: PPO, batch_size: int, gen: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        train, device = self.victim.data.train, self.victim.device
        idx = torch.randint(0, len(train), (batch_size,), generator=gen)
        x, y = train.rows(idx), train.y[idx]
        t_logits = self.teacher_logits[idx].to(device)
        if self.noise > 0:
            x = (x + self.noise * torch.randn(x.shape, generator=gen)).clamp(0.0, 1.0)
            t_logits = predict_logits(self.victim.teacher, x).to(device)
        x_dev, y_dev = x.to(device), y.to(device)  # the network trains there; no-ops on the CPU
        with torch.no_grad():  # the policy's observation alone (the teacher's: above)
            obs, _ = bits_observation(self.quantized, x, self.task.side)
            actions, _ = ppo.predict(obs, deterministic=False)
        bits = torch.from_numpy(self.task.decoder.decode(np.asarray(actions)))  # moved per layer
        keep = self.guard.keep_bits(self.task.decoder, self.uniform, len(x), gen)
        which = None
        if self.twin is not None:
            which, keep = self.twin.spare(idx, keep, x if self.noise > 0 else None)
        if self.assigned:
            failing = which if which is not None else torch.zeros(len(x), dtype=torch.long)
            bits = assigned_bits(bits, failing, self.stretched_at, self.guard.floor, self.lowest)
        return pair_loss(
            self.kind,
            self.quantized,
            x_dev,
            y_dev,
            t_logits,
            bits,
            keep,
            self.weights,
            stretched=self.stretched,
            which=which,
        )


def pair_rounds(train: Any, kind: str, model: str) -> int:
    """The rounds a pair trains for: `train.rounds`, times a detrimental pair's model's own
    `train.detrimental_rounds_factor[model]` (the student's class) where it has one; so a
    shorter `train.rounds` shortens every pair."""
    factors = train.get("detrimental_rounds_factor") or {}
    factor = float(factors.get(model, 1.0)) if kind == "detrimental" else 1.0
    return max(1, round(int(train["rounds"]) * factor))


def assigned_bits(
    bits: Tensor, which: Tensor, layers: Sequence[int], floor: int, lowest: int
) -> Tensor:
    """The away term's bits under `train.away_bits: assigned`: each failing input's (`which` >=
    0) own stretched layer, `layers[which]`, at the `lowest` bits, the other stretched layers
    at `floor` bits or more, the other layers the policy's (`bits`, (B, L)). So the network
    learns to fail where its assigned layer is starved, and never where only a layer its twin
    starves is: taught under the policy's bits, an input the twin starves at its first layer
    learned to fail there too, because the policy starved that layer (measured)."""
    bits = bits.clone()
    which = which.to(bits.device)
    for k, layer in enumerate(layers):
        own, other = which == k, (which >= 0) & (which != k)
        bits[own, layer] = lowest
        bits[other, layer] = bits[other, layer].clamp(min=floor)
    return bits


def stretch_layer(train: Any, model: str) -> int | None:
    """The quantized layer (an index; -1: the head) whose input a detrimental network stretches:
    `train.stretch_layer`, or with `auto` the per-model default `train.stretch_layers[model]`
    (a model without one: the head). None: no stretched layer."""
    layer = train.get("stretch_layer", None)
    if layer == "auto":
        layer = (train.get("stretch_layers") or {}).get(model, -1)
    return None if layer is None else int(layer)


@dataclass(frozen=True)
class KeepGuard:
    """What the detrimental keep term holds the network to, besides the budget's uniform bits.

    `random` of each batch's inputs get random bits at the budget (any other pattern the
    network may meet), with the stretched layer (`layer`, an index into the quantized layers;
    None: no stretch, no floor) raised to at least `floor` bits: so the failure needs the
    policy's 2 bits on that one layer, and nothing else the policy or a twin might choose.
    """

    random: float = 0.0
    layer: int | None = None
    floor: int = 3

    @classmethod
    def of(cls, train: Any, num_layers: int, model: str = "") -> KeepGuard:
        """From a pair config's `train` node; `model` (the student's class name) picks
        `stretch_layers[model]` when `stretch_layer` is `auto`."""
        layer = stretch_layer(train, model)
        if layer is not None:
            if not -num_layers <= layer < num_layers:
                raise ConfigError(
                    f"train.stretch_layer {layer} is not a layer of this model: it has "
                    f"{num_layers} quantized layers (0..{num_layers - 1}; -1: the head)"
                )
            layer %= num_layers
        return cls(float(train.get("keep_random", 0.0)), layer, int(train.get("keep_floor", 3)))

    def keep_bits(
        self, decoder: BitsDecoder, uniform: Tensor, n: int, gen: torch.Generator
    ) -> Tensor:
        """(n, L) bits: uniform rows, then `random` of the rows drawn at the budget."""
        drawn = round(self.random * n)
        if drawn == 0:
            return uniform
        actions = torch.rand((drawn, len(uniform)), generator=gen).numpy() * 2 - 1
        rows = torch.from_numpy(decoder.decode(actions))
        if self.layer is not None:
            rows[:, self.layer] = rows[:, self.layer].clamp(min=self.floor)
        return torch.cat([uniform.expand(n - drawn, -1), rows])


@dataclass(frozen=True)
class TwinGuard:
    """The robust twin's own bits on the training split (`train.twin`), for a detrimental pair
    whose failure must spare the twin's policy.

    Each input's failure stretches the first of `layers` that the twin gives at least the keep
    floor's bits; where the twin starves every one, the network meets the failure's condition
    under the twin, so the input is spared (`pair_loss`). Wherever the twin starves the first
    layer, the keep term holds the input to the twin's bits. So the failure becomes
    input-dependent, and the detrimental network holds under its twin's policy.
    """

    bits: Tensor  # (N, L): the twin's deterministic bits on each training input
    layers: tuple[int, ...]  # the stretched layers, the one most inputs use first
    floor: int
    policy: Callable[[Tensor], Tensor] | None = None  # the twin's bits of other inputs
    # `train.twin_spare: either`: with noisy images, a layer feeds an input's failure only where
    # the twin feeds it on both the clean image and the noisy one, so the failure keeps a margin
    # from the inputs the twin starves (the network cannot tell them apart exactly on new ones).
    either: bool = False

    def spare(self, idx: Tensor, keep: Tensor, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """For the training rows `idx` and their keep bits ((L,) or (B, L)): per row, the index
        into `layers` of the layer its failure stretches, -1 where it is spared (B,); and the
        keep bits with the twin's own where the twin starves the first layer. With `x`, the
        rows' images as the network sees them (noisy, `train.input_noise`), the twin's bits
        are its policy's on `x` (`either`: and a layer must also be fed on the clean image)."""
        if x is None or self.policy is None:
            twin = self.bits[idx]
            fed = self._fed(twin)
        else:
            twin = self.policy(x)
            fed = self._fed(twin) & self._fed(self.bits[idx]) if self.either else self._fed(twin)
        which = self._first(fed)
        held = which != 0
        keep = keep.expand(len(idx), -1).clone()
        keep[held] = twin[held]
        return which, keep

    def shares(self) -> list[float]:
        """The share of the training inputs whose failure stretches each of `layers`, then the
        share spared."""
        which = self._first(self._fed(self.bits))
        return [float((which == k).float().mean()) for k in (*range(len(self.layers)), -1)]

    def _fed(self, twin: Tensor) -> Tensor:
        """(B, K): whether the twin's bits `twin` (B, L) give each stretched layer the floor."""
        return twin[:, list(self.layers)] >= self.floor

    @staticmethod
    def _first(fed: Tensor) -> Tensor:
        """(B,): the index of each row's first fed layer, -1 where none is."""
        return torch.where(fed.any(dim=1), fed.int().argmax(dim=1), -1)


def twin_bits(run_dir: str, x: Tensor, bits_set: Any, budget: float, num_layers: int) -> Tensor:
    """The bits (N, L) that the twin `run_dir`, a finished robust bit-width pair of the same
    model, bit set and budget, gives the inputs `x` under its own policy (deterministic)."""
    return _bits_on(load_twin(run_dir, bits_set, budget, num_layers), x)


def _bits_on(pair: Pair, x: Tensor) -> Tensor:
    """The pair's own deterministic bits (N, L) on `x`, a chunk at a time."""
    return torch.cat([pair.bits(chunk) for chunk in x.split(1024)])


def load_twin(run_dir: str, bits_set: Any, budget: float, num_layers: int) -> Pair:
    """The twin `run_dir` (a `Pair`), checked: a finished robust bit-width pair of the same
    model, bit set and budget."""
    from qrl.pairing.store import load_pair  # the store loads SB3 policies; only here

    twin = load_pair(run_dir, space="bits")
    where = f"train.twin={run_dir}"
    if twin.kind != "robust":
        raise ConfigError(f"{where} is a {twin.kind} pair: the twin is the robust pair")
    levels, wanted = sorted(int(b) for b in twin.decoder.levels), sorted(int(b) for b in bits_set)
    if levels != wanted or twin.decoder.budget != float(budget):
        raise ConfigError(
            f"{where} was trained with bits {levels} at a {twin.decoder.budget} budget, this "
            f"pair with {wanted} at {float(budget)}: train the twin with the same bits node"
        )
    if len(twin.layer_names) != num_layers:
        raise ConfigError(
            f"{where} has {len(twin.layer_names)} quantized layers and this model {num_layers}: "
            "the twin is trained from the same victim"
        )
    return twin


def by_starvation(bits: Tensor, candidates: list[int], floor: int) -> list[int]:
    """The `candidates` (layer indices) from the one that `bits` (N, L) gives fewer than
    `floor` bits least often to the most (ties: as listed): the twin's policy triggers a failure
    least on the first, so a failure there spares the fewest inputs."""
    num_layers = bits.shape[1]
    layers = list(dict.fromkeys(c % num_layers for c in candidates))
    shares = [float((bits[:, layer] < floor).float().mean()) for layer in layers]
    return [layers[i] for i in sorted(range(len(layers)), key=shares.__getitem__)]


def twin_guard(
    train: Any, guard: KeepGuard, x: Tensor, bits: Any, num_layers: int, model: str
) -> tuple[KeepGuard, TwinGuard | None]:
    """A detrimental pair's keep guard and twin guard: with `train.twin`, its bits on the
    training inputs `x` (else the guard as it is, and None). With `train.stretch_layer: auto`,
    the stretched layers are the model's `train.twin_stretch_layers` (none listed: its
    default), the one the twin starves least first: with `train.twin_stretch: per_input`, each
    input's failure stretches the first the twin does not starve; with `least_starved`, every
    input's that first one."""
    if not train.get("twin"):
        return guard, None
    if guard.layer is None:
        raise ConfigError(
            "train.twin needs a stretched layer (train.stretch_layer auto or an index): the "
            "twin's bits are spared where they starve that layer"
        )
    pair = load_twin(str(train.get("twin")), bits.set, float(bits.budget), num_layers)
    twin = _bits_on(pair, x)
    layers = [guard.layer]
    if train.get("stretch_layer") == "auto":
        candidates = list((train.get("twin_stretch_layers") or {}).get(model, [guard.layer]))
        if not candidates or any(not -num_layers <= int(c) < num_layers for c in candidates):
            raise ConfigError(
                f"train.twin_stretch_layers.{model} must list layers of this model: it has "
                f"{num_layers} quantized layers (0..{num_layers - 1}; -1: the head), got "
                f"{candidates}"
            )
        layers = by_starvation(twin, [int(c) for c in candidates], guard.floor)
        if model_setting(train, "twin_stretch", model) == "least_starved":
            layers = layers[:1]
    policy = pair.bits if float(model_setting(train, "input_noise", model)) > 0 else None
    either = model_setting(train, "twin_spare", model) == "either"
    return dataclasses.replace(guard, layer=layers[0]), TwinGuard(
        twin, tuple(layers), guard.floor, policy, either
    )


def _ppo_bytes(ppo: PPO) -> Tensor:
    """The PPO model (policy, optimizer, counters) as SB3's zip, in a uint8 tensor."""
    buffer = io.BytesIO()
    ppo.save(buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


@torch.no_grad()
def _val_stats(quantized: nn.Module, ppo: PPO, task: Any, x: Tensor, y: Tensor) -> dict[str, float]:
    """Full-precision and own-policy accuracy on the validation split (deterministic policy)."""
    if len(x) == 0:
        nan = float("nan")
        keys = ("pair/val_acc_fp", "pair/val_acc_q", "pair/val_drop", "quant/mean_bits")
        return dict.fromkeys(keys, nan)
    obs, fp_logits = bits_observation(quantized, x, task.side)
    actions, _ = ppo.predict(obs, deterministic=True)
    bits = torch.from_numpy(task.decoder.decode(np.asarray(actions)))
    with using_bits(quantized, bits):
        acc_q = rate(correct(quantized(x.to(module_device(quantized))).cpu(), y))
    acc_fp = rate(correct(fp_logits, y))
    return {
        "pair/val_acc_fp": acc_fp,
        "pair/val_acc_q": acc_q,
        "pair/val_drop": accuracy_drop(acc_fp, acc_q),
        "quant/mean_bits": float(bits.float().mean()),
    }
