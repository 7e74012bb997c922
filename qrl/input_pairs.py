"""Stage B and C for input-distribution pairs: a network and the distribution that breaks it on
ONNX Runtime's int8 kernel, learned together (`qrl.pairing.inputs`).

    python -m qrl.pairs space=input kind=detrimental
    python -m qrl.pairs space=input kind=robust eval.twin=<the detrimental pair's run dir>

The run dir receives `network.pt` (full precision), `policy.zip` (the SB3 agent), `pair.json`
(with the chosen action), `log.csv`, `tb/`, `sb3/`, `audit/` (the independent audit) and, last,
`metrics.json` with the pair's Stage C on the test split (`qrl.pairing.input_evaluation`).
`load_pair(run_dir)` gives the pair back as an `InputPair`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, open_dict

from qrl.cli import checked_options, hydra_task
from qrl.config import CONF_DIR, checked_number
from qrl.errors import ConfigError
from qrl.loggers import RunLogger
from qrl.pairing import KINDS, NETWORK_FILE, PAIR_FILE, POLICY_FILE, load_pair, weights_sha256
from qrl.pairing.input_evaluation import InputPairEvaluation, evaluate_input_pair
from qrl.pairing.input_store import InputPair, save_input_pair
from qrl.pairing.inputs import STATE_FILE, InputPairSettings, train_input_pair
from qrl.policies.input import InputDistribution
from qrl.quant import QuantConfig, as_quant_config
from qrl.runs import load_run_config, start_run, write_metrics
from qrl.specs import to_dict
from qrl.tables import format_table
from qrl.victim import Victim, distilled_victim, victim_dir

SPLITS = ("train", "val", "test")


def check_config(cfg: DictConfig) -> QuantConfig:
    """Refuse bad values before anything is written; returns the quantizer."""
    if cfg.kind not in KINDS:
        raise ConfigError(f"kind must be one of {list(KINDS)}, got {cfg.kind!r}")
    quant = as_quant_config(cfg.quant)
    if quant.backend != "fake" or quant.act_bits != 8 or quant.weight_bits != 8:
        raise ConfigError(
            "input pairs train against ONNX Runtime's int8 kernel: quant=onnx_int8_dynamic at 8 "
            f"bits (got backend={quant.backend}, act_bits={quant.act_bits}, "
            f"weight_bits={quant.weight_bits})"
        )
    if str(cfg.agent.kind) != "sb3":
        raise ConfigError(
            f"an input pair's policy is learned by an SB3 agent (agent=ppo, sac, td3, a2c); "
            f"agent={cfg.agent.name} is not one"
        )
    if cfg.eval.split not in SPLITS:
        raise ConfigError(f"eval.split must be one of {list(SPLITS)}, got {cfg.eval.split!r}")
    t = cfg.train
    for key in (
        "rounds",
        "evaluations_per_round",
        "eval_batch",
        "batch_size",
        "random_per_step",
        "detectors",
    ):
        checked_number(t[key], f"train.{key}", int, low=1)
    for key in ("net_steps", "settle_steps"):
        checked_number(t[key], f"train.{key}", int, low=0)
    for key in ("lr", "gain_lr", "tau"):
        checked_number(t[key], f"train.{key}", low=0, strict=True)
    checked_number(t.target_ratio, "train.target_ratio", low=1, strict=True)
    for key in ("detector_weight", "bonus_weight"):
        checked_number(t[key], f"train.{key}", low=0)
    checked_number(t.floor, "train.floor", low=0, high=1)
    checked_number(t.alpha, "train.alpha", low=0, high=1)
    checked_number(cfg.seed, "seed", int, low=0)
    checked_number(cfg.eval.random, "eval.random", int, low=1)
    checked_number(cfg.eval.audit.evaluations, "eval.audit.evaluations", int, low=0)
    victim_dir(str(cfg.victim.model))  # raises on an unknown model
    return quant


def distribution_of(cfg: DictConfig, victim: Victim) -> InputDistribution:
    """The input-distribution family of `space` (the search's) on the victim's data."""
    return InputDistribution(
        victim.data.num_classes,
        victim.data.channels,
        corruptions=list(cfg.space.corruptions),
        class_mix=bool(cfg.space.class_mix),
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one input pair (Stage B), save it, evaluate it on the test split (Stage C)."""
    return _stages(cfg, evaluate=True)


def train(cfg: DictConfig) -> None:
    """Stage B alone: train the pair and save it, or find it saved. `run` with the same config
    then evaluates it; the run is not finished (no `metrics.json`) until it has."""
    _stages(cfg, evaluate=False)


def _stages(cfg: DictConfig, evaluate: bool) -> dict[str, Any]:
    quant = check_config(cfg)
    if cfg.space.mode != "input":
        raise ConfigError(f"input pairs need space=input, got space mode {cfg.space.mode!r}")
    twin = Path(cfg.eval.twin) if cfg.eval.twin and evaluate else None
    twin_action = None if twin is None else load_pair(twin, space="input").action
    victim, spec, victim_run = distilled_victim(
        cfg.victim.run or None, str(cfg.victim.model), quant, "cpu", bool(cfg.progress)
    )
    with open_dict(cfg):  # a re-distilled student in the same victim.run is another run
        cfg.victim.student_sha256 = weights_sha256(victim.student)
    saved = (Path(cfg.out) / PAIR_FILE).is_file()
    out, started = start_run(cfg)
    kind, seed = str(cfg.kind), int(cfg.seed)
    dist = distribution_of(cfg, victim)
    with RunLogger(out, cfg.logger, config=cfg, name=f"input-pairs-{kind}-s{seed}") as log:
        if saved and cfg.resume:
            print(f"{out} holds this pair already: loading it (resume=false trains it again)")
        else:
            for name in (PAIR_FILE, NETWORK_FILE, POLICY_FILE):  # another config's pair
                (out / name).unlink(missing_ok=True)
            _train(cfg, victim, dist, spec, victim_run, out, log)
        if not evaluate:
            return {}
        pair = load_pair(out, space="input")
        audit_action = _audit(cfg, pair, victim, out)
        evaluation = evaluate_input_pair(
            pair,
            victim.teacher,
            victim.student,
            getattr(victim.data, str(cfg.eval.split)),
            twin_action=twin_action,
            audit_action=audit_action,
            random_count=int(cfg.eval.random),
            seed=int(cfg.eval.seed),
        )
        metrics = evaluation.to_metrics()
        log.summary({k: v for k, v in metrics.items() if isinstance(v, float)})
    (out / STATE_FILE).unlink(missing_ok=True)
    record = write_metrics(out, {"kind": kind, **metrics}, seed=seed, started=started)
    _print_summary(kind, str(cfg.eval.split), evaluation)
    print(f"wrote {out}/network.pt, policy.zip, pair.json, metrics.json")
    return record


def _train(
    cfg: DictConfig,
    victim: Victim,
    dist: InputDistribution,
    spec: dict[str, Any],
    victim_run: Path,
    out: Path,
    log: RunLogger,
) -> None:
    """Stage B: train the pair and save it."""
    settings = InputPairSettings.of(cfg.train)
    agent_spec = {**to_dict(cfg.agent.model), "device": "cpu"}  # a small MLP: the CPU
    network, agent, action = train_input_pair(
        victim,
        str(cfg.kind),
        settings,
        dist,
        agent_spec,
        int(cfg.seed),
        out,
        log,
        resume=bool(cfg.resume),
        progress=bool(cfg.progress),
    )
    gained_spec = {"_target_": "qrl.models.head_gained", "base": dict(spec)}
    data_spec = to_dict(load_run_config(victim_run).data)
    quant = as_quant_config(cfg.quant)
    save_input_pair(
        out, str(cfg.kind), network, agent, action, dist, quant, gained_spec, victim.data, data_spec
    )


def _audit(cfg: DictConfig, pair: InputPair, victim: Victim, out: Path) -> np.ndarray | None:
    """An independent `qrl.audit` of the network alone (the pair's distribution unknown to it):
    the worst distribution it finds, or None with `eval.audit.evaluations=0`."""
    evaluations = int(cfg.eval.audit.evaluations)
    if evaluations == 0:
        return None
    from qrl.audit import audit

    found = audit(
        pair.network,
        victim.data,
        quant=dataclasses.replace(pair.quant, act_granularity="per_sample"),  # one image at a time
        space=to_dict(cfg.space),
        agent=str(cfg.eval.audit.agent),
        evaluations=evaluations,
        seed=int(cfg.seed) + int(cfg.eval.audit.seed),
        out=out / "audit",
        overrides=["confirm.backends=[]", "overwrite=true"],
        progress=bool(cfg.progress),
    )
    return np.asarray(found.policy, dtype=np.float64)


def _print_summary(kind: str, split: str, e: InputPairEvaluation) -> None:
    """The pair's Stage C as a table (percent; drops are full precision minus quantized)."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    scored = {"data's own": e.clean, "the pair's policy": e.own, "the twin's policy": e.twin}
    rows = [
        [
            name,
            pct(s.acc_teacher),
            pct(s.acc_student),
            pct(s.acc_fp),
            pct(s.acc_sim),
            pct(s.acc_ort),
            pct(s.acc_ort_batch),
            pct(s.drop_ort),
        ]
        for name, s in scored.items()
        if s is not None
    ]
    print(f"{kind} input pair, {split} split, one image at a time; policy: {e.description}")
    header = ["distribution", "teacher", "student fp", "network fp", "simulated int8"]
    header += ["ORT int8", "ORT per 64", "drop (fp - ORT)"]
    print(format_table(header, rows))
    m = e.to_metrics()
    print(
        f"{m['random_count']} random distributions: median drop {pct(m['drop_random_median'])}, "
        f"90th percentile {pct(m['drop_random_p90'])}, share dropping 20+ points "
        f"{pct(m['random_share_drop_20'])}%; audit's worst: {pct(e.audit_worst_drop)}"
    )
    coupling = ", ".join(
        f"m={k}: {pct(v)} (student {pct(e.coupling_student[k])})" for k, v in e.coupling.items()
    )
    print(
        f"batch coupling, clean images' ONNX Runtime accuracy in batches of 64 with m policy "
        f"draws: {coupling}; served alone {pct(e.coupling_alone[0])} "
        f"(student {pct(e.coupling_alone[1])})"
    )


@checked_options
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="input_pairs")
def main(cfg: DictConfig) -> None:
    hydra_task(run, cfg)


if __name__ == "__main__":
    main()
