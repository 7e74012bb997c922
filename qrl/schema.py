"""The config schema: typed nodes (Hydra's ConfigStore) and their range checks; tasks only.

Each dataclass types one config node, and its `validate` checks that node's ranges: OmegaConf
refuses a value of the wrong type when the config is composed (`qrl.overrides` names it in one
line before Hydra would), and a task's check function calls `validate` before anything is
written. Each schema hangs on its node, not on a whole config, so a config may grow new nodes:

| schema | node | attached in |
|---|---|---|
| `Space` | `space` | conf/space/*.yaml (`- /schema/space@_here_`) |
| `Env` | `env` | conf/env/*.yaml (`- /schema/env@_here_`) |
| `Bits` | `bits` | conf/search.yaml, conf/pairs.yaml (`- /schema/bits@bits`) |
| `Select` | `select` | conf/search.yaml (`- /schema/select@select`) |
| `PairTrain` | `train` | conf/pairs.yaml (`- /schema/pair_train@train`) |
| `SearchStage`, `CrossStage` | `search`, `cross` | conf/reproduce.yaml |

reproduce's `distill` and `pairs` stage nodes take the keys of conf/distill.yaml and
conf/pairs.yaml: they are checked against those configs (`qrl.overrides`) and validated as the
stage's config (`qrl.pairs.check_config`).

In a primary config the schema comes after `_self_` and its fields have no defaults (MISSING):
the yaml's values stay the node's values, typed and checked by the schema, and the composed
config keeps its keys in the order of the yaml (the `config.yaml` of a run dir is unchanged).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from qrl.errors import ConfigError
from qrl.specs import CONF_DIR, checked_number

__all__ = [
    "SCHEMAS",
    "Bits",
    "CrossStage",
    "Env",
    "PairTrain",
    "SearchStage",
    "Select",
    "Space",
    "refused",
    "register",
    "validate_pairs",
    "validate_reproduce",
    "validate_search",
    "value_error",
]

SPLITS = ("train", "val", "test")
REFERENCES = ("teacher", "student")


def _one_of(value: Any, choices: tuple[str, ...], name: str) -> None:
    if str(value) not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def _listed(node: Any, key: str, at: str) -> list[Any]:
    """`node[key]` as a list, or one line naming it (a node typed after `_self_` takes a
    scalar for a list from Python merges)."""
    value = node[key]
    if not isinstance(value, ListConfig | list | tuple):
        raise ConfigError(f"{at}.{key} must be a list, got {value!r}")
    return list(value)


def _open_unit(value: Any, name: str, what: str = "") -> None:
    """`value` in (0, 1), or one line naming `name`."""
    if not 0 < checked_number(value, name, low=0, strict=True) < 1:
        raise ConfigError(f"{name}{what} must be in (0, 1), got {value}")


@dataclass
class Space:
    """`space`: what the search's action controls (conf/space/*.yaml)."""

    mode: str = MISSING  # input | bits | joint
    corruptions: list[str] = MISSING
    class_mix: bool = MISSING

    @staticmethod
    def validate(node: Any, at: str = "space") -> None:
        from qrl.envs.failure_task import MODES
        from qrl.policies.input import CORRUPTIONS

        _one_of(node["mode"], MODES, f"{at}.mode")
        unknown = sorted({str(c) for c in _listed(node, "corruptions", at)} - set(CORRUPTIONS))
        if unknown:
            raise ConfigError(
                f"{at}.corruptions: unknown {unknown}; choose from {list(CORRUPTIONS)}"
            )


@dataclass
class Env:
    """`env`: qrl/QuantFailure-v0's settings (conf/env/*.yaml)."""

    batch_size: int = MISSING
    validity_floor: float = MISSING
    penalty: float = MISSING
    split: str = MISSING
    n_envs: int = MISSING
    reference: str = MISSING

    @staticmethod
    def validate(node: Any, at: str = "env") -> None:
        checked_number(node["batch_size"], f"{at}.batch_size", int, low=1)
        checked_number(node["n_envs"], f"{at}.n_envs", int, low=1)
        checked_number(node["validity_floor"], f"{at}.validity_floor", low=0, high=1)
        checked_number(node["penalty"], f"{at}.penalty", low=0)
        _one_of(node["split"], SPLITS, f"{at}.split")
        _one_of(node["reference"], REFERENCES, f"{at}.reference")


@dataclass
class Bits:
    """`bits`: the bit-widths a layer may take and the average a policy may spend (searches'
    `bits` and `joint` spaces, and pairs)."""

    set: list[int] = MISSING
    budget: float = MISSING

    @staticmethod
    def validate(node: Any, at: str = "bits") -> None:
        from qrl.quant.config import MAX_BITS, MIN_BITS

        given = _listed(node, "set", at)
        need = f"{at}.set must be a non-empty list of bit-widths in {MIN_BITS}..{MAX_BITS}"
        try:
            levels = sorted({int(checked_number(b, at, int, low=MIN_BITS)) for b in given})
        except ConfigError:
            raise ConfigError(f"{need}, got {given}") from None
        if not levels or levels[-1] > MAX_BITS:
            raise ConfigError(f"{need}, got {given}")
        checked_number(node["budget"], f"{at}.budget", low=levels[0], high=levels[-1])


@dataclass
class Select:
    """`select`: honest selection, the search's top policies re-scored on fresh batches."""

    fraction: float = MISSING
    candidates: int = MISSING
    split: str = MISSING

    @staticmethod
    def validate(node: Any, at: str = "select") -> None:
        _open_unit(node["fraction"], f"{at}.fraction", " (the budget's share spent re-scoring)")
        checked_number(node["candidates"], f"{at}.candidates", int, low=1)
        _one_of(node["split"], SPLITS, f"{at}.split")


TWIN_STRETCH = ("per_input", "least_starved")  # train.twin_stretch of a pair
AWAY_BITS = ("policy", "assigned")  # train.away_bits of a pair
TWIN_SPARE = ("seen", "either")  # train.twin_spare of a pair


@dataclass
class PairTrain:
    """`train` of a network-policy pair (Stage B, conf/pairs.yaml)."""

    rounds: int = MISSING
    detrimental_rounds_factor: dict[str, float] = MISSING
    net_steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    tau: float = MISSING
    alpha: float = MISSING
    quant_weight: float = MISSING
    keep_weight: Any = MISSING  # auto or a weight
    keep_weights: dict[str, float] = MISSING
    range_grad: bool = MISSING
    away_weight: Any = MISSING  # auto or a weight
    away_weights: dict[str, float] = MISSING
    keep_random: float = MISSING
    keep_floor: int = MISSING
    stretch_layer: Any = MISSING  # auto, null or a layer index
    stretch_layers: dict[str, int] = MISSING
    stretch_weight: float = MISSING
    stretch_ratio: float = MISSING
    twin: Any = MISSING  # null or a finished robust bit-width pair's run dir
    twin_stretch: str = MISSING  # auto | per_input | least_starved
    twin_stretches: dict[str, str] = MISSING
    input_noise: Any = MISSING  # auto or the noise std on a detrimental pair's network steps
    input_noises: dict[str, float] = MISSING
    twin_stretch_layers: dict[str, list[int]] = MISSING
    away_bits: str = MISSING  # auto | policy | assigned
    away_bits_per_model: dict[str, str] = MISSING
    twin_spare: str = MISSING  # auto | seen | either
    twin_spares: dict[str, str] = MISSING

    @staticmethod
    def validate(node: Any, at: str = "train") -> None:
        checked_number(node["rounds"], f"{at}.rounds", int, low=1)
        for model, rounds in node["detrimental_rounds_factor"].items():
            checked_number(rounds, f"{at}.detrimental_rounds_factor.{model}", low=0, strict=True)
        checked_number(node["net_steps"], f"{at}.net_steps", int, low=0)
        checked_number(node["batch_size"], f"{at}.batch_size", int, low=1)
        checked_number(node["tau"], f"{at}.tau", low=0, strict=True)
        checked_number(node["alpha"], f"{at}.alpha", low=0, high=1)
        checked_number(node["lr"], f"{at}.lr", low=0, strict=True)
        for key in ("quant_weight", "weight_decay"):
            checked_number(node[key], f"{at}.{key}", low=0)
        for key, what, high in (
            ("away_weight", "a weight >= 0", None),
            ("keep_weight", "a weight >= 0", None),
            ("input_noise", "a noise std in [0, 1]", 1),
        ):
            _auto_or_number(node, key, at, what, high)
        checked_number(node["stretch_weight"], f"{at}.stretch_weight", low=0)
        layer = node["stretch_layer"]
        if layer not in ("auto", None) and (isinstance(layer, bool) or not isinstance(layer, int)):
            raise ConfigError(
                f"{at}.stretch_layer must be auto, null or a layer index (-1: the head), "
                f"got {layer!r}"
            )
        checked_number(node["keep_random"], f"{at}.keep_random", low=0, high=1)
        checked_number(node["keep_floor"], f"{at}.keep_floor", int, low=2, high=8)
        checked_number(node["stretch_ratio"], f"{at}.stretch_ratio", low=1, strict=True)
        _auto_or_one_of(node, "twin_stretch", "twin_stretches", TWIN_STRETCH, at)
        _auto_or_one_of(node, "away_bits", "away_bits_per_model", AWAY_BITS, at)
        _auto_or_one_of(node, "twin_spare", "twin_spares", TWIN_SPARE, at)
        twin = node["twin"]
        if twin is not None and (not isinstance(twin, str) or not twin):
            raise ConfigError(
                f"{at}.twin must be null or the run dir of a finished robust bit-width pair "
                "(in a sweep whose job dirs are named by their overrides, ${robust_twin:}), "
                f"got {twin!r}"
            )


def _auto_or_one_of(node: Any, key: str, map_key: str, choices: tuple[str, ...], at: str) -> None:
    """`node[key]` is `auto` (the model's entry of `node[map_key]`, each checked) or one of
    `choices`."""
    _one_of(node[key], ("auto", *choices), f"{at}.{key}")
    for model, entry in node[map_key].items():
        _one_of(entry, choices, f"{at}.{map_key}.{model}")


def _auto_or_number(node: Any, key: str, at: str, what: str, high: float | None) -> None:
    """`node[key]` is `auto` (the model's entry of `node[key + "s"]`, each checked) or a
    number >= 0 (and <= `high`)."""
    value = node[key]
    if isinstance(value, str) and value != "auto":
        raise ConfigError(f"{at}.{key} must be auto or {what}, got {value!r}")
    if value != "auto":
        checked_number(value, f"{at}.{key}", low=0, high=high)
    for model, entry in node[f"{key}s"].items():
        checked_number(entry, f"{at}.{key}s.{model}", low=0, high=high)


@dataclass
class SearchStage:
    """reproduce's `search` stage: the agents searched on the first seed's student."""

    agents: list[str] = MISSING
    evaluations: int = MISSING
    overrides: dict[str, Any] = MISSING  # merged over conf/search.yaml

    @staticmethod
    def validate(node: Any, at: str = "search") -> None:
        choices = tuple(sorted(p.stem for p in (CONF_DIR / "agent").glob("*.yaml")))
        agents = _listed(node, "agents", at)
        for agent in agents:
            _one_of(agent, choices, f"{at}.agents[...]")
        if agents:
            checked_number(node["evaluations"], f"{at}.evaluations", int, low=1)


@dataclass
class CrossStage:
    """reproduce's `cross` stage: the fixed per-layer pattern rows of the cross-evaluation."""

    pattern_limit: int = MISSING
    pattern_samples: int = MISSING

    @staticmethod
    def validate(node: Any, at: str = "cross") -> None:
        checked_number(node["pattern_limit"], f"{at}.pattern_limit", int, low=1)
        checked_number(node["pattern_samples"], f"{at}.pattern_samples", int, low=1)


# ConfigStore names (group `schema`): a yaml's defaults list names them `/schema/<name>`.
SCHEMAS: dict[str, type] = {
    "space": Space,
    "env": Env,
    "bits": Bits,
    "select": Select,
    "pair_train": PairTrain,
    "search_stage": SearchStage,
    "cross_stage": CrossStage,
}


def register() -> None:
    """Store every schema in Hydra's ConfigStore (done on import; storing again is harmless)."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(group="schema", name=name, node=node, provider="qrl")


register()


# --- a task's nodes, validated together ---------------------------------------------------------


def validate_search(cfg: DictConfig | Mapping[str, Any], at: str = "") -> None:
    """A search's nodes (`space`, `env`, `select`; `bits` where the space uses bit-widths);
    `at` prefixes the keys named (`search.overrides.` for reproduce's search stage)."""
    Space.validate(cfg["space"], f"{at}space")
    Env.validate(cfg["env"], f"{at}env")
    Select.validate(cfg["select"], f"{at}select")
    if str(cfg["space"]["mode"]) != "input":
        Bits.validate(cfg["bits"], f"{at}bits")


def validate_pairs(cfg: DictConfig | Mapping[str, Any]) -> None:
    """A pair's nodes (`train`, `bits`)."""
    PairTrain.validate(cfg["train"])
    Bits.validate(cfg["bits"])


def validate_reproduce(cfg: DictConfig | Mapping[str, Any]) -> None:
    """reproduce's own stage nodes (`search`, `cross`); the others are their stage's config."""
    SearchStage.validate(cfg["search"])
    CrossStage.validate(cfg["cross"])


# --- one line for a value of the wrong type -----------------------------------------------------


def _expected(annotation: Any) -> str:
    """A field's type in words: `int`, `a list of int`, `true or false`."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return f"a list of {_expected(typing.get_args(annotation)[0])}"
    if origin is dict or annotation is dict:
        return "a mapping"
    if annotation is bool:
        return "true or false"
    return getattr(annotation, "__name__", str(annotation))


def field_type(cfg: Any, key: str) -> tuple[type, str] | None:
    """(schema, field) when `key` names a field of a typed node of `cfg`."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    if not isinstance(node, DictConfig):
        return None
    schema = OmegaConf.get_type(node)
    if not (isinstance(schema, type) and is_dataclass(schema)):
        return None
    if leaf not in {f.name for f in fields(schema)}:
        return None
    return schema, leaf


def refused(cfg: Any, key: str, value: Any, shown: str = "") -> ConfigError | None:
    """The one line for `key=value` that OmegaConf set but the schema does not take: a scalar
    or null for a list or mapping field (a node typed after `_self_` keeps its containers'
    own types); None when the value fits."""
    typed = field_type(cfg, key)
    if typed is None:
        return None
    annotation = typing.get_type_hints(typed[0])[typed[1]]
    container = typing.get_origin(annotation) or annotation
    if container in (list, dict) and not isinstance(value, container):
        return ConfigError(f"{shown or key} must be {_expected(annotation)}, got {value!r}")
    return None


def value_error(cfg: Any, key: str, value: Any, exc: Exception, shown: str = "") -> ConfigError:
    """The one line for `key=value` that the schema of `cfg`'s node refused (`exc`)."""
    shown = shown or key
    typed = field_type(cfg, key)
    if typed is None:  # below a field (`bits.set.0`) or a whole node: OmegaConf's first line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ConfigError(f"bad value for {shown}: {reason}")
    schema, leaf = typed
    expected = _expected(typing.get_type_hints(schema)[leaf])
    return ConfigError(f"{shown} must be {expected}, got {value!r}")


def merged(base: DictConfig, *others: Any, at: str = "") -> DictConfig:
    """`OmegaConf.merge(base, *others)`; a value that a typed node of `base` refuses is one
    `ConfigError` naming its key (prefixed with `at`, e.g. `pairs.`)."""
    from omegaconf.errors import ValidationError

    try:
        result = OmegaConf.merge(base, *others)
    except ValidationError as exc:
        key, value = str(exc.full_key), exc.value
        raise value_error(base, key, value, exc, shown=f"{at}{key}") from None
    assert isinstance(result, DictConfig)
    return result  # a scalar for a list field: the node's `validate` says so
