"""Accuracy of a distilled student under dynamic quantization, per bit-width and on real kernels.

    python -m qrl.quant_eval run=runs/demo/seed0/distill quant=int8_dynamic

For each activation bit-width in `bits` (uniform over layers, qrl's simulator with the `quant`
preset), and for each real int8 backend in `backends`, it measures test accuracy, the drop from
the full-precision student (points) and agreement with the teacher. Each kernel is shown beside
the simulator preset that models it (accuracy and argmax agreement on the same batches), with a
warning where they differ: there the simulator cannot be trusted for this model. Writes `bits.csv`,
`accuracy_vs_bits.png` and, last, `metrics.json`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm.auto import tqdm

from qrl.cli import checked_options, hydra_task
from qrl.config import CONF_DIR, checked_number
from qrl.errors import ConfigError
from qrl.fidelity import mismatches
from qrl.loggers import RunLogger
from qrl.plots import pyplot
from qrl.quant import QuantConfig, as_quant_config, preset, quantized_copy
from qrl.quant.backends import BACKEND_NAMES, mirror_preset, real_backend
from qrl.quant.config import check_bits
from qrl.quant.cpu import describe_paths, int8_accumulation
from qrl.runs import atomic_write, start_run, write_metrics
from qrl.scoring import Outcome, accuracy, agreement, predict_logits
from qrl.sweeps import task_device
from qrl.tables import format_table
from qrl.victim import Victim, load_victim


def quant_name(cfg: DictConfig) -> str:
    return str(cfg.quant.get("name", "this quantizer"))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the run's student at every bit-width and backend; returns the metrics."""
    quant, bits_list = _checked(cfg)  # every value and input checked before the run dir is touched
    device = task_device(cfg)
    victim = load_victim(cfg.run, quant.with_bits(8) if quant.backend == "fake" else quant, device)
    out, started = start_run(cfg)
    scores = _evaluate(victim, quant, bits_list, cfg)
    record = _write(out, cfg, scores, bits_list, started)
    _print_summary(scores, bool(cfg.backends), out)
    return record


def _evaluate(victim: Victim, quant: QuantConfig, bits_list: list[int], cfg: DictConfig) -> Scores:
    """Score the student at each bit-width on qrl's simulator, then on each real int8 kernel
    beside its preset (`confirm/warnings`: where they differ), on the test split."""
    x, y = victim.data.test.x, victim.data.test.y
    bs = int(cfg.batch_size)
    scores = Scores.of(
        predict_logits(victim.teacher, x, bs), predict_logits(victim.student, x, bs), y
    )
    steps = len(bits_list) + len(cfg.backends)
    hidden = None if cfg.progress else True  # tqdm's `disable`: None hides it off a terminal
    with tqdm(total=steps, desc="quant_eval", disable=hidden, leave=False) as bar:
        for bits in bits_list:
            quantized = quantized_copy(victim.student, quant.with_bits(bits)).eval()
            label = f"qrl {quant.act_granularity} {bits}-bit"
            scores.record(label, predict_logits(quantized, x, bs), f"quant/{bits}bit")
            bar.update(1)
        scores.metrics["cpu/int8_accumulation"] = int8_accumulation()
        warnings = _score_kernels(scores, victim.student, x, cfg, bar.update)
    scores.metrics["confirm/warnings"] = warnings
    return scores


def _write(
    out: Path, cfg: DictConfig, scores: Scores, bits_list: list[int], started: float
) -> dict[str, Any]:
    """Log the metrics, write `bits.csv`, the plot and, last, `metrics.json`."""
    metrics = scores.metrics
    with RunLogger(out, cfg.logger, config=cfg, name=f"quant_eval-s{cfg.seed}") as log:
        log.summary(metrics)
    _write_csv(out / "bits.csv", scores.rows)
    acc_fp, acc_teacher = metrics["student/acc_fp"], metrics["teacher/acc"]
    _plot(out / "accuracy_vs_bits.png", bits_list, scores.rows, acc_fp, acc_teacher)
    return write_metrics(out, metrics, seed=int(cfg.seed), started=started)


def _checked(cfg: DictConfig) -> tuple[QuantConfig, list[int]]:
    """The quantizer and the bit-widths to evaluate, or a `ConfigError` naming the bad value."""
    if OmegaConf.is_missing(cfg, "run") or not cfg.run:
        raise ConfigError("set run=<a finished `python -m qrl.distill` run dir> to evaluate")
    checked_number(cfg.batch_size, "batch_size", int, low=1)
    quant = as_quant_config(cfg.quant)
    bits_list = [check_bits(int(b), "bits entries") for b in cfg.bits]
    if quant.act_reduce_range:  # one bit fewer: 2-bit would be a 1-bit grid
        skipped = [b for b in bits_list if b < 3]
        bits_list = [b for b in bits_list if b >= 3]
        if skipped:
            print(f"note: {quant_name(cfg)} uses reduce_range; skipping bits {skipped}")
    if not bits_list and not cfg.backends:
        raise ConfigError("nothing to evaluate: give at least one entry in bits or backends")
    unknown = sorted(set(cfg.backends) - set(BACKEND_NAMES))
    if unknown:
        raise ConfigError(f"unknown backends {unknown}; choose from {list(BACKEND_NAMES)}")
    return quant, bits_list


@dataclass
class Scores:
    """The test labels and the teacher's and full-precision student's logits on them, and what
    each quantizer scored: one row of `bits.csv` and its metrics."""

    y: Tensor
    teacher_logits: Tensor
    fp_logits: Tensor
    rows: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, teacher_logits: Tensor, fp_logits: Tensor, y: Tensor) -> Scores:
        metrics = {
            "teacher/acc": accuracy(teacher_logits, y),
            "student/acc_fp": accuracy(fp_logits, y),
            "data/test_size": len(y),
        }
        return cls(y, teacher_logits, fp_logits, metrics=metrics)

    def record(self, label: str, logits: Tensor, key: str, simulator: Tensor | None = None) -> None:
        """Score one quantizer's logits (and, for a kernel, its simulator preset's)."""
        outcome = Outcome.of(self.teacher_logits, self.fp_logits, logits, self.y)
        row = {
            "quantizer": label,
            "acc": outcome.acc_q,
            "drop_points": 100 * outcome.drop,
            "agreement_teacher": agreement(logits, self.teacher_logits),
            "agreement_fp": agreement(logits, self.fp_logits),
            # The preset that models a kernel, on the same batches: can it be trusted here?
            "simulator_acc": accuracy(simulator, self.y) if simulator is not None else None,
            "agreement_simulator": agreement(simulator, logits) if simulator is not None else None,
        }
        self.rows.append(row)
        self.metrics[f"{key}/acc"] = outcome.acc_q
        self.metrics[f"{key}/drop"] = outcome.drop
        if simulator is not None:
            self.metrics[f"{key}/simulator_acc"] = row["simulator_acc"]
            self.metrics[f"{key}/agreement_simulator"] = row["agreement_simulator"]


def _score_kernels(
    scores: Scores, student: nn.Module, x: Tensor, cfg: DictConfig, step: Callable[[int], Any]
) -> list[str]:
    """Score each real int8 backend beside the preset that models it; returns the warnings
    where they differ (`step(1)` after each backend)."""
    bs = int(cfg.batch_size)
    reduce_range = bool(cfg.get("onnx_reduce_range", False))
    warnings = []
    for name in cfg.backends:
        backend = real_backend(name, student, x[:8], onnx_reduce_range=reduce_range)
        logits = predict_logits(backend, x, bs)
        step(1)
        if getattr(backend, "convs_stay_float", False):
            # torch.ao quantizes the Linear layers only: no preset models that half-way model.
            scores.record(f"{name} int8 (Linear layers)", logits, f"confirm/{name}")
            continue
        mirror = mirror_preset(name, onnx_reduce_range=reduce_range)
        simulator = predict_logits(quantized_copy(student, preset(mirror)).eval(), x, bs)
        scores.record(f"{name} int8", logits, f"confirm/{name}", simulator)
        scores.metrics[f"confirm/{name}/simulator"] = mirror
        path = preset(mirror).accumulation_path()
        scores.metrics[f"confirm/{name}/accumulation_simulated"] = path
        problems = mismatches(
            accuracy(simulator, scores.y), accuracy(logits, scores.y), agreement(simulator, logits)
        )
        if problems:
            warnings.append(
                f"{mirror} does not predict {name} int8 on this model ({'; '.join(problems)}): "
                "searches with it steer by the wrong numbers"
            )
    return warnings


def _print_summary(scores: Scores, kernels: bool, out: Path) -> None:
    """The table of every quantizer, the warnings, and what was written."""
    header = ["quantizer", "test acc", "drop (points)", "agree teacher", "agree fp"]
    rows = [
        [
            r["quantizer"],
            f"{r['acc']:.4f}",
            f"{r['drop_points']:.2f}",
            f"{r['agreement_teacher']:.4f}",
            f"{r['agreement_fp']:.4f}",
            (
                f"{r['simulator_acc']:.4f} / {r['agreement_simulator']:.4f}"
                if r["simulator_acc"] is not None
                else "-"
            ),
        ]
        for r in scores.rows
    ]
    print(format_table([*header, "simulator acc / agreement"], rows))
    metrics = scores.metrics
    for message in metrics["confirm/warnings"]:
        print(f"warning: {message}")
    print(
        f"full-precision student {metrics['student/acc_fp']:.4f}, "
        f"teacher {metrics['teacher/acc']:.4f}"
    )
    simulated = metrics.get("confirm/onnxruntime/accumulation_simulated")
    if kernels and simulated is not None:
        print(f"onnx int8 {describe_paths(str(simulated))}")
    print(f"wrote {out}/bits.csv, accuracy_vs_bits.png, metrics.json")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def _plot(
    path: Path, bits: list[int], rows: list[dict[str, Any]], acc_fp: float, acc_t: float
) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if bits:
        ax.plot(bits, [100 * r["acc"] for r in rows[: len(bits)]], "o-", label="quantized student")
    ax.axhline(100 * acc_fp, color="k", ls="--", lw=1, label="full-precision student")
    ax.axhline(100 * acc_t, color="g", ls=":", lw=1, label="teacher")
    for r in rows[len(bits) :]:
        ax.plot([8], [100 * r["acc"]], "s", label=r["quantizer"])
    ax.set(xlabel="activation bits", ylabel="test accuracy (%)", title="Dynamic quantization")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


@checked_options
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="quant_eval")
def main(cfg: DictConfig) -> None:
    hydra_task(run, cfg)


if __name__ == "__main__":
    main()
