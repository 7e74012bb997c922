"""Bit-width policies: per-layer activation bits from an allowed set, under an average budget.

Decoding a `Box(-1, 1)` action a (one value per quantized layer) into bit-widths b, for one
input or a batch of them (row by row):

1. Target: t_l = b_min + (a_l + 1) / 2 * (b_max - b_min), a continuous bit-width per layer.
2. Budget: if mean(t) exceeds the budget B, shrink towards b_min,
   t_l <- b_min + (t_l - b_min) * (B - b_min) / (mean(t) - b_min), so that mean(t) = B.
3. Snap: b_l = the largest allowed bit-width <= t_l (so mean(b) <= mean(t) <= B).
4. Refill: while a step fits within B * L total bits, raise the layer with the largest
   t_l - b_l (the most under-served relative to its target) to its next allowed bit-width.

So every decoded policy spends the budget as fully as the allowed set permits and never more
than B bits on average: the action decides how bits are spread over layers, not how many are
used. Detrimental and robust policies thus share the budget, and neither wins by simply using
fewer bits. With the defaults ({2,3,4,5,6,8}, B = 4) the all-zero action and every constant
action decode to 4 bits in every layer; [1, 1, -1, -1, 0] decodes to [6, 6, 2, 2, 4].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from qrl.errors import ActionError, ConfigError
from qrl.quant.config import MAX_BITS, MIN_BITS

DEFAULT_BITS_SET = (2, 3, 4, 5, 6, 8)
DEFAULT_BUDGET = 4.0


class BitsDecoder:
    """Turns actions in [-1, 1]^layers into bit-widths that respect the average-bits budget.

    Args:
        num_layers: quantized layers of the model (`len(layer_names(quantized))`).
        allowed: the bit-widths a layer may take, each in 2..8.
        budget: the largest average bit-width over layers.
    """

    def __init__(
        self,
        num_layers: int,
        allowed: Sequence[int] = DEFAULT_BITS_SET,
        budget: float = DEFAULT_BUDGET,
    ) -> None:
        levels = sorted({int(b) for b in allowed})
        if not levels or levels[0] < MIN_BITS or levels[-1] > MAX_BITS:
            raise ConfigError(
                f"allowed bit-widths must lie in {MIN_BITS}..{MAX_BITS}, got {list(allowed)}"
            )
        if not levels[0] <= budget <= levels[-1]:
            raise ConfigError(
                f"the bits budget {budget} must lie between the smallest and largest allowed "
                f"bit-width {levels[0]}..{levels[-1]}"
            )
        if num_layers < 1:
            raise ConfigError("a bit-width policy needs at least one quantized layer")
        self.num_layers, self.budget = num_layers, float(budget)
        self.levels = np.asarray(levels, dtype=np.float64)

    def targets(self, actions: np.ndarray) -> np.ndarray:
        """Steps 1-2: continuous per-layer targets whose mean is at most the budget."""
        a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
        lo, hi = self.levels[0], self.levels[-1]
        t = lo + (a + 1.0) / 2.0 * (hi - lo)
        excess = t.mean(axis=-1, keepdims=True)
        shrink = np.where(
            excess > self.budget, (self.budget - lo) / np.maximum(excess - lo, 1e-12), 1.0
        )
        return lo + (t - lo) * shrink

    def decode(self, actions: np.ndarray) -> np.ndarray:
        """Bit-widths (int64) shaped like `actions`: (layers,) or (batch, layers)."""
        a = np.asarray(actions, dtype=np.float64)
        if a.shape[-1] != self.num_layers:
            raise ActionError(
                f"bit-width actions need {self.num_layers} values per input, got {a.shape[-1]}"
            )
        if not np.isfinite(a).all():
            raise ActionError("bit-width actions contain NaN or infinite values")
        t = np.atleast_2d(self.targets(a))  # (B, L)
        idx = np.searchsorted(self.levels, t + 1e-9, side="right") - 1  # step 3: floor snap
        idx = np.clip(idx, 0, len(self.levels) - 1)
        bits = self.levels[idx]
        spare = self.budget * self.num_layers - bits.sum(axis=1)  # (B,)
        rows = np.arange(len(t))
        for _ in range(self.num_layers * len(self.levels)):  # step 4: refill, at most this often
            can = idx < len(self.levels) - 1
            step = np.where(
                can, self.levels[np.minimum(idx + 1, len(self.levels) - 1)] - bits, np.inf
            )
            shortfall = np.where(step <= spare[:, None] + 1e-9, t - bits, -np.inf)
            best = shortfall.argmax(axis=1)
            ok = np.isfinite(shortfall[rows, best])
            if not ok.any():
                break
            r, c = rows[ok], best[ok]
            spare[r] -= step[r, c]
            idx[r, c] += 1
            bits[r, c] = self.levels[idx[r, c]]
        out = bits.astype(np.int64)
        return out.reshape(a.shape)

    def uniform(self) -> np.ndarray:
        """The bits of the all-zero action (one per layer)."""
        return self.decode(np.zeros(self.num_layers))


class BitsPolicy(Protocol):
    """A per-input bit-width policy: (B, C, H, W) inputs to (B, layers) integer bit-widths."""

    def __call__(self, x: Tensor) -> Tensor: ...


class StaticBits:
    """The same per-layer bit-widths for every input."""

    def __init__(self, bits: Sequence[int]) -> None:
        self.bits = torch.as_tensor(list(bits), dtype=torch.long)

    def __call__(self, x: Tensor) -> Tensor:
        return self.bits.expand(x.shape[0], -1).clone()


class RandomBits:
    """Independent uniform random actions per input, decoded under the budget."""

    def __init__(self, decoder: BitsDecoder, seed: int = 0) -> None:
        self.decoder, self.rng = decoder, np.random.default_rng(seed)

    def __call__(self, x: Tensor) -> Tensor:
        actions = self.rng.uniform(-1, 1, size=(x.shape[0], self.decoder.num_layers))
        return torch.from_numpy(self.decoder.decode(actions))


class LearnedBits:
    """A per-input policy from any action function of observations (e.g. an SB3 policy).

    Args:
        act: maps a (B, obs_dim) float32 array to (B, layers) actions in [-1, 1].
        featurize: maps inputs (B, C, H, W) to the (B, obs_dim) observations `act` expects.
        decoder: turns actions into bit-widths under the budget.
    """

    def __init__(
        self,
        act: Callable[[np.ndarray], np.ndarray],
        featurize: Callable[[Tensor], np.ndarray],
        decoder: BitsDecoder,
    ) -> None:
        self.act, self.featurize, self.decoder = act, featurize, decoder

    def __call__(self, x: Tensor) -> Tensor:
        return torch.from_numpy(self.decoder.decode(self.act(self.featurize(x))))
