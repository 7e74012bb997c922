"""The dynamic-quantized copy of a model: every Conv and Linear input quantized at run time.

quantized = quantized_copy(student, QuantConfig(act_bits=4))
with using_bits(quantized, bits):    # int | one int per layer | (batch, layers) int tensor
    logits = quantized(x)            # one batched forward, each input at its own bits
with float_path(quantized):
    fp_logits = quantized(x)         # quantization off, activation ranges still recorded

Bit-widths are set for a scope and restored after it, so two users of one quantized copy (a QAT
step and a policy's rollout) never see each other's bits. `set_bits_` sets them for good.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qrl.errors import ConfigError
from qrl.quant.config import QuantConfig, check_bits
from qrl.quant.folding import fold_batchnorm
from qrl.quant.functional import (
    Bits,
    check_bits_tensor,
    observe_range,
    per_input_bits,
    quantize_activation,
    quantize_weight,
)
from qrl.quant.saturating import saturating_linear

QUANTIZABLE = (nn.Conv2d, nn.Linear)


class QuantizedLayer(nn.Module):
    """A Conv2d or Linear whose input is quantized dynamically and whose weight statically.

    The float layer stays inside (`.layer`) and keeps training: in training mode the weight is
    re-quantized every pass with the straight-through estimator (QAT); in eval mode the
    quantized weight is cached until the float weight changes.

    Attributes:
        bits: the activation bit-width: an int, or a (batch,) integer tensor (one per input).
        last_lo, last_hi: the activation range observed in the last forward pass (detached).
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear, cfg: QuantConfig) -> None:
        super().__init__()
        self.layer = layer
        self.cfg = cfg
        self.bits: Bits = cfg.act_bits
        self.enabled = True
        self.last_lo: Tensor | None = None
        self.last_hi: Tensor | None = None
        self._weight_cache: tuple[tuple, Tensor] | None = None
        # Read once: whether this layer's products add in saturating 16-bit pairs.
        self.saturating = (
            isinstance(layer, nn.Linear) and cfg.accumulation_path() == "saturating_pairs"
        )

    @property
    def is_conv(self) -> bool:
        return isinstance(self.layer, nn.Conv2d)

    def quantized_weight(self) -> Tensor:
        weight = self.layer.weight
        if self.training or (weight.requires_grad and torch.is_grad_enabled()):
            return quantize_weight(weight, self.cfg, conv=self.is_conv)
        # Keyed on the storage too: .to() / .data = ... swap the tensor without a version bump.
        version = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if self._weight_cache is None or self._weight_cache[0] != version:
            with torch.no_grad():
                self._weight_cache = (
                    version,
                    quantize_weight(weight, self.cfg, conv=self.is_conv),
                )
        return self._weight_cache[1]

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            # The float path still records per-input ranges: they describe the input to a
            # bit-width policy before it chooses bits.
            self.last_lo, self.last_hi = observe_range(x.detach(), "per_sample")
            return self.layer(x)
        channel_dim = 1 if isinstance(self.layer, nn.Conv2d) else x.ndim - 1
        xq, self.last_lo, self.last_hi = quantize_activation(
            x, self.bits, self.cfg, channel_dim=channel_dim
        )
        weight = self.quantized_weight()
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(xq, weight, self.layer.bias)  # exact on every CPU
        if self.saturating and _all_eight(self.bits):  # the kernel's uint8 x int8 products
            bits = per_input_bits(self.bits, x)
            return saturating_linear(
                xq, self.last_lo, self.last_hi, bits, weight, self.layer.bias, self.cfg
            )
        return F.linear(xq, weight, self.layer.bias)

    def extra_repr(self) -> str:
        bits = self.bits if isinstance(self.bits, int) else f"per-input {tuple(self.bits.shape)}"
        return (
            f"act_bits={bits}, act={self.cfg.act_granularity}, weight_bits={self.cfg.weight_bits}"
        )


def _all_eight(bits: Bits) -> bool:
    """Whether every input is quantized at 8 bits (ONNX Runtime's uint8 kernel)."""
    return bool((bits == 8).all()) if isinstance(bits, Tensor) else bits == 8


def quantized_copy(model: nn.Module, cfg: QuantConfig | None = None) -> nn.Module:
    """A deep copy of `model` whose every Conv2d and Linear is a `QuantizedLayer`.

    The argument is never modified. The copy keeps the float weights (so it can be trained
    with QAT) and the train/eval mode of the original; with `cfg.fold_batchnorm` they are the
    weights with each conv's BatchNorm folded in (see `qrl.quant.folding`).

    Raises:
        ConfigError: `cfg.backend` is not `fake` (real kernels live in `qrl.quant.backends`),
            or the model has no Conv2d / Linear layer.
    """
    cfg = cfg or QuantConfig()
    if cfg.backend != "fake":
        raise ConfigError(
            f"quantized_copy simulates quantization (backend=fake); for backend={cfg.backend} "
            "use qrl.quant.backends.real_backend"
        )
    quantized = fold_batchnorm(model) if cfg.fold_batchnorm else copy.deepcopy(model)
    _wrap_children(quantized, cfg)
    if not layer_names(quantized):
        raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    return quantized


def _wrap_children(module: nn.Module, cfg: QuantConfig) -> None:
    for name, child in module.named_children():
        if isinstance(child, QUANTIZABLE):
            setattr(module, name, QuantizedLayer(child, cfg))
        elif not isinstance(child, QuantizedLayer):
            _wrap_children(child, cfg)


def quantized_layers(quantized: nn.Module) -> list[QuantizedLayer]:
    """The quantized layers of a quantized copy, in definition order."""
    return [m for m in quantized.modules() if isinstance(m, QuantizedLayer)]


def layer_names(quantized: nn.Module) -> list[str]:
    """Names of the quantized layers (the float layers' names in the original model)."""
    return [
        name.removesuffix(".layer")
        for name, m in quantized.named_modules()
        if isinstance(m, QuantizedLayer)
    ]


def set_bits_(quantized: nn.Module, bits: int | Sequence[int] | Tensor) -> nn.Module:
    """Set the activation bit-widths of a quantized copy in place; returns it.

    Args:
        quantized: a model from `quantized_copy`.
        bits: one int for every layer; one int per quantized layer (a sequence or a (layers,)
            tensor); or an integer tensor of shape (batch, layers) giving every input its own
            per-layer bit-widths, applied in one batched forward pass.

    Raises:
        ConfigError: bits outside 2..8 (3..8 with `act_reduce_range`), a non-integer dtype, or
            the wrong number of layers. Nothing is changed when it raises.
    """
    layers = quantized_layers(quantized)
    if not layers:
        raise ConfigError("set_bits_ needs a model from quantized_copy (no quantized layers found)")
    per_layer = _per_layer_bits(bits, len(layers))
    lowest = min(int(b.min()) if isinstance(b, Tensor) else b for b in per_layer)
    if lowest < 3 and layers[0].cfg.act_reduce_range:
        raise ConfigError(
            f"act_reduce_range drops one bit, so every bit-width must be at least 3; got {lowest} "
            "(use a bits set without 2, or a preset without reduce_range)"
        )
    for layer, b in zip(layers, per_layer, strict=True):
        layer.bits = b
    return quantized


def _per_layer_bits(bits: int | Sequence[int] | Tensor, n_layers: int) -> list[Bits]:
    """Validated bits for each layer: ints, or (batch,) tensors for per-input bits."""
    if isinstance(bits, Tensor):
        bits = check_bits_tensor(bits)
        if bits.ndim == 0:
            return [int(bits)] * n_layers
        if bits.ndim == 2:
            if bits.shape[1] != n_layers:
                raise ConfigError(
                    f"per-input bits must be shaped (batch, {n_layers}), one column per "
                    f"quantized layer; got {tuple(bits.shape)}"
                )
            return [bits[:, j].contiguous() for j in range(n_layers)]
        if bits.ndim != 1:
            raise ConfigError(f"bits tensors must be 0-, 1- or 2-D, got shape {tuple(bits.shape)}")
        bits = [int(b) for b in bits]
    if isinstance(bits, int):
        return [check_bits(bits)] * n_layers
    per_layer = list(bits)
    if len(per_layer) != n_layers:
        raise ConfigError(f"got {len(per_layer)} bit-widths for {n_layers} quantized layers")
    return [check_bits(_as_int(b), "bits") for b in per_layer]


def _as_int(value: object) -> object:
    """NumPy and torch integers become ints; anything else is left for `check_bits` to refuse."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return value


@contextmanager
def using_bits(quantized: nn.Module, bits: int | Sequence[int] | Tensor) -> Iterator[nn.Module]:
    """Run a block with these activation bit-widths; the previous ones come back afterwards.

    Args:
        quantized: a model from `quantized_copy`.
        bits: as for `set_bits_` (validated before anything changes).
    """
    layers = quantized_layers(quantized)
    saved = [layer.bits for layer in layers]
    set_bits_(quantized, bits)
    try:
        yield quantized
    finally:
        for layer, b in zip(layers, saved, strict=True):
            layer.bits = b


@contextmanager
def float_path(quantized: nn.Module) -> Iterator[nn.Module]:
    """Run a block with quantization switched off (per-input ranges are still recorded)."""
    layers = quantized_layers(quantized)
    saved = [layer.enabled for layer in layers]
    set_quantization_enabled_(quantized, False)
    try:
        yield quantized
    finally:
        for layer, on in zip(layers, saved, strict=True):
            layer.enabled = on


def set_quantization_enabled_(quantized: nn.Module, enabled: bool) -> nn.Module:
    """Switch every quantized layer to its float path (`False`) or back; in place."""
    for layer in quantized_layers(quantized):
        layer.enabled = enabled
    return quantized


def float_model(quantized: nn.Module) -> nn.Module:
    """A plain copy of a quantized copy, with its (possibly QAT-trained) float weights."""
    model = copy.deepcopy(quantized)
    _unwrap_children(model)
    return model


def _unwrap_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, QuantizedLayer):
            setattr(module, name, child.layer)
        else:
            _unwrap_children(child)
