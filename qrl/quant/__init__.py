"""The dynamic quantizer: per-layer, per-input activation bit-widths, QAT, real-kernel backends.

Pure functions live in `functional`, the validating config in `config`, the model transform in
`modules`, named presets in `presets` and the real int8 kernels in `backends`.
"""

from qrl.quant.config import QuantConfig
from qrl.quant.functional import compute_qparams, fake_quantize, fake_quantize_ste, qrange
from qrl.quant.modules import (
    QuantizedLayer,
    float_model,
    float_path,
    layer_names,
    quantized_copy,
    quantized_layers,
    set_bits_,
    set_quantization_enabled_,
    using_bits,
)
from qrl.quant.presets import as_quant_config, preset, preset_names

__all__ = [
    "QuantConfig",
    "QuantizedLayer",
    "as_quant_config",
    "compute_qparams",
    "fake_quantize",
    "fake_quantize_ste",
    "float_model",
    "float_path",
    "layer_names",
    "preset",
    "preset_names",
    "qrange",
    "quantized_copy",
    "quantized_layers",
    "set_bits_",
    "set_quantization_enabled_",
    "using_bits",
]
