"""Pure quantization functions: integer ranges, qparams, fake-quantization, straight-through.

Conventions follow the deployed int8 kernels (fbgemm, ONNX Runtime): values are mapped with
`q = clamp(round(x * (1 / scale)) + zero_point, qmin, qmax)` (round half to even) and back with
`(q - zero_point) * scale`. Symmetric grids are signed, `[-2^(b-1), 2^(b-1) - 1]`, with
`scale = absmax / ((qmax - qmin) / 2)` as torch's observers compute it; asymmetric grids are
unsigned, `[0, 2^b - 1]`.

Every function here is batched: `bits` may be one int or an integer tensor with one entry per
input. With `per_sample` granularity the result is the same as quantizing each input on its
own at its own bits; with `per_tensor` or `per_channel` the inputs of a batch share one observed
range (as in deployed kernels), and only the grid differs per input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qrl.errors import ConfigError
from qrl.quant.config import MAX_BITS, MIN_BITS, QuantConfig

Bits = int | Tensor
# The smallest scale: keeps constant (or all-zero) tensors from dividing by zero.
EPS = float(torch.finfo(torch.float32).eps)


def qrange(bits: Bits, symmetric: bool, reduce_range: bool = False) -> tuple[Bits, Bits]:
    """Integer grid limits (qmin, qmax) for `bits`; tensors in, float tensors out."""
    b = bits - 1 if reduce_range else bits
    if isinstance(b, Tensor):
        levels = torch.pow(2.0, b.to(torch.float32))
        return (
            (-levels / 2, levels / 2 - 1) if symmetric else (torch.zeros_like(levels), levels - 1)
        )
    return (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if symmetric else (0, 2**b - 1)


def compute_qparams(
    lo: Tensor,
    hi: Tensor,
    qmin: Bits,
    qmax: Bits,
    *,
    symmetric: bool,
    include_zero: bool = True,
) -> tuple[Tensor, Tensor]:
    """Scale and zero-point that map the range [lo, hi] onto the grid [qmin, qmax].

    Args:
        lo, hi: observed range, any broadcastable shape.
        qmin, qmax: grid limits from `qrange` (ints, or tensors broadcastable to lo).
        symmetric: zero-point 0 and a range symmetric around 0.
        include_zero: widen [lo, hi] to contain 0 (always the case when symmetric).

    Returns:
        (scale, zero_point), float tensors; zero_point holds integers.
    """
    if symmetric:
        absmax = torch.maximum(lo.abs(), hi.abs())
        scale = (absmax / ((qmax - qmin) / 2)).clamp_min(EPS)
        return scale, torch.zeros_like(scale)
    if include_zero:
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    else:
        # A constant input has no range; let it fall back to one that contains zero.
        flat = (hi - lo) <= EPS * torch.maximum(hi.abs(), lo.abs()).clamp_min(1.0)
        lo = torch.where(flat, lo.clamp(max=0.0), lo)
        hi = torch.where(flat, hi.clamp(min=0.0), hi)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(EPS)
    # Straight-through only when the range carries gradients (QAT with act_range_grad): the
    # plain round keeps the numerics bit-exact against the deployed kernels.
    shift = qmin - lo / scale
    zero_point = round_ste(shift) if shift.requires_grad else torch.round(shift)
    return scale, zero_point


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Bits, qmax: Bits) -> Tensor:
    """Quantize to the integer grid and back; the result lies on `(k - zero_point) * scale`."""
    # One allocation, then in place: fresh large buffers cost more than the arithmetic here.
    q = x * (1.0 / scale)
    q.round_().add_(zero_point).clamp_(qmin, qmax)  # type: ignore[arg-type]
    return q.sub_(zero_point).mul_(scale)


def round_ste(x: Tensor) -> Tensor:
    """Round half to even in the forward pass; identity gradient (straight-through)."""
    return x + (torch.round(x) - x).detach()


def fake_quantize_range_ste(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Bits, qmax: Bits
) -> Tensor:
    """`fake_quantize` whose gradient also reaches the scale and zero-point (the observed range).

    Rounding is straight-through; clamping is not (0 gradient for clipped values). Because the
    scale is a function of the observed min and max, training can learn to move the range itself,
    which is how dynamic min-max quantization fails in practice: one large activation stretches
    the grid until every other value of that input rounds to zero (see PAPER.md).
    """
    q = round_ste(x / scale) + zero_point
    q = torch.clamp(q, qmin, qmax)  # type: ignore[arg-type]
    return (q - zero_point) * scale


def fake_quantize_ste(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Bits, qmax: Bits
) -> Tensor:
    """`fake_quantize` with the straight-through estimator for training (QAT).

    The forward value is the fake-quantized tensor; the gradient with respect to `x` is 1
    where `x` lies inside the representable range and 0 where it was clipped. Scale and
    zero-point are treated as constants (they are recomputed from the data every pass).
    """
    scale, zero_point = scale.detach(), zero_point.detach()
    out = fake_quantize(x.detach(), scale, zero_point, qmin, qmax)
    lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    inside = ((x >= lo) & (x <= hi)).to(x.dtype)
    passthrough = x * inside
    return passthrough + (out - passthrough).detach()


def _reduce_shape(x: Tensor, granularity: str, channel_dim: int) -> list[int]:
    shape = [1] * x.ndim
    if granularity == "per_sample":
        shape[0] = x.shape[0]
    elif granularity == "per_channel":
        shape[channel_dim] = x.shape[channel_dim]
    return shape


def _rows(x: Tensor, granularity: str, channel_dim: int) -> Tensor:
    """The values each qparam is computed from, one row per qparam."""
    if granularity == "per_sample":
        return x.reshape(x.shape[0], -1)
    if granularity == "per_channel":
        return x.movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1)
    return x.reshape(1, -1)


def observe_range(
    x: Tensor,
    granularity: str,
    *,
    channel_dim: int = 1,
    clip: str = "minmax",
    percentile: float = 100.0,
) -> tuple[Tensor, Tensor]:
    """The (lo, hi) range of `x` at a granularity, shaped to broadcast against `x`.

    Raises:
        ValueError: `x` holds NaN or infinite values (a quantizer cannot choose a range).
    """
    shape = _reduce_shape(x, granularity, channel_dim)
    rows = _rows(x, granularity, channel_dim)
    if clip == "percentile" and percentile < 100.0:
        n = rows.shape[1]
        k_hi = max(1, min(n, math.ceil(percentile / 100.0 * n - 1e-9)))  # 1e-9: float error
        lo = rows.kthvalue(n - k_hi + 1, dim=1).values
        hi = rows.kthvalue(k_hi, dim=1).values
    else:
        # amin + amax: two passes, yet ~10x faster than aminmax's one on CPU (torch 2.13).
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
    lo, hi = lo.reshape(shape), hi.reshape(shape)
    if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
        raise ValueError(
            "the quantizer got NaN or infinite activations: check the model's inputs "
            "(images must be finite, in [0, 1])"
        )
    return lo, hi


def per_input_bits(bits: Bits, x: Tensor) -> Bits:
    """Shape a per-input bits tensor (B,) to broadcast against `x`; validate its values."""
    if not isinstance(bits, Tensor):
        return bits
    if bits.ndim != 1 or bits.shape[0] != x.shape[0]:
        raise ValueError(
            f"per-input bits hold {tuple(bits.shape)} entries but the batch has {x.shape[0]} "
            "inputs: call set_bits_ with a (batch, layers) tensor for this batch"
        )
    return bits.reshape(-1, *([1] * (x.ndim - 1))).to(x.device)  # bits may be drawn on the CPU


def quantize_activation(
    x: Tensor, bits: Bits, cfg: QuantConfig, *, channel_dim: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """Dynamically fake-quantize an activation tensor.

    Args:
        x: the activation, batch first: (B, C, H, W) for convolutions, (B, F) for linear layers.
        bits: one bit-width, or an integer tensor (B,) giving each input its own.
        cfg: the quantizer.
        channel_dim: the channel dimension, for `per_channel` granularity.

    Returns:
        (quantized x, lo, hi): the observed range is returned for statistics.
    """
    b = per_input_bits(bits, x)
    range_grad = cfg.act_range_grad and x.requires_grad
    lo, hi = observe_range(
        x if range_grad else x.detach(),
        cfg.act_granularity,
        channel_dim=channel_dim,
        clip=cfg.act_clip,
        percentile=cfg.act_percentile,
    )
    scale, zero_point = activation_qparams(lo, hi, b, cfg)
    qmin, qmax = qrange(b, cfg.act_symmetric, cfg.act_reduce_range)
    if cfg.act_reduce_range and cfg.act_clip == "minmax":
        # fbgemm picks qparams for the reduced grid but clamps to the full one: a value that
        # rounds one step past the reduced grid keeps that step (measured against torch.ao).
        qmin, qmax = qrange(b, cfg.act_symmetric)
    if range_grad:
        out = fake_quantize_range_ste(x, scale, zero_point, qmin, qmax)
        return out, lo.detach(), hi.detach()
    if x.requires_grad:
        return fake_quantize_ste(x, scale, zero_point, qmin, qmax), lo, hi
    return fake_quantize(x, scale, zero_point, qmin, qmax), lo, hi


def activation_qparams(
    lo: Tensor, hi: Tensor, bits: Bits, cfg: QuantConfig
) -> tuple[Tensor, Tensor]:
    """The activation grid's scale and zero point for an observed range (bits shaped by
    `per_input_bits`)."""
    qmin, qmax = qrange(bits, cfg.act_symmetric, cfg.act_reduce_range)
    return compute_qparams(
        lo, hi, qmin, qmax, symmetric=cfg.act_symmetric, include_zero=cfg.act_include_zero
    )


def weight_qrange(bits: int, cfg: QuantConfig) -> tuple[int, int]:
    """The integer grid of the weights (see `QuantConfig.weight_range`)."""
    if cfg.weight_range == "narrow":
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    if cfg.weight_range == "reduced":
        return -(2 ** (bits - 2)), 2 ** (bits - 2)
    qmin, qmax = qrange(bits, cfg.weight_symmetric)
    return int(qmin), int(qmax)


def quantize_weight(w: Tensor, cfg: QuantConfig, *, conv: bool = False) -> Tensor:
    """Fake-quantize a weight tensor (output channels first) once, at `cfg.weight_bits`.

    `conv` picks `cfg.conv_weight_granularity` where the config sets one.
    """
    if cfg.weight_bits is None:
        return w
    scale, zero_point = weight_qparams(w, cfg, conv=conv)
    qmin, qmax = weight_qrange(cfg.weight_bits, cfg)
    if w.requires_grad:
        return fake_quantize_ste(w, scale, zero_point, qmin, qmax)
    return fake_quantize(w, scale, zero_point, qmin, qmax)


def weight_qparams(w: Tensor, cfg: QuantConfig, *, conv: bool = False) -> tuple[Tensor, Tensor]:
    """The weight grid's scale and zero point, per output channel or per tensor, shaped to
    broadcast against `w` (needs `cfg.weight_bits`)."""
    assert cfg.weight_bits is not None
    per_channel = cfg.weight_granularity_of(conv) == "per_channel"
    lo, hi = observe_range(w.detach(), "per_sample" if per_channel else "per_tensor")
    qmin, qmax = weight_qrange(cfg.weight_bits, cfg)
    return compute_qparams(lo, hi, qmin, qmax, symmetric=cfg.weight_symmetric)


def check_bits_tensor(bits: Tensor) -> Tensor:
    """Validate an integer bits tensor: integer dtype, values in 2..8."""
    if bits.dtype.is_floating_point or bits.dtype == torch.bool or bits.is_complex():
        raise ConfigError(f"bits tensors must have an integer dtype, got {bits.dtype}")
    if bits.numel() and (int(bits.min()) < MIN_BITS or int(bits.max()) > MAX_BITS):
        raise ConfigError(
            f"bits must lie in {MIN_BITS}..{MAX_BITS}, got values from {int(bits.min())} "
            f"to {int(bits.max())}"
        )
    return bits.long()
