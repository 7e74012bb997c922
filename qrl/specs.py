"""Config values without Hydra: where the YAML files are, plain dicts, checked numbers, `_target_`.

The library reads saved specs (a checkpoint's model, a run dir's data, an agent's SB3 class)
here, so that loading a pair or a victim in a notebook needs no Hydra. Tasks compose configs with
Hydra (`qrl.config`) and hand the library plain values and objects.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from qrl.errors import ConfigError, QrlError

_SPECIAL_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})


def _conf_dir() -> Path:
    """Where the YAML configs are: inside the installed package, or the checkout's `conf/`.

    The top-level `conf/` is their source; building a wheel copies it to `qrl/conf` (see
    `setup.py`), so a non-editable install (a wheel, a Ray worker) finds them with no source
    tree. An editable install or a checkout on `PYTHONPATH` reads `conf/` itself.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "search.yaml").is_file():
            return candidate
    raise ConfigError(
        f"qrl's configs are missing: neither {package / 'conf'} (an installed wheel) nor "
        f"{package.parent / 'conf'} (a source checkout) holds search.yaml; reinstall qrl"
    )


CONF_DIR = _conf_dir()


def to_dict(cfg: DictConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    """A resolved plain-dict copy of a config node (empty for None)."""
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        plain = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(plain, dict)
        return {str(k): v for k, v in plain.items()}
    return dict(cfg)


def plain(value: Any) -> Any:
    """`value` with every OmegaConf container turned into plain dicts and lists (resolved)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def load_yaml(path: Path, resolve: bool = True) -> dict[str, Any]:
    """A YAML file of `conf/` without Hydra's composition (preset and model files).

    `resolve=False` leaves `${...}` interpolations as text, for files that refer to keys of the
    composed config (`${seed}`) or to Hydra (`${hydra:...}`): take the nodes you need from it.
    """
    loaded = OmegaConf.load(path)
    plain = OmegaConf.to_container(loaded, resolve=resolve)
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items()}


def build(spec: DictConfig | Mapping[str, Any], *, what: str = "", **kwargs: Any) -> Any:
    """Build the object a `_target_` spec names, with `kwargs` added to its own options.

    The spec's other keys are keyword arguments (plain values: lists and dicts stay as they
    are); `_partial_: true` returns a `functools.partial` that the caller completes. `what`
    names the object in error messages ("model": "cannot build model qrl.models.Nope: ...").

    Raises:
        ConfigError: no `_target_`, a target that cannot be imported, or options it does not take.
    """
    options = to_dict(spec) if isinstance(spec, DictConfig) else dict(spec)
    target = options.get("_target_")
    name = f"{what} {target}" if what else str(target)
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(
            f"{what or 'spec'} {options} needs a _target_ such as qrl.models.SmallCNN"
        )
    module_name, _, attr = target.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot build {name}: cannot import it ({exc})") from exc
    call_kwargs = {str(k): plain(v) for k, v in options.items() if k not in _SPECIAL_KEYS}
    call_kwargs.update(kwargs)
    if options.get("_partial_"):
        return functools.partial(factory, **call_kwargs)
    try:
        return factory(**call_kwargs)
    except QrlError:
        raise  # already says what to fix
    except Exception as exc:  # a bad option of the target: name the target and the reason
        raise ConfigError(f"cannot build {name}: {exc}") from exc


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
