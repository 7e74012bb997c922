"""QuantConfig validation and the named presets."""

from __future__ import annotations

import pytest

from qrl.config import load_config
from qrl.errors import ConfigError
from qrl.quant import QuantConfig, as_quant_config, preset, preset_names


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"act_granularity": "per_row"}, "act_granularity must be one of"),
        ({"weight_granularity": "per_sample"}, "weight_granularity must be one of"),
        ({"act_clip": "mse"}, "act_clip must be one of"),
        ({"act_percentile": 20.0}, "act_percentile"),
        ({"act_bits": 2, "act_reduce_range": True}, "act_reduce_range drops one bit"),
        ({"weight_bits": 12}, "weight_bits must be an integer from 2 to 8"),
        ({"backend": "tensorrt"}, "backend must be one of"),
        ({"backend": "onnxruntime", "act_bits": 4}, "real int8 kernels"),
    ],
)
def test_invalid_combinations_raise_with_a_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


def test_config_is_frozen_and_rejects_unknown_keys() -> None:
    cfg = QuantConfig()
    with pytest.raises(AttributeError):
        cfg.act_bits = 4  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"unknown quant options \['act_bitz'\]"):
        QuantConfig.from_dict({"act_bitz": 4})
    assert cfg.with_bits(3).act_bits == 3 and cfg.act_bits == 8


def test_presets_load_by_name_and_from_hydra() -> None:
    assert {"int8_dynamic", "int4_dynamic", "torch_int8_dynamic"} <= set(preset_names())
    torch_like = preset("torch_int8_dynamic")
    assert torch_like.act_granularity == "per_tensor" and torch_like.act_reduce_range
    assert torch_like.weight_granularity == "per_tensor" and torch_like.weight_symmetric
    assert preset("int4_dynamic").act_bits == 4
    assert preset("int8_dynamic", act_bits=5).act_bits == 5
    with pytest.raises(ConfigError, match="unknown quant preset 'int3'"):
        preset("int3")
    for name in preset_names():
        cfg = load_config("quant_eval", [f"quant={name}", "run=x", "out=y"])
        assert as_quant_config(cfg.quant) == preset(name)
    int4 = as_quant_config("int4_dynamic")
    assert (int4.act_bits, int4.act_granularity, int4.act_symmetric, int4.backend) == (
        4,
        "per_sample",
        False,
        "fake",
    )
    assert (int4.weight_bits, int4.weight_granularity, int4.weight_symmetric) == (
        8,
        "per_channel",
        True,
    )
    assert as_quant_config(None).act_bits == 8  # the default is 8-bit dynamic quantization
