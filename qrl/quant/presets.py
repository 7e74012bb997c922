"""Named quantizer presets: the YAML files of the Hydra group `quant` are their single source."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from qrl.errors import ConfigError
from qrl.quant.config import QuantConfig
from qrl.specs import CONF_DIR, load_yaml, to_dict

PRESET_DIR = CONF_DIR / "quant"


def preset_names() -> list[str]:
    """The names usable as `quant=<name>` on the command line and `preset(name)` in Python."""
    return sorted(p.stem for p in Path(PRESET_DIR).glob("*.yaml"))


def preset(name: str, **overrides: Any) -> QuantConfig:
    """The `QuantConfig` of a named preset, with optional field overrides.

    Example:
        >>> preset("int4_dynamic", act_granularity="per_tensor").act_bits
        4
    """
    path = Path(PRESET_DIR) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown quant preset {name!r}; choose one of {preset_names()}")
    values = load_yaml(path)
    values.update(overrides)
    return QuantConfig.from_dict(values)


def as_quant_config(spec: str | QuantConfig | DictConfig | Mapping[str, Any] | None) -> QuantConfig:
    """Accept a preset name, a `QuantConfig`, or a config mapping (e.g. Hydra's `cfg.quant`)."""
    if spec is None:
        return preset("int8_dynamic")
    if isinstance(spec, QuantConfig):
        return spec
    if isinstance(spec, str):
        return preset(spec)
    return QuantConfig.from_dict(to_dict(spec))
