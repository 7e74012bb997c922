"""Every bootstrap and interval estimate of qrl, in one place.

- `mean_ci`: the mean of a few runs (seeds), resampling runs.
- `difference_ci`: the difference of two groups' means (an agent against a floor), resampling
  each group's runs on its own.
- `cluster_bootstrap_ci`: the mean of many correlated values (held-out draws of the same source
  images), resampling whole clusters.
- `nested_resamples` / `bootstrap_interval`: any statistic of a (members, seeds) table,
  resampling members, then each drawn member's seeds (the planted benchmark).

All are percentile intervals from a seeded generator: the same inputs give the same interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np


def _check(level: float, resamples: int) -> None:
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(
            f"bootstrap needs resamples >= 1 and level in (0, 1), got {resamples}, {level}"
        )


def _resampled_means(
    values: Sequence[float], resamples: int, rng: np.random.Generator
) -> np.ndarray:
    data = np.asarray(values, dtype=np.float64)
    return data[rng.integers(0, len(data), (resamples, len(data)))].mean(axis=1)


def mean_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean over runs (None below two values)."""
    _check(level, resamples)
    if len(values) < 2:
        return None
    means = _resampled_means(values, resamples, np.random.default_rng(seed))
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def difference_ci(
    a: Sequence[float],
    b: Sequence[float],
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """mean(a) - mean(b) and its percentile interval, resampling each group independently."""
    _check(level, resamples)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("difference_ci needs at least one value in each group")
    rng = np.random.default_rng(seed)
    diffs = _resampled_means(a, resamples, rng) - _resampled_means(b, resamples, rng)
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return float(np.mean(a) - np.mean(b)), (float(low), float(high))


def cluster_bootstrap_ci(
    values: np.ndarray,
    clusters: np.ndarray,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`, resampling whole clusters.

    Held-out draws reuse the same source images (a test split of a few hundred images, drawn
    thousands of times under random transformations), so draws are not independent: the
    interval resamples source images, each with all of its draws, and so reflects the finite
    test set as well as the transformation noise.
    """
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(
            f"bootstrap needs resamples >= 1 and level in (0, 1), got {resamples}, {level}"
        )
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("cluster_bootstrap_ci needs at least one value")
    _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.bincount(inverse, weights=v)
    counts = np.bincount(inverse).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, 250):  # blocks keep memory flat for large test splits
        picks = rng.integers(0, len(sums), size=(min(250, resamples - start), len(sums)))
        means.append(sums[picks].sum(axis=1) / counts[picks].sum(axis=1))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(np.concatenate(means), [alpha, 1.0 - alpha])
    return float(low), float(high)


def nested_resamples(
    shape: tuple[int, ...], resamples: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index pairs that draw members with replacement, then each drawn member's seeds with
    replacement, from a (members, seeds) table: `table[idx]` is one resample."""
    rng = np.random.default_rng(seed)
    m, s = shape
    for _ in range(resamples):
        yield rng.integers(0, m, size=(m, 1)), rng.integers(0, s, size=(m, s))


def bootstrap_interval(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    *,
    resamples: int,
    level: float,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of `statistic` over (members, seeds) arrays, resampling both levels.

    Each resample draws members with replacement, then, for each drawn member, its seeds with
    replacement: the interval covers the spread over members (the family) and over seeds
    (the agent's own randomness).
    """
    stats = np.array(
        [statistic(values[idx]) for idx in nested_resamples(values.shape, resamples, seed)]
    )
    alpha = (1 - level) / 2
    # No interpolation between order statistics: runs that never found are infinite.
    low, high = np.quantile(stats, [alpha, 1 - alpha], method="inverted_cdf")
    return float(low), float(high)
