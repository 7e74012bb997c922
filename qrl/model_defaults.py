"""A pair's per-model defaults: `train` keys that read `auto` take the student's own entry.

Each such key has a map keyed by the student's class (conf/pairs.yaml): `keep_weight: auto`
reads `keep_weights[model]`, and a class without an entry gets the key's fallback. So a
setting one architecture needs lives in `conf/` as that model's default, and a value given on
the command line still wins for every model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_AWAY_WEIGHT = 0.5  # `train.away_weight: auto` for a model without its own
# key -> (its map, keyed by the student's class; the value for a class without an entry)
AUTO_KEYS: dict[str, tuple[str, Any]] = {
    "away_weight": ("away_weights", DEFAULT_AWAY_WEIGHT),
    "keep_weight": ("keep_weights", 1.0),
    "input_noise": ("input_noises", 0.0),
    "twin_stretch": ("twin_stretches", "least_starved"),
    "away_bits": ("away_bits_per_model", "policy"),
    "twin_spare": ("twin_spares", "seen"),
}


def model_setting(train: Mapping[str, Any], key: str, model: str) -> Any:
    """`train[key]` for the student class `model`: with `auto`, its entry of the key's map,
    else the key's fallback (also where `train` lacks the key: a run saved before it)."""
    map_key, fallback = AUTO_KEYS[key]
    value = train.get(key, fallback)
    if value == "auto":
        value = (train.get(map_key) or {}).get(model, fallback)
    return value


def resolved(train: Mapping[str, Any], model: str) -> dict[str, Any]:
    """`train` as the student class `model` reads it: each `auto` key given its value and
    every map of `AUTO_KEYS` dropped, so that two configs compare equal where they train
    alike (an explicit 1.0 and an `auto` that reads 1.0)."""
    out = {k: v for k, v in train.items() if k not in {m for m, _ in AUTO_KEYS.values()}}
    for key in AUTO_KEYS:
        if key in train:
            out[key] = model_setting(train, key, model)
    return out
