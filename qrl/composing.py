"""Hydra's raw composition of `conf/<name>.yaml`, no key checked; tasks only.

The one place that calls Hydra's `compose` (`qrl.config.load_config` checks the keys first, with
`qrl.overrides`). Importing it registers the node schemas (`qrl.schema`) that the yaml files name.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import qrl.schema  # noqa: F401  (registers the `/schema/...` nodes the yaml files name)
from qrl.specs import CONF_DIR

__all__ = ["compose_config"]


def compose_config(name: str, overrides: Sequence[str], hydra: bool = False) -> DictConfig:
    """Hydra's `compose`, with a running app's Hydra state set aside and restored."""
    from hydra.core.global_hydra import GlobalHydra

    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra)
    finally:
        if running is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(running)
