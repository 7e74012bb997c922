"""A policy scored on held-out inputs, with a cluster-bootstrap confidence interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from qrl.envs.failure_task import FailureTask
from qrl.scoring import Outcome, accuracy_gap
from qrl.stats import cluster_bootstrap_ci


@dataclass
class HeldOutResult:
    """A policy's gap on held-out inputs, with a bootstrap confidence interval.

    Attributes:
        gap: acc(reference) - acc(quantized student), a fraction; the reference is the
            teacher unless the task says otherwise.
        drop_fp: acc(full-precision student) - acc(quantized student): the part of the gap
            that quantization alone causes.
        ci: (low, high) bootstrap interval of the gap at `level`, resampling source images.
        failures: (inputs, labels, quantized predictions) where the quantized student is
            wrong and the teacher right, at most `keep_failures` of them.
    """

    gap: float
    ci: tuple[float, float]
    drop_fp: float
    acc_teacher: float
    acc_fp: float
    acc_q: float
    samples: int
    images: int
    failures: tuple[Tensor, Tensor, Tensor]

    @property
    def teacher_gap(self) -> float:
        """acc(teacher) - acc(quantized student), whatever the gap's reference."""
        return accuracy_gap(self.acc_teacher, self.acc_q)

    def metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}/gap": self.gap,
            f"{prefix}/gap_ci_low": self.ci[0],
            f"{prefix}/gap_ci_high": self.ci[1],
            f"{prefix}/drop_fp": self.drop_fp,
            # Beside the gap to whichever reference: the teacher's, always named as such.
            f"{prefix}/teacher_gap": self.teacher_gap,
            f"{prefix}/acc_teacher": self.acc_teacher,
            f"{prefix}/acc_fp": self.acc_fp,
            f"{prefix}/acc_q": self.acc_q,
            f"{prefix}/samples": self.samples,
            f"{prefix}/images": self.images,
        }


def score_held_out(
    task: FailureTask,
    action: np.ndarray,
    *,
    samples: int,
    seed: int,
    batch_size: int = 1024,
    level: float = 0.95,
    resamples: int = 2000,
    keep_failures: int = 64,
) -> HeldOutResult:
    """Score a policy on `samples` fresh draws from the task's split (in batches).

    The gap is measured from the task's reference; the same `seed` gives the same draws, so two
    victims (e.g. simulator and int8 kernel) can be compared input by input.
    """
    if samples < 1:
        raise ValueError(f"held-out evaluation needs samples >= 1, got {samples}")
    gen = torch.Generator().manual_seed(seed)
    parts: list[Outcome] = []
    sources: list[Tensor] = []
    fails: list[tuple[Tensor, Tensor, Tensor]] = []
    kept = 0
    for start in range(0, samples, batch_size):
        x, y, idx = task.draw_indexed(action, min(batch_size, samples - start), gen)
        outcome = task.measure(action, x, y).outcome
        parts.append(outcome)
        sources.append(idx)
        # The grid shows teacher-labelled failures (T right, Q wrong) whatever the reference.
        fail = outcome.failures("teacher")
        if kept < keep_failures and bool(fail.any()):
            idx = torch.nonzero(fail).flatten()[: keep_failures - kept]
            fails.append((x[idx], y[idx], outcome.q_pred[idx]))
            kept += len(idx)
    outcome = Outcome.cat(parts)
    diff = outcome.gap_per_input(task.reference).numpy()
    source = torch.cat(sources).numpy()
    if fails:
        failures = tuple(torch.cat([part[i] for part in fails]) for i in range(3))
    else:
        failures = (
            torch.empty(0),
            torch.empty(0, dtype=torch.long),
            torch.empty(0, dtype=torch.long),
        )
    return HeldOutResult(
        # The mean of the very terms the interval resamples, so the interval brackets it.
        gap=float(diff.mean()),
        ci=cluster_bootstrap_ci(diff, source, level=level, resamples=resamples, seed=seed),
        drop_fp=outcome.drop,
        acc_teacher=outcome.acc_teacher,
        acc_fp=outcome.acc_fp,
        acc_q=outcome.acc_q,
        samples=len(diff),
        images=len(np.unique(source)),
        failures=failures,  # type: ignore[arg-type]
    )
