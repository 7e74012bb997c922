"""What both environments share: building the victim from keyword arguments, checking actions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from qrl.data import ImageData, from_tensors
from qrl.errors import ActionError, ConfigError
from qrl.quant import QuantConfig, as_quant_config, quantized_layers
from qrl.victim import Victim, default_victim


def resolve_victim(
    victim: Victim | None,
    teacher: nn.Module | None,
    student: nn.Module | None,
    data: ImageData | tuple[Tensor, Tensor] | None,
    quant: str | QuantConfig | Any,
) -> Victim:
    """A victim from keyword arguments; with none given, the cached default digits victim.

    Args:
        victim: a ready `Victim` (the other model and data arguments must then be None).
        teacher: the black-box teacher; defaults to the student itself in full precision.
        student: the white-box student whose quantized copy is attacked.
        data: `ImageData`, or an (inputs, labels) pair in [0, 1] pixel space.
        quant: a preset name, `QuantConfig` or config mapping.
    """
    quant_cfg = as_quant_config(quant)
    if victim is not None:
        if teacher is not None or student is not None or data is not None:
            raise ConfigError("pass either victim=... or teacher/student/data, not both")
        return victim
    if student is None and teacher is None and data is None:
        return default_victim(quant_cfg)
    if student is None or data is None:
        raise ConfigError("a custom victim needs at least student=... and data=...")
    if isinstance(data, tuple):
        data = from_tensors(*data)
    return Victim.from_models(teacher if teacher is not None else student, student, data, quant_cfg)


def check_action(action: Any, space: spaces.Space) -> np.ndarray:
    """The action as float64, clipped into the box; NaN or infinite values are an error.

    Out-of-range finite values are clipped (agents with Gaussian policies produce them);
    NaN or infinite values mean the agent has diverged, and are refused with a message.
    """
    assert isinstance(space, spaces.Box)
    a = np.asarray(action, dtype=np.float64)
    if a.shape != space.shape:
        raise ActionError(f"action must have shape {space.shape}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ActionError(
            "action contains NaN or infinite values: the agent has diverged "
            "(lower its learning rate, or check its inputs)"
        )
    return np.clip(a, space.low, space.high)


def range_features(quantized: nn.Module | Any, batch: int) -> np.ndarray:
    """Per-input, per-layer activation ranges of the last forward, squashed into [0, 1).

    tanh(log1p(hi - lo) / 3): monotone in the range, bounded for any activation scale.
    Shaped (batch, layers); zeros when the model records no ranges (a real backend).
    """
    layers = quantized_layers(quantized) if isinstance(quantized, nn.Module) else []
    if not layers:
        return np.zeros((batch, 0), dtype=np.float32)
    cols = []
    for layer in layers:
        if layer.last_lo is None or layer.last_hi is None:
            cols.append(torch.zeros(batch))
            continue
        width = (layer.last_hi - layer.last_lo).reshape(-1).cpu()  # observations: numpy
        # per_sample ranges are per input; coarser ones (per tensor, per channel) are shared.
        cols.append(width if width.numel() == batch else width.mean().expand(batch))
    ranges = torch.stack(cols, dim=1)  # (B, L)
    return torch.tanh(torch.log1p(ranges.clamp_min(0)) / 3).numpy().astype(np.float32)


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch generator seeded from the environment's own `np_random`."""
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
