"""`QuantConfig`: a frozen, self-validating description of a dynamic quantizer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from qrl.errors import ConfigError
from qrl.quant.cpu import int8_accumulation

MIN_BITS, MAX_BITS = 2, 8
ACT_GRANULARITIES = ("per_tensor", "per_sample", "per_channel")
WEIGHT_GRANULARITIES = ("per_tensor", "per_channel")
WEIGHT_RANGES = ("full", "narrow", "reduced")
CLIPPINGS = ("minmax", "percentile")
BACKENDS = ("fake", "torch_ao", "onnxruntime")
ACCUMULATIONS = ("exact", "saturating_pairs", "auto")


def check_bits(bits: Any, what: str = "bits") -> int:
    """Return `bits` as an int, or raise a `ConfigError` unless it is an integer in 2..8."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{what} must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


@dataclass(frozen=True)
class QuantConfig:
    """How the dynamic quantizer treats activations (at run time) and weights (once).

    Activations (the input of every Conv and Linear layer) get a scale and zero-point computed
    from each forward pass's own values: over the whole batch (`per_tensor`), per input
    (`per_sample`, the default: one input's quantization never depends on the rest of its batch)
    or per channel. Weights are quantized once, per output channel by default.

    Attributes:
        act_bits: activation bit-width, 2..8 (per layer and per input via `set_bits_`).
        act_granularity: `per_tensor`, `per_sample` or `per_channel`.
        act_symmetric: symmetric signed grid around zero instead of an asymmetric unsigned one.
        act_clip: `minmax` (range = observed min and max) or `percentile`.
        act_percentile: with `percentile` clipping, the upper percentile kept (lower: 100 - p).
        act_include_zero: widen the range to contain 0, as torch and ONNX Runtime kernels do,
            so that zero is exactly representable.
        act_reduce_range: use one bit fewer, as fbgemm's `reduce_range` does (x86 int8 kernels).
        weight_bits: weight bit-width 2..8, or None to keep float weights.
        weight_granularity: `per_channel` (output channel) or `per_tensor`.
        weight_symmetric: symmetric weights (zero-point 0), as deployed int8 kernels use.
        weight_range: the symmetric weight grid. `full`: [-2^(b-1), 2^(b-1) - 1] with
            scale absmax / (2^(b-1) - 0.5), as torch.ao's observers; `narrow`:
            [-(2^(b-1) - 1), 2^(b-1) - 1], scale absmax / (2^(b-1) - 1), as ONNX Runtime's
            quantizer; `reduced`: ONNX Runtime's `reduce_range` (7-bit for 8),
            [-2^(b-2), 2^(b-2)], scale absmax / 2^(b-2).
        conv_weight_granularity: the weight granularity of Conv2d layers when it differs from
            `weight_granularity` (ONNX Runtime's dynamic ConvInteger is per tensor even when
            its MatMul weights are per channel); None: the same.
        fold_batchnorm: fold each BatchNorm that follows a Conv2d into that conv's weights and
            bias before quantizing them, as the ONNX exporter does (running statistics).
        act_range_grad: in QAT, let gradients flow into the observed activation range (min and
            max) as well as straight through the rounding; forward values are unchanged.
        backend: `fake` (qrl's simulator, any bits, differentiable) or a real int8 kernel:
            `torch_ao` (Linear layers) or `onnxruntime` (Conv and MatMul).
        accumulation: how a Linear layer's uint8 x int8 products are summed (see
            `qrl.quant.cpu`): `exact` int32; `saturating_pairs`, ONNX Runtime's kernel on x86
            CPUs without VNNI (adjacent products added in saturating 16-bit pairs); `auto`,
            the kernel that this machine's CPU runs. Convolutions are exact on every CPU.
    """

    act_bits: int = 8
    act_granularity: str = "per_sample"
    act_symmetric: bool = False
    act_clip: str = "minmax"
    act_percentile: float = 99.99
    act_include_zero: bool = True
    act_reduce_range: bool = False
    weight_bits: int | None = 8
    weight_granularity: str = "per_channel"
    weight_symmetric: bool = True
    weight_range: str = "full"
    conv_weight_granularity: str | None = None
    fold_batchnorm: bool = False
    act_range_grad: bool = False
    backend: str = "fake"
    accumulation: str = "exact"

    def __post_init__(self) -> None:
        check_bits(self.act_bits, "act_bits")
        if self.weight_bits is not None:
            check_bits(self.weight_bits, "weight_bits")
        _one_of("act_granularity", self.act_granularity, ACT_GRANULARITIES)
        _one_of("weight_granularity", self.weight_granularity, WEIGHT_GRANULARITIES)
        if self.conv_weight_granularity is not None:
            _one_of("conv_weight_granularity", self.conv_weight_granularity, WEIGHT_GRANULARITIES)
        _one_of("weight_range", self.weight_range, WEIGHT_RANGES)
        if self.weight_range != "full" and not self.weight_symmetric:
            raise ConfigError(
                f"weight_range={self.weight_range} describes a symmetric grid: set "
                "weight_symmetric=true or weight_range=full"
            )
        if self.weight_range == "reduced" and self.weight_bits is not None and self.weight_bits < 3:
            raise ConfigError("weight_range=reduced drops one bit: weight_bits must be at least 3")
        _one_of("act_clip", self.act_clip, CLIPPINGS)
        _one_of("backend", self.backend, BACKENDS)
        _one_of("accumulation", self.accumulation, ACCUMULATIONS)
        if self.accumulation == "saturating_pairs" and not self.is_u8_s8():
            raise ConfigError(
                "accumulation=saturating_pairs models ONNX Runtime's uint8 x int8 kernel: it "
                "needs act_bits=8, weight_bits=8, act_symmetric=false, weight_symmetric=true "
                "and act_granularity per_tensor or per_sample; use accumulation=exact"
            )
        if not 50.0 < self.act_percentile <= 100.0:
            raise ConfigError(f"act_percentile must be in (50, 100], got {self.act_percentile}")
        if self.act_reduce_range and self.act_bits < MIN_BITS + 1:
            raise ConfigError(
                f"act_reduce_range drops one bit: act_bits must be at least {MIN_BITS + 1}, "
                f"got {self.act_bits}"
            )
        if self.backend != "fake" and (self.act_bits != 8 or self.weight_bits != 8):
            raise ConfigError(
                f"backend={self.backend} runs real int8 kernels: act_bits and weight_bits must "
                f"be 8, got {self.act_bits} and {self.weight_bits}; use backend=fake for other "
                "bit-widths"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QuantConfig:
        """Build from a config mapping; unknown keys are an error (typos must not pass)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - {"name"})
        if unknown:
            raise ConfigError(f"unknown quant options {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def weight_granularity_of(self, conv: bool) -> str:
        """The weight granularity of a Conv2d (`conv=True`) or Linear layer."""
        if conv and self.conv_weight_granularity is not None:
            return self.conv_weight_granularity
        return self.weight_granularity

    def is_u8_s8(self) -> bool:
        """Whether Linear layers multiply uint8 activations (one zero point per row) by int8
        weights: the only products that ONNX Runtime's saturating kernel computes."""
        return (
            self.act_bits == 8
            and self.weight_bits == 8
            and not self.act_symmetric
            and self.weight_symmetric
            and self.act_granularity != "per_channel"
        )

    def accumulation_path(self) -> str:
        """The accumulation simulated: `exact` or `saturating_pairs` (`auto` resolved on this
        CPU; an unknown CPU and quantizers other than uint8 x int8 are `exact`)."""
        if self.accumulation != "auto":
            return self.accumulation
        saturating = int8_accumulation() == "saturating_pairs" and self.is_u8_s8()
        return "saturating_pairs" if saturating else "exact"

    def with_bits(self, act_bits: int) -> QuantConfig:
        """The same quantizer at another activation bit-width."""
        return replace(self, act_bits=act_bits)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")
