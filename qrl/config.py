"""Compose qrl's Hydra configs from Python (tests, the demo, the audit API)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from qrl.errors import ConfigError, QrlError


def _conf_dir() -> Path:
    """Where the Hydra configs are: inside the installed package, or the checkout's `conf/`.

    The top-level `conf/` is their source; building a wheel copies it to `qrl/conf` (see
    `setup.py`), so a non-editable install (a wheel, a Ray worker) finds them with no source
    tree. An editable install or a checkout on `PYTHONPATH` reads `conf/` itself.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "search.yaml").is_file():
            return candidate
    raise ConfigError(
        f"qrl's Hydra configs are missing: neither {package / 'conf'} (an installed wheel) nor "
        f"{package.parent / 'conf'} (a source checkout) holds search.yaml; reinstall qrl"
    )


CONF_DIR = _conf_dir()


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


def instantiate(cfg: DictConfig, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` that lets qrl's own errors through unwrapped.

    Hydra wraps every exception of a `_target_` in `InstantiationException`; a `QrlError`
    already says what to fix, so the user sees it alone.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(cfg, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, QrlError):
            raise cause from None
        raise ConfigError(str(exc)) from exc


def to_dict(cfg: DictConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    """A resolved plain-dict copy of a config node (empty for None)."""
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        plain = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(plain, dict)
        return {str(k): v for k, v in plain.items()}
    return dict(cfg)


def checked_number(
    value: Any,
    name: str,
    kind: type[int] | type[float] = float,
    *,
    low: float,
    strict: bool = False,
    high: float | None = None,
) -> Any:
    """`value` as `kind` within its range, or a `ConfigError` naming `name` and the range.

    NaN, strings and (for `int`) fractions are refused too, so a bad value never reaches the
    code that would use it.

    Args:
        low: the smallest value allowed (excluded with `strict`).
        high: the largest value allowed, if any.
    """
    need = f"{'>' if strict else '>='} {low}" + (f" and <= {high}" if high is not None else "")
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and number != float(value):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be {kind.__name__} {need}, got {value!r}") from None
    inside = number > low if strict else number >= low
    if not inside or (high is not None and not number <= high):  # NaN fails both
        raise ConfigError(f"{name} must be {need}, got {value}")
    return number
