"""Compose qrl's Hydra configs from Python (tests, the demo, the audit API); tasks only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from qrl.specs import CONF_DIR, build, checked_number, to_dict

__all__ = ["CONF_DIR", "checked_number", "instantiate", "load_config", "to_dict"]


def load_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `conf/<name>.yaml` with command-line style overrides.

    Works inside a running Hydra app too (a search that first distils the default victim):
    the app's own Hydra state is set aside for the composition and restored afterwards.
    """
    from hydra.core.global_hydra import GlobalHydra

    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=name, overrides=list(overrides))
    finally:
        if running is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(running)


def instantiate(cfg: DictConfig | Mapping[str, Any], **kwargs: Any) -> Any:
    """Build a config node's `_target_` (`qrl.specs.build`): one builder for tasks and library."""
    return build(cfg, **kwargs)
