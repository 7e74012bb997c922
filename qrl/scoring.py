"""The one definition of correct, failure, gap and drop, used by every part of qrl.

Two numbers are never mixed:

- **drop** = acc(full-precision network) - acc(its quantized copy), on the same inputs: what
  quantization causes.
- **gap** = acc(reference) - acc(quantized copy), where the reference is named: the teacher
  (`reference="teacher"`) or the full-precision network itself (`reference="student"`, where the
  gap equals the drop).

A **failure** is an input the reference gets right and the quantized copy gets wrong.
Accuracies, gaps and drops are fractions in [0, 1] (or [-1, 1] for differences).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qrl.errors import ConfigError

REFERENCES = ("teacher", "student")
LogitsFn = Callable[[Tensor], Tensor]


@torch.no_grad()
def predict_logits(model: nn.Module | LogitsFn, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Logits of `model` on `x` in eval mode, batch by batch; shaped (N, num_classes).

    Each batch goes to the model's device and its logits come back to the CPU (no-ops there).
    """
    from qrl.devices import module_device

    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    device = module_device(model)
    try:
        return torch.cat(
            [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
        )
    finally:
        if was_training:
            assert isinstance(model, nn.Module)
            model.train()


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float((logits.argmax(dim=1) == y).float().mean())


def agreement(logits_a: Tensor, logits_b: Tensor) -> float:
    """Fraction of rows on which two models predict the same class."""
    return float((logits_a.argmax(dim=1) == logits_b.argmax(dim=1)).float().mean())


def check_reference(reference: str) -> str:
    """`reference` itself, or a `ConfigError` unless it is `teacher` or `student`."""
    if reference not in REFERENCES:
        raise ConfigError(f"reference must be teacher or student, got {reference!r}")
    return reference


def correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-input correctness (bool, (N,)): the argmax of the logits is the label."""
    return logits.argmax(dim=1) == labels


def failed(reference_right: Tensor, q_right: Tensor) -> Tensor:
    """Per-input failure (bool, (N,)): the reference is right and the quantized copy wrong."""
    return reference_right & ~q_right


def rate(right: Tensor) -> float:
    """The fraction of True entries (0.0 for an empty tensor)."""
    return float(right.float().mean()) if right.numel() else 0.0


def accuracy_drop(acc_fp: float, acc_q: float) -> float:
    """The drop from two accuracies already measured: acc(full precision) - acc(quantized)."""
    return acc_fp - acc_q


def accuracy_gap(acc_reference: float, acc_q: float) -> float:
    """The gap from two accuracies already measured: acc(named reference) - acc(quantized)."""
    return acc_reference - acc_q


def is_valid(acc_teacher: float, validity_floor: float) -> bool:
    """Whether a distribution keeps the images recognisable: the teacher's accuracy on its
    batch reaches the floor (a search cannot win by destroying the images)."""
    return acc_teacher >= validity_floor


def search_reward(gap: float, acc_teacher: float, validity_floor: float, penalty: float) -> float:
    """The reward of `qrl/QuantFailure-v0` for one batch: the gap, less `penalty` times the
    teacher's shortfall below the validity floor."""
    return gap - penalty * max(0.0, validity_floor - acc_teacher)


@dataclass(frozen=True)
class Outcome:
    """Per-input correctness of the teacher, the full-precision network and its quantized copy.

    Attributes:
        teacher_right, fp_right, q_right: bool tensors shaped (N,).
        q_pred: the quantized copy's predicted classes, (N,).
    """

    teacher_right: Tensor
    fp_right: Tensor
    q_right: Tensor
    q_pred: Tensor

    @classmethod
    def of(cls, teacher_logits: Tensor, fp_logits: Tensor, q_logits: Tensor, y: Tensor) -> Outcome:
        """Score one batch from the three models' logits and the labels."""
        return cls(
            correct(teacher_logits, y),
            correct(fp_logits, y),
            correct(q_logits, y),
            q_logits.argmax(1),
        )

    @classmethod
    def cat(cls, parts: list[Outcome]) -> Outcome:
        """Several batches' outcomes as one."""
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in _FIELDS))

    def __len__(self) -> int:
        return len(self.q_right)

    def reference_right(self, reference: str = "teacher") -> Tensor:
        """Per-input correctness of the named reference (`teacher` or `student`)."""
        return self.teacher_right if check_reference(reference) == "teacher" else self.fp_right

    @property
    def acc_teacher(self) -> float:
        return rate(self.teacher_right)

    @property
    def acc_fp(self) -> float:
        return rate(self.fp_right)

    @property
    def acc_q(self) -> float:
        return rate(self.q_right)

    @property
    def drop(self) -> float:
        """acc(full precision) - acc(quantized): what quantization causes."""
        return accuracy_drop(self.acc_fp, self.acc_q)

    def gap(self, reference: str = "teacher") -> float:
        """acc(reference) - acc(quantized)."""
        return accuracy_gap(rate(self.reference_right(reference)), self.acc_q)

    def gap_per_input(self, reference: str = "teacher") -> Tensor:
        """Per-input gap terms (float, (N,)): their mean is `gap(reference)`."""
        return self.reference_right(reference).float() - self.q_right.float()

    def failures(self, reference: str = "teacher") -> Tensor:
        """Per-input failure mask: the reference right, the quantized copy wrong."""
        return failed(self.reference_right(reference), self.q_right)


_FIELDS = ("teacher_right", "fp_right", "q_right", "q_pred")
