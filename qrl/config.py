"""Compose qrl's Hydra configs from Python (tests, the demo, the audit API); tasks only.

Every key an override names is checked against the config it changes (`checked_overrides`, in
`qrl.overrides`): a key that is not there, with or without `+`, is one `ConfigError` naming the
closest valid keys. Hydra's raw composition is `qrl.composing`; the node schemas `qrl.schema`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from qrl.composing import compose_config
from qrl.overrides import (
    STAGE_NODES,
    STAGE_SHARED,
    checked_argv,
    checked_overrides,
    needs_check,
    parse_overrides,
    stage_shared,
)
from qrl.specs import CONF_DIR, build, checked_number, to_dict

__all__ = [
    "CONF_DIR",
    "STAGE_NODES",
    "STAGE_SHARED",
    "checked_argv",
    "checked_number",
    "checked_overrides",
    "instantiate",
    "load_config",
    "stage_shared",
    "to_dict",
]


def load_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `conf/<name>.yaml` with command-line style overrides, every key checked.

    Works inside a running Hydra app too (a search that first distils the default victim):
    the app's own Hydra state is set aside for the composition and restored afterwards.

    Raises:
        ConfigError: a key the config does not have, or a value of the wrong type for a
            node's schema (`checked_overrides`).
    """
    from hydra.errors import ConfigCompositionException

    given = list(overrides)
    parsed = parse_overrides(given)
    if any(needs_check(name, o) for o in parsed):  # `+` keys, stage keys: checked first
        given = checked_overrides(name, given)
    try:
        return compose_config(name, given)
    except ConfigCompositionException:
        checked_overrides(name, given)  # a key that is not there, a bad value: one line
        raise


def instantiate(cfg: DictConfig | Mapping[str, Any], **kwargs: Any) -> Any:
    """Build a config node's `_target_` (`qrl.specs.build`): one builder for tasks and library."""
    return build(cfg, **kwargs)
