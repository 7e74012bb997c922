"""Stage C for input-distribution pairs, on the test split: full precision, qrl's simulator, and
ONNX Runtime's int8 kernel one image at a time and per served batch.

Every accuracy is a fraction of the inputs drawn from one distribution. A **drop** is the
network's own full precision minus its quantized accuracy on the same inputs (what quantization
causes); **teacher gap** is the teacher's accuracy minus the quantized one. **Batch coupling**:
batches of clean test images in which `m` inputs are replaced by draws from the pair's
distribution, served to ONNX Runtime together; the number is the accuracy of the *clean* images
of those batches, beside their accuracy served without the draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qrl.data import Split
from qrl.pairing.input_store import InputPair
from qrl.policies.input import InputDistribution
from qrl.quant import QuantConfig, quantized_copy
from qrl.quant.backends import RealBackend, real_backend
from qrl.quant.cpu import int8_accumulation
from qrl.scoring import accuracy_drop, accuracy_gap, correct, predict_logits, rate

SERVED_BATCH = 64  # inputs per ONNX Runtime call in the per-batch numbers and batch coupling
COUPLING = (1, 4, 16)
FAILURE = 0.2  # a random distribution "fails" at a drop of 20 points or more


@dataclass(frozen=True)
class DistributionScore:
    """One distribution's inputs, scored (fractions in [0, 1])."""

    acc_teacher: float
    acc_student: float  # the distilled student the pair started from, full precision
    acc_fp: float  # the pair's network, full precision
    acc_sim: float  # qrl's simulator of the int8 kernel, one image at a time
    acc_ort: float  # ONNX Runtime int8, one image at a time
    acc_ort_batch: float  # ONNX Runtime int8, `SERVED_BATCH` images per call

    @property
    def drop_ort(self) -> float:
        return accuracy_drop(self.acc_fp, self.acc_ort)


@dataclass(frozen=True)
class InputPairEvaluation:
    """Stage C of one input pair; `to_metrics` gives its `metrics.json` keys."""

    kind: str
    description: str
    action: tuple[float, ...]
    clean: DistributionScore
    own: DistributionScore
    twin: DistributionScore | None
    random_drops: tuple[float, ...]  # ONNX Runtime drop per image, each random distribution
    coupling: dict[int, float]  # m -> the clean images' ONNX Runtime accuracy, this network
    coupling_student: dict[int, float]  # the same for the distilled student
    coupling_alone: tuple[float, float]  # those clean images served alone: network, student
    audit_worst_drop: float | None
    accumulation_simulated: str

    def to_metrics(self) -> dict[str, Any]:
        own, clean = self.own, self.clean
        drops = np.asarray(self.random_drops)
        metrics: dict[str, Any] = {
            "space": "input",
            "policy/description": self.description,
            "policy/action": list(self.action),
            "acc_teacher": own.acc_teacher,
            "acc_student_fp": own.acc_student,
            "acc_fp": own.acc_fp,
            "acc_q": own.acc_sim,
            "drop": accuracy_drop(own.acc_fp, own.acc_sim),
            "teacher_gap": accuracy_gap(own.acc_teacher, own.acc_sim),
            "acc_ort": own.acc_ort,
            "drop_ort": own.drop_ort,
            "acc_ort_batch": own.acc_ort_batch,
            "drop_ort_batch": accuracy_drop(own.acc_fp, own.acc_ort_batch),
            "acc_teacher_clean": clean.acc_teacher,
            "acc_fp_clean": clean.acc_fp,
            "acc_q_clean": clean.acc_sim,
            "acc_ort_clean": clean.acc_ort,
            "drop_ort_clean": clean.drop_ort,
            "drop_random_median": float(np.median(drops)),
            "drop_random_p90": float(np.quantile(drops, 0.9)),
            "random_share_drop_20": float(np.mean(drops >= FAILURE - 1e-9)),
            "random_count": len(drops),
            "audit_worst_drop": self.audit_worst_drop,
            "coupling/alone": self.coupling_alone[0],
            "coupling_student/alone": self.coupling_alone[1],
            "accumulation_simulated": self.accumulation_simulated,
            "accumulation_kernel": int8_accumulation(),
        }
        for m in sorted(self.coupling):
            metrics[f"coupling/m{m}"] = self.coupling[m]
            metrics[f"coupling_student/m{m}"] = self.coupling_student[m]
        if self.twin is not None:
            metrics.update(
                {
                    "twin/acc_fp": self.twin.acc_fp,
                    "twin/acc_q": self.twin.acc_sim,
                    "twin/acc_ort": self.twin.acc_ort,
                    "twin/drop_ort": self.twin.drop_ort,
                }
            )
        return metrics


@dataclass
class _Scorer:
    """A network, its simulator copy and its ONNX Runtime kernel, beside teacher and student."""

    network: nn.Module
    teacher: nn.Module
    student: nn.Module
    quant: QuantConfig
    example: Tensor

    def __post_init__(self) -> None:
        per_image = dataclasses.replace(self.quant, act_granularity="per_sample")
        self.simulated = quantized_copy(self.network, per_image).eval()
        self.kernel = real_backend("onnxruntime", self.network, self.example)

    def score(self, x: Tensor, y: Tensor, *, full: bool = True) -> DistributionScore:
        """Every number of one distribution's inputs (`full=False`: network and kernel only,
        per image, the rest NaN)."""
        nan = float("nan")
        acc = rate(correct(predict_logits(self.network, x), y))
        return DistributionScore(
            rate(correct(predict_logits(self.teacher, x), y)) if full else nan,
            rate(correct(predict_logits(self.student, x), y)) if full else nan,
            acc,
            rate(correct(predict_logits(self.simulated, x), y)) if full else nan,
            rate(correct(per_image(self.kernel, x), y)),
            rate(correct(per_batch(self.kernel, x), y)) if full else nan,
        )


@torch.no_grad()
def per_image(kernel: RealBackend, x: Tensor) -> Tensor:
    """The kernel's logits, one image per call (each image's own int8 range)."""
    return torch.cat([kernel(x[i : i + 1]) for i in range(len(x))])


@torch.no_grad()
def per_batch(kernel: RealBackend, x: Tensor, batch: int = SERVED_BATCH) -> Tensor:
    """The kernel's logits, `batch` images per call (one int8 range per call)."""
    return torch.cat([kernel(x[i : i + batch]) for i in range(0, len(x), batch)])


def evaluate_input_pair(
    pair: InputPair,
    teacher: nn.Module,
    student: nn.Module,
    split: Split,
    *,
    twin_action: np.ndarray | None = None,
    audit_action: np.ndarray | None = None,
    random_count: int = 200,
    seed: int = 0,
) -> InputPairEvaluation:
    """Stage C of an input pair on `split` (see the module's docstring for each number).

    Args:
        teacher, student: the pair's teacher and the distilled student it started from.
        twin_action: the twin pair's distribution, scored on this network too.
        audit_action: the worst distribution an independent audit found on this network.
        random_count: distributions drawn uniformly from the action space.
        seed: draws of every distribution's inputs and of the random distributions.
    """
    network, dist = pair.network.eval().cpu(), pair.distribution
    scorer = _Scorer(network, teacher.cpu().eval(), student.cpu().eval(), pair.quant, split.x[:8])
    n = len(split)

    def draw(action: np.ndarray, offset: int) -> tuple[Tensor, Tensor]:
        return dist.sample(split, n, action, torch.Generator().manual_seed(seed + offset))

    clean = scorer.score(split.x, split.y)
    own = scorer.score(*draw(pair.action, 1))
    twin = None if twin_action is None else scorer.score(*draw(twin_action, 2))
    audit_drop = None
    if audit_action is not None:
        audit_drop = scorer.score(*draw(audit_action, 3), full=False).drop_ort
    rng = np.random.default_rng(seed)
    random_drops = tuple(
        scorer.score(*draw(rng.uniform(-1, 1, dist.dim), 10 + i), full=False).drop_ort
        for i in range(random_count)
    )
    student_kernel = real_backend("onnxruntime", scorer.student, split.x[:8])
    coupling, alone = batch_coupling(scorer.kernel, split, dist, pair.action, seed=seed)
    coupling_student, alone_student = batch_coupling(
        student_kernel, split, dist, pair.action, seed=seed
    )
    return InputPairEvaluation(
        kind=pair.kind,
        description=pair.describe(),
        action=tuple(float(a) for a in pair.action),
        clean=clean,
        own=own,
        twin=twin,
        random_drops=random_drops,
        coupling=coupling,
        coupling_student=coupling_student,
        coupling_alone=(alone, alone_student),
        audit_worst_drop=audit_drop,
        accumulation_simulated=pair.quant.accumulation_path(),
    )


@torch.no_grad()
def batch_coupling(
    kernel: RealBackend,
    split: Split,
    dist: InputDistribution,
    action: np.ndarray,
    *,
    counts: Sequence[int] = COUPLING,
    batch: int = SERVED_BATCH,
    seed: int = 0,
) -> tuple[dict[int, float], float]:
    """The clean images' accuracy when `m` of each served batch are draws from `action`.

    The clean test images are cut into batches of `batch`; in each, the first `m` are replaced
    by draws from the distribution, and the other `batch - m` are scored. Returns ({m:
    accuracy}, the accuracy of the same clean images served without draws, for the largest m).
    """
    x, y = split.x, split.y
    gen = torch.Generator().manual_seed(seed + 7)
    out, alone = {}, float("nan")
    for m in counts:
        right, right_alone = [], []
        for start in range(0, len(x) - batch + 1, batch):
            xb, yb = x[start : start + batch].clone(), y[start : start + batch]
            xb[:m], _ = dist.sample(split, m, action, gen)
            right.append(correct(kernel(xb)[m:], yb[m:]))
            right_alone.append(correct(kernel(x[start + m : start + batch]), yb[m:]))
        out[m] = rate(torch.cat(right))
        alone = rate(torch.cat(right_alone))
    return out, alone
