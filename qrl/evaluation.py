"""Batched predictions, accuracies and bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

LogitsFn = Callable[[Tensor], Tensor]


@torch.no_grad()
def predict_logits(model: nn.Module | LogitsFn, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Logits of `model` on `x` in eval mode, batch by batch; shaped (N, num_classes)."""
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
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


def bootstrap_ci(
    values: np.ndarray | Tensor, *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of per-example values."""
    v = np.asarray(values.cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)
