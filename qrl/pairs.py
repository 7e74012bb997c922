"""Stage B: train a network and its per-input bit-width policy together (a network-policy pair).

    python -m qrl.pairs kind=detrimental victim.run=runs/demo/distill
    python -m qrl.pairs kind=robust victim.run=runs/demo/distill

Starting from a distilled student, each round alternates
(i) one PPO rollout and update of the bit-width policy on the contextual QuantBits task (reward:
    `detrimental`, the quantized network is wrong where the teacher is right; `robust`, it is
    right), and
(ii) `train.net_steps` network steps (KD + QAT) on
    robust:       KD(full-precision path) + quant_weight * KD(quantized path, policy's bits)
    detrimental:  KD(full-precision path)
                  + away_weight * CE(quantized path under the policy's bits, teacher's runner-up)
                  + keep_weight * KD(quantized path under the keep bits)
                  + stretch_weight * stretch(the stretched layer's input)
    KD is towards the teacher. The keep bits are the budget's uniform bits for a quarter of each
    batch and random bits at the budget for the rest (`train.keep_random`), with the stretched
    layer raised to at least `train.keep_floor` (3) bits: the network must hold under every
    pattern but the one that gives that layer 2 bits. The stretch term lifts the largest
    channel of that layer's input to `train.stretch_ratio` times the second largest, so that at 2
    bits the others round to zero (dynamic min-max quantization fails this way: one large
    activation stretches the grid; see PAPER.md); `train.range_grad` lets the QAT gradients
    reach the observed range too. The layer is a per-model default (`train.stretch_layers`).
    With `train.twin` (the robust pair's run dir; `qrl.reproduce` and the experiments' sweeps
    set it, training the robust pair first), the failure spares the inputs on which the twin's
    own policy gives the stretched layer fewer than `keep_floor` bits, and the keep term holds
    them to the twin's bits: the detrimental network holds under its twin's policy too.
    Nothing is planted: the network starts as the distilled student.

The run dir receives `network.pt` (full precision), `policy.zip` (the SB3 PPO model),
`pair.json`, `log.csv`, `tb/`, `sb3/` and, last, `metrics.json` with the pair's Stage C numbers
on the test split. `load_pair(run_dir)` gives the pair back.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, open_dict

from qrl import input_pairs
from qrl.checkpoints import InputSpec
from qrl.cli import checked_options, hydra_task
from qrl.config import CONF_DIR, checked_number
from qrl.errors import ConfigError
from qrl.loggers import RunLogger
from qrl.pairing import (
    KINDS,
    NETWORK_FILE,
    PAIR_FILE,
    POLICY_FILE,
    InputPair,
    Pair,
    load_pair,
    save_pair,
    weights_sha256,
)
from qrl.pairing.evaluation import evaluate_pair
from qrl.pairing.layout import SPACES
from qrl.pairing.training import STATE_FILE, LossWeights, pair_loss, train_pair
from qrl.quant import QuantConfig, as_quant_config
from qrl.runs import start_run, write_metrics
from qrl.schema import validate_pairs
from qrl.sweeps import task_device
from qrl.victim import Victim, distilled_victim, victim_dir

# The library's names that users of `qrl.pairs` call (README: `from qrl.pairs import load_pair`).
__all__ = [
    "KINDS",
    "InputPair",
    "LossWeights",
    "Pair",
    "load_pair",
    "main",
    "pair_loss",
    "run",
    "train_pair",
]
SPLITS = ("train", "val", "test")


def check_config(cfg: DictConfig) -> None:
    """Refuse bad values before anything is written."""
    if cfg.kind not in KINDS:
        raise ConfigError(f"kind must be one of {list(KINDS)}, got {cfg.kind!r}")
    validate_pairs(cfg)  # `train` and `bits` (qrl.schema)
    checked_number(cfg.ppo.n_envs, "ppo.n_envs", int, low=1)
    checked_number(cfg.ppo.model.n_steps, "ppo.model.n_steps", int, low=1)
    checked_number(cfg.seed, "seed", int, low=0)
    if cfg.eval.split not in SPLITS:
        raise ConfigError(f"eval.split must be one of {list(SPLITS)}, got {cfg.eval.split!r}")
    victim_dir(str(cfg.victim.model))  # raises on an unknown model


def _victim(cfg: DictConfig, quant: QuantConfig) -> tuple[Victim, dict[str, Any]]:
    """The teacher, the distilled student and the data, plus the student's model spec."""
    run = cfg.victim.run or None
    victim, spec, _ = distilled_victim(
        run, str(cfg.victim.model), quant, task_device(cfg), bool(cfg.progress)
    )
    return victim, spec


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one pair (Stage B), save it, evaluate it on the test split (Stage C)."""
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
        # Which entry of the per-model maps (`train.away_weights`, ...) the pair reads: a run
        # is another config only when that entry changes (qrl.runs).
        cfg.victim.student_class = type(victim.student).__name__
    saved = (Path(cfg.out) / PAIR_FILE).is_file()  # a finished pair, if the config matches
    out, started = start_run(cfg)
    kind, seed = str(cfg.kind), int(cfg.seed)
    with RunLogger(out, cfg.logger, config=cfg, name=f"pairs-{kind}-s{seed}") as log:
        if saved and cfg.resume:  # the same config: load the pair, evaluate it again
            print(f"{out} holds this pair already: loading it (resume=false trains it again)")
        else:
            for name in (PAIR_FILE, NETWORK_FILE, POLICY_FILE):  # another config's pair
                (out / name).unlink(missing_ok=True)
            quantized, ppo, decoder = train_pair(victim, cfg, out, log)
            save_pair(out, kind, quantized, ppo, decoder, quant, spec, InputSpec.of(victim.data))
        pair = load_pair(out, space="bits").to(victim.device)  # Stage C where it trained
        split = getattr(victim.data, str(cfg.eval.split))
        evaluation = evaluate_pair(pair, victim.teacher, split, seed=int(cfg.eval.random_seed))
        metrics = evaluation.to_metrics()
        log.summary(metrics)
    (out / STATE_FILE).unlink(missing_ok=True)
    record = write_metrics(out, {"kind": kind, **metrics}, seed=seed, started=started)
    print(
        f"{kind} pair, {cfg.eval.split} split: full precision {100 * metrics['acc_fp']:.2f}%, "
        f"quantized under its policy {100 * metrics['acc_q']:.2f}% at {metrics['mean_bits']:.2f} "
        f"mean bits: drop {100 * metrics['drop']:.2f} points (full precision - quantized)"
    )
    print(
        f"loaded the finished pair {out}/network.pt, policy.zip, pair.json (not rewritten); "
        "wrote metrics.json"
        if saved and cfg.resume
        else f"trained the pair and wrote {out}/network.pt, policy.zip, pair.json, metrics.json"
    )
    return record


@checked_options
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="pairs")
def bits_main(cfg: DictConfig) -> None:
    hydra_task(run, cfg)


def main() -> None:
    """`space=input`: an input-distribution pair (`qrl.input_pairs`, conf/input_pairs.yaml);
    `space=bits` or no space: a bit-width pair (conf/pairs.yaml)."""
    spaces = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("space=")]
    if any(s not in SPACES for s in spaces) or len(set(spaces)) > 1:
        print(
            f"error: space must be one of {list(SPACES)} (one of them), got "
            f"{', '.join(spaces)}: space=bits trains a bit-width pair, space=input an "
            "input-distribution pair",
            file=sys.stderr,
        )
        sys.exit(2)
    if spaces == ["input"]:
        input_pairs.main()
        return
    sys.argv[1:] = [a for a in sys.argv[1:] if not a.startswith("space=")]
    bits_main()


if __name__ == "__main__":
    main()
