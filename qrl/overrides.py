"""Every key an override names, checked against the config it changes; tasks only.

A key that is not there, with or without `+`, is one `ConfigError` naming the closest valid keys
(`checked_overrides`, `checked_argv`); a value that a node's schema (`qrl.schema`) refuses is
one line too, before Hydra would stop with a traceback. `qrl.config.load_config` and every
task's command line (`qrl.cli.checked_options`) go through it.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf

from qrl.composing import compose_config
from qrl.errors import ConfigError
from qrl.schema import refused, value_error
from qrl.specs import CONF_DIR

__all__ = [
    "STAGE_NODES",
    "STAGE_OWN_GROUPS",
    "STAGE_SHARED",
    "checked_argv",
    "checked_overrides",
    "needs_check",
    "one_line",
    "parse_overrides",
    "stage_shared",
]

# Nodes of a task's config that hold another task's config, merged over it: qrl.reproduce's
# stages. `pairs.train.rounds=30` is checked against conf/pairs.yaml and added as
# `+pairs.train.rounds=30` (no `+` needed; `+pairs...` still works, and names a sweep's job
# dirs as before).
STAGE_NODES: dict[str, dict[str, str]] = {
    "reproduce": {
        "distill": "distill",
        "pairs": "pairs",
        "input_pairs": "input_pairs",
        "search.overrides": "search",
    },
}
STAGE_SHARED = ("data", "model", "quant", "logger")  # groups every stage takes from reproduce
# Groups a stage keeps as its own: input pairs train against their int8 preset
# (conf/input_pairs.yaml), not reproduce's quant (the bit-width pairs').
STAGE_OWN_GROUPS: dict[str, tuple[str, ...]] = {"input_pairs": ("quant",)}


def stage_shared(stage: str) -> tuple[str, ...]:
    """The groups of `STAGE_SHARED` that `stage` takes from reproduce."""
    return tuple(g for g in STAGE_SHARED if g not in STAGE_OWN_GROUPS.get(stage, ()))


def checked_overrides(name: str, overrides: Sequence[str]) -> list[str]:
    """`overrides` of `conf/<name>.yaml`, every key checked; returned as Hydra takes them.

    A key must be in the config that the overrides' group options compose (every option of a
    swept group counts). `+key` adds a key only below a null node (`+model.spec._target_=...`
    in audit) or as a parameter of a `_target_` node's callable; `+key` for a key that is
    there sets it. Keys of `STAGE_NODES` (`pairs.train.rounds`) are checked against the stage's
    own config and returned as `+key=value` (`++key=value` when given again), with or without
    `+`. `+hydra.*` keys and `@package` overrides are left to Hydra.

    Each value is then tried on the config it changes (`_check_values`): a node's schema
    (`qrl.schema`) refuses a value of the wrong type in one line.

    Raises:
        ConfigError: one line naming the unknown key and the closest valid keys, or the key
            whose value has the wrong type.
    """
    given = list(overrides)
    parsed = parse_overrides(given)
    index = _Index(name, _group_choices(parsed))
    index.keys()  # the group options compose (`experiment=x` without `+`: one line)
    checked = [_checked(text, o, index) for text, o in zip(given, parsed, strict=True)]
    _check_values(index, parsed)
    return checked


def checked_argv(name: str | None, argv: Sequence[str]) -> list[str]:
    """A task's command line with every override checked (`checked_overrides`), for Hydra.

    `name` is the task's config; `--config-name` replaces it. Command lines Hydra's own parser
    refuses, `--version` and other config dirs are left to Hydra.
    """
    import contextlib
    import io

    from hydra._internal.utils import get_args_parser

    argv = list(argv)
    if "--version" in argv:
        return argv
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            args = get_args_parser().parse_args(argv)
    except SystemExit:  # Hydra says what is wrong with the command line
        return argv
    name = getattr(args, "config_name", None) or name
    if not name or getattr(args, "config_path", None) or getattr(args, "config_dir", None):
        return argv
    checked, start = list(argv), 0
    for old, new in zip(args.overrides, checked_overrides(name, args.overrides), strict=True):
        i = checked.index(old, start)
        checked[i], start = new, i + 1
    return checked


def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return list(OverridesParser.create().parse_overrides(list(overrides)))
    except OverrideParseException as exc:
        raise ConfigError(f"cannot read the overrides: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _is_group(key: str) -> bool:
    """`model`, `hydra/launcher`: a config group option, not a key."""
    return "/" in key or ("." not in key and (CONF_DIR / key).is_dir())


def _stage_of(name: str, key: str, index: _Index | None = None) -> tuple[str, str] | None:
    """(node, stage config) when `key` lies inside a `STAGE_NODES` node of `name`; with `index`,
    None for a key of the task's own config there (`input_pairs.enabled`)."""
    if index is not None and key in index.keys().paths:
        return None
    for node, stage in STAGE_NODES.get(name, {}).items():
        if key.startswith(f"{node}."):
            return node, stage
    return None


def needs_check(name: str, override: Any) -> bool:
    """Whether composing alone would not catch a bad key: `+key`, `++key`, a stage key."""
    key = str(override.key_or_group)
    if override.package is not None or _is_group(key):
        return False
    adds = override.is_add() or override.is_force_add()
    return (adds and not key.startswith("hydra.")) or _stage_of(name, key) is not None


def _group_choices(parsed: Sequence[Any]) -> list[list[str]]:
    """The group overrides to compose with: the first option of each, then every other option
    of each swept group in turn (glob and range sweeps: the config's default)."""
    fixed: list[str] = []
    swept: list[tuple[int, list[str]]] = []
    for o in parsed:
        if o.package is not None or not _is_group(str(o.key_or_group)):
            continue
        if not o.is_sweep_override():
            fixed.append(str(o.input_line))
        elif o.is_choice_sweep() and "glob(" not in str(o.input_line):
            head = str(o.input_line).partition("=")[0]
            options = [f"{head}={v}" for v in o.sweep_string_iterator()]
            swept.append((len(fixed), options))
            fixed.append(options[0])
    choices = [fixed]
    for at, options in swept:
        choices += [[*fixed[:at], option, *fixed[at + 1 :]] for option in options[1:]]
    return choices


def _checked(text: str, o: Any, index: _Index) -> str:
    """One override, its key checked; as Hydra should take it."""
    key = str(o.key_or_group)
    if o.package is not None or _is_group(key):
        return text
    stage = None if o.is_delete() else _stage_of(index.name, key, index)
    if stage is not None:
        inner = key[len(stage[0]) + 1 :]
        if not index.keys(stage[1]).allows(inner):
            raise index.unknown(key)
        again = key in index.added
        index.added.add(key)
        # `+key` (Hydra's job dir names stay those of the old spelling); a second time, `++key`
        return ("++" if again else "+") + text.lstrip("+")
    keys = index.keys()
    if key in keys.paths:
        return "++" + text[1:] if o.is_add() else text  # `+key` for a key that is there: set it
    if o.is_add() or o.is_force_add():
        if key.startswith("hydra.") or keys.allows(key):
            return text
    elif keys.allows(key):
        raise ConfigError(f"{key} is not in conf/{index.name}.yaml: add it with +{text}")
    raise index.unknown(key)


def _check_values(index: _Index, parsed: Sequence[Any]) -> None:
    """Each value an override sets (each of a sweep's), set as Hydra sets it on a copy of the
    config it changes: a value that a typed node (`qrl.schema`) refuses is one `ConfigError`
    naming the key and the type it needs. Other failures are left to Hydra."""
    from omegaconf.errors import OmegaConfBaseException, ValidationError

    tried: dict[str, DictConfig] = {}
    for o in parsed:
        key = str(o.key_or_group)
        if o.package is not None or _is_group(key) or o.is_delete() or key.startswith("hydra."):
            continue
        stage = _stage_of(index.name, key, index)
        inner, where = (key[len(stage[0]) + 1 :], stage[1]) if stage else (key, "")
        if where not in tried:
            tried[where] = index.typed(where)
        for value in _values(o):
            try:
                OmegaConf.update(tried[where], inner, value, merge=True, force_add=True)
            except ValidationError as exc:
                raise value_error(tried[where], inner, value, exc, shown=key) from None
            except OmegaConfBaseException:
                break  # not the value's type: Hydra says what is wrong
            error = refused(tried[where], inner, value, shown=key)
            if error is not None:
                raise error


def _values(o: Any) -> list[Any]:
    """The values an override sets: one, or each of a choice or range sweep (the first 100);
    none for an interval sweep (Optuna draws them)."""
    if not o.is_sweep_override():
        return [o.value()]
    if o.is_choice_sweep() or o.is_range_sweep():
        return list(itertools.islice(o.sweep_iterator(), 100))
    return []


@dataclass
class _Keys:
    """The dotted keys of composed configs, and the nodes that take new keys below them."""

    paths: set[str] = field(default_factory=set)
    nulls: set[str] = field(default_factory=set)  # `model.spec: null`: anything below it
    targets: dict[str, str] = field(default_factory=dict)  # `_target_` nodes: its parameters
    # Maps a schema types as `dict[str, X]` (`train.away_weights`, by the student's class): any
    # key below them, its value typed by the schema.
    maps: set[str] = field(default_factory=set)

    def add(self, value: Any, path: str = "") -> None:
        if isinstance(value, DictConfig):
            self.maps |= _open_maps(value, path)
            value = OmegaConf.to_container(value, resolve=False)
        if path:
            self.paths.add(path)
            if value is None:
                self.nulls.add(path)
        if isinstance(value, dict):
            if isinstance(value.get("_target_"), str):
                self.targets[path] = value["_target_"]
            for k, v in value.items():
                self.add(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.add(v, f"{path}.{i}")

    def allows(self, key: str) -> bool:
        """Whether `key` is there, or may be added (below a null node, a target's parameter)."""
        if key in self.paths:
            return True
        parts = key.split(".")
        for i in range(1, len(parts)):
            node = ".".join(parts[:i])
            if node in self.nulls or (node in self.maps and i == len(parts) - 1):
                return True
            if node in self.targets:
                params = _parameters(self.targets[node])
                return params is None or parts[i] in params
        return False

    def candidates(self, key: str, prefix: str = "") -> Iterator[str]:
        """Every key, and the parameters of the target nodes above `key`, after `prefix`."""
        yield from (prefix + p for p in self.paths)
        for node, target in self.targets.items():
            if key.startswith(f"{node}."):
                yield from (f"{prefix}{node}.{p}" for p in _parameters(target) or ())


def _open_maps(cfg: DictConfig, path: str = "") -> set[str]:
    """The dotted paths of `cfg`'s nodes that a schema types as `dict[str, X]`."""
    import typing

    found: set[str] = set()
    for key in cfg:
        node = cfg._get_node(key)
        where = f"{path}.{key!s}" if path else str(key)
        if isinstance(node, DictConfig):
            if typing.get_origin(node._metadata.ref_type) is dict:
                found.add(where)
            found |= _open_maps(node, where)
    return found


def _parameters(target: str) -> frozenset[str] | None:
    """The keyword parameters of a `_target_` callable; None when it takes any (or is unknown)."""
    import importlib

    module, _, attr = target.rpartition(".")
    try:
        params = inspect.signature(getattr(importlib.import_module(module), attr)).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return frozenset(params)


class _Index:
    """The keys of `conf/<name>.yaml` under the given group choices, and of its stages' configs."""

    # The keys of (config, group choices, stage) composed so far in this process: a config's
    # files do not change while it runs.
    _cache: ClassVar[dict[tuple[str, tuple[tuple[str, ...], ...], str], _Keys]] = {}
    _typed: ClassVar[dict[tuple[str, tuple[tuple[str, ...], ...], str], DictConfig]] = {}

    def __init__(self, name: str, group_choices: list[list[str]]):
        self.name, self.group_choices = name, group_choices
        self._configs: list[DictConfig] = []
        self.added: set[str] = set()  # stage keys given so far

    def configs(self) -> list[DictConfig]:
        from hydra.errors import HydraException

        if not self._configs:
            try:
                self._configs = [
                    compose_config(self.name, c, hydra=True) for c in self.group_choices
                ]
            except HydraException as exc:  # `experiment=x` without `+`, a missing option
                raise ConfigError(one_line(exc)) from None
        return self._configs

    def keys(self, stage: str = "") -> _Keys:
        """The task's own keys (`stage` empty), or those of one of its stages' configs."""
        at = (self.name, tuple(tuple(c) for c in self.group_choices), stage)
        if at not in self._cache:
            keys = _Keys()
            for cfg in self.configs() if not stage else self._stage_configs(stage):
                keys.add(cfg)
            self._cache[at] = keys
        return self._cache[at]

    def typed(self, stage: str = "") -> DictConfig:
        """A copy of the task's config (or of a stage's) to try values on, struct off."""
        at = (self.name, tuple(tuple(c) for c in self.group_choices), stage)
        if at not in self._typed:
            self._typed[at] = next(self._stage_configs(stage)) if stage else self.configs()[0]
        cfg = copy.deepcopy(self._typed[at])
        OmegaConf.set_struct(cfg, False)  # the keys are checked already
        return cfg

    def _stage_configs(self, stage: str) -> Iterator[DictConfig]:
        """A stage's config as the task merges it: its shared groups are the task's."""
        agents = sorted(p.stem for p in (CONF_DIR / "agent").glob("*.yaml"))
        task = self.configs()[0]
        for overrides in [[f"agent={a}"] for a in agents] if stage == "search" else [[]]:
            cfg = compose_config(stage, overrides)
            OmegaConf.set_struct(cfg, False)
            for group in stage_shared(stage):
                if group in cfg and group in task:
                    cfg[group] = task[group]
            yield cfg

    def unknown(self, key: str) -> ConfigError:
        """The error for `key`: not in the config, with the closest valid keys."""
        stage = _stage_of(self.name, key)
        if stage is not None:
            where = f"{stage[0]} takes the keys of conf/{stage[1]}.yaml"
            inner = key[len(stage[0]) + 1 :]
            candidates = set(self.keys(stage[1]).candidates(inner, f"{stage[0]}."))
            candidates |= {k for k in self.keys().paths if k.startswith(f"{stage[0]}.")}
        else:
            where = f"not in conf/{self.name}.yaml"
            hydra = key.startswith("hydra.")
            own = self.keys().candidates(key)
            candidates = {k for k in own if k.startswith("hydra.") == hydra}
            for node, name in () if hydra else STAGE_NODES.get(self.name, {}).items():
                candidates |= set(self.keys(name).candidates("", f"{node}."))
        ranked = sorted(candidates)
        close = difflib.get_close_matches(key, ranked, n=3, cutoff=0.6)
        close = close or difflib.get_close_matches(key, ranked, n=3, cutoff=0.0)
        return ConfigError(
            f"unknown key {key!r} ({where}); closest valid keys: {', '.join(close)} "
            f"(python -m qrl.{self.name} --cfg job lists them)"
        )
