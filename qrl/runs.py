"""Run directories: seeding, atomic writes, and the `metrics.json` that marks a finished run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

import qrl
from qrl.model_defaults import resolved

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"

# Top-level config keys that cannot change a run's results: a rerun that differs only in these
# resumes the run in its dir (`logger` chooses where metrics go, not what they are).
# `device` chooses where a run computes: a CPU run resumes on a GPU (and runs from before the key
# existed still resume).
NON_RESULT_KEYS = frozenset({"out", "progress", "resume", "overwrite", "logger", "device", "jobs"})
# The `train` keys of `qrl.pairs` that only the detrimental kind reads (conf/pairs.yaml).
DETRIMENTAL_TRAIN_KEYS = frozenset(
    {
        "away_weight",
        "away_weights",
        "keep_weight",
        "keep_weights",
        "keep_random",
        "keep_floor",
        "stretch_layer",
        "stretch_layers",
        "stretch_weight",
        "stretch_ratio",
        "twin",
        "twin_stretch",
        "twin_stretches",
        "twin_stretch_layers",
        "input_noise",
        "input_noises",
        "away_bits",
        "away_bits_per_model",
        "twin_spare",
        "twin_spares",
        "detrimental_rounds_factor",
    }
)
# The `train` maps of `qrl.pairs` keyed by the student's class: a pair reads its own entry
# (and those of `qrl.model_defaults.AUTO_KEYS`, where their key is `auto`).
PER_MODEL_TRAIN_KEYS = (
    "stretch_layers",
    "twin_stretch_layers",
    "detrimental_rounds_factor",
)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that one seed gives one result."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@cache
def git_sha() -> str:
    """The commit of the qrl checkout that runs, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(qrl.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Write a file through a temporary sibling and rename it, so readers never see half a file.

    Args:
        path: final location.
        write: called with the temporary path; must create the file there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@cache
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """`torch.save` that leaves either the old file or the complete new one."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def save_config(run_dir: str | os.PathLike[str], cfg: Any) -> Path:
    """Save the run's resolved config as `config.yaml`, so later tasks can rebuild its inputs."""
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(cfg, resolve=True)
    return atomic_write(Path(run_dir) / CONFIG_FILE, lambda tmp: _write_text(tmp, text))


def load_run_config(run_dir: str | os.PathLike[str]) -> Any:
    """The `config.yaml` that a qrl task saved in its run dir."""
    from omegaconf import OmegaConf

    from qrl.errors import ConfigError

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: {run_dir} is not a qrl run dir")
    return OmegaConf.load(path)


def start_run(cfg: Any) -> tuple[Path, float]:
    """What every task does first, after validating its values: claim `cfg.out` for the config.

    A run dir belongs to one resolved config (less `NON_RESULT_KEYS`). The same config resumes
    the run there; another one stops with a `ConfigError` naming the differing keys, before
    anything is written, unless `overwrite=true` (the run then starts afresh: `resume` is
    turned off). Only then is a previous result removed, the config saved and everything seeded.

    Returns:
        (run dir, start time for `write_metrics`).
    """
    from omegaconf import OmegaConf, open_dict

    from qrl.errors import ConfigError

    started = time.perf_counter()
    out = Path(cfg.out)
    new = _result_config(cfg)
    if (out / CONFIG_FILE).is_file():
        try:
            old = _result_config(OmegaConf.load(out / CONFIG_FILE))
        except Exception as exc:  # any unreadable config.yaml: not one this config can resume
            raise ConfigError(
                f"{out / CONFIG_FILE} cannot be read ({type(exc).__name__}): choose another out "
                "dir, or pass overwrite=true to replace what is there"
            ) from exc
        changes = config_changes(old, new)
        if changes and not bool(cfg.get("overwrite", False)):
            raise ConfigError(
                f"{out} holds a run of another config ({'; '.join(changes)}): rerun with the "
                "same config to resume it, choose another out dir, or pass overwrite=true"
            )
        if changes and "resume" in cfg:
            with open_dict(cfg):
                cfg.resume = False  # overwriting: nothing of the other config's run is reused
    out.mkdir(parents=True, exist_ok=True)
    # A rerun into the same dir replaces the result: until it finishes, the dir is unfinished.
    (out / METRICS_FILE).unlink(missing_ok=True)
    save_config(out, cfg)
    seed_everything(int(cfg.seed))
    return out, started


def finished_run_of(run_dir: str | os.PathLike[str], cfg: Any) -> bool:
    """Whether `run_dir` holds a finished run (`metrics.json`) of `cfg`'s config, less
    `NON_RESULT_KEYS`: the run that `start_run(cfg)` would resume there, already done."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file() or not (run_dir / CONFIG_FILE).is_file():
        return False
    try:
        old = _result_config(OmegaConf.load(run_dir / CONFIG_FILE))
    except Exception:  # an unreadable config.yaml: not a run of this config
        return False
    return not config_changes(old, _result_config(cfg))


def _pair_result_keys(cfg: dict[str, Any]) -> dict[str, Any]:
    """A bit-width pair's `train` and `victim` as far as they can change it: a robust pair reads
    none of the detrimental pair's terms, and a pair reads only its own student's entry of the
    per-model maps (an `auto` key, its entry's value). So changing another model's default, a
    value into `auto` that reads it, or adding a detrimental term, leaves its runs to resume."""
    train, victim = dict(cfg.get("train") or {}), dict(cfg.get("victim") or {})
    if cfg.get("kind") == "robust":
        train = {k: v for k, v in train.items() if k not in DETRIMENTAL_TRAIN_KEYS}
    elif train:
        # Pairs saved before these keys existed ran what their defaults do.
        train.setdefault("twin_stretch", "least_starved")
        train.setdefault("input_noise", 0.0)
        train.setdefault("away_bits", "policy")
        train.setdefault("twin_spare", "seen")
        train.setdefault("detrimental_rounds_factor", {})
    # Runs saved before `student_class` was recorded: a cached victim's class from its config.
    student = victim.pop("student_class", None) or _cached_student_class(victim)
    if student is not None:
        train = resolved(train, student)
        for key in PER_MODEL_TRAIN_KEYS:
            if isinstance(train.get(key), dict):
                train[key] = train[key].get(student)
    return {"train": train, "victim": victim}


def _cached_student_class(victim: dict[str, Any]) -> str | None:
    """The student class of the cached digits victim `victim.model` (None: another victim)."""
    from omegaconf import OmegaConf

    from qrl.specs import CONF_DIR

    path = CONF_DIR / "model" / f"{victim.get('model')}.yaml"
    if victim.get("run") is not None or not path.is_file():
        return None
    return str(OmegaConf.load(path).student["_target_"]).rsplit(".", 1)[-1]


def _result_config(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data, less the keys that cannot change results."""
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    assert isinstance(plain, dict)
    kept = {str(k): v for k, v in plain.items() if k not in NON_RESULT_KEYS}
    agent = kept.get("agent")
    if isinstance(agent, dict) and isinstance(agent.get("model"), dict):
        # Where SB3 computes, like `device`: runs saved with `cpu` resume under `auto`.
        model = {k: v for k, v in agent["model"].items() if k != "device"}
        kept["agent"] = {**agent, "model": model}
    space = kept.get("space")
    if isinstance(space, dict) and "bits_set" in space:
        # Searches saved before their bits moved to `bits.set` / `bits.budget` (the names of
        # `qrl.pairs`) resume under the new names; the benchmark has no bit-width half.
        legacy = {"set": space.get("bits_set"), "budget": space.get("bits_budget")}
        kept["space"] = {k: v for k, v in space.items() if k not in ("bits_set", "bits_budget")}
        if kept.get("task") != "bench":
            kept.setdefault("bits", legacy)
    victim = kept.get("victim")
    if isinstance(victim, dict) and "model" not in victim:
        # Runs saved before `victim.model` existed used the cached CNN: they resume under it.
        kept["victim"] = {**victim, "model": "cnn"}
    if kept.get("task") == "pairs":
        kept.update(_pair_result_keys(kept))
    return kept


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 6) -> list[str]:
    """`key: old -> new` for every dotted key whose value differs (at most `limit`, then a count).

    `_target_` values are shortened to their class name (`qrl.models.MLP` -> `MLP`).
    """
    a, b = flatten(old), flatten(new)
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            shown = ["(absent)" if v is missing else _short(key, v) for v in (va, vb)]
            lines.append(f"{key}: {shown[0]} -> {shown[1]}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"and {len(lines) - limit} more"]
    return lines


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as `{"a.b.c": leaf}` (lists and empty mappings are leaves)."""
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for k, v in value.items():
            flat.update(flatten(v, f"{prefix}{k}."))
        return flat
    return {prefix[:-1]: value}


def _short(key: str, value: Any) -> str:
    if key.endswith("_target_") and isinstance(value, str):
        return value.rsplit(".", 1)[-1]
    return str(value)


def write_metrics(
    run_dir: str | os.PathLike[str], metrics: Mapping[str, Any], *, seed: int, started: float
) -> dict[str, Any]:
    """Write `metrics.json` atomically, with the provenance keys every task records.

    Call this last: its presence is what marks a run as finished.

    Args:
        run_dir: the task's run directory.
        metrics: the task's own numbers (fractions in [0, 1] for accuracies).
        seed: the run's seed.
        started: `time.perf_counter()` at the start of the task.
    """
    record = dict(_jsonable(metrics))
    record.update(
        seed=seed,
        git_sha=git_sha(),
        wall_time_s=round(time.perf_counter() - started, 3),
        qrl_version=qrl.__version__,
    )
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(run_dir) / METRICS_FILE, lambda tmp: _write_text(tmp, text))
    return record


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def read_metrics(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a finished run's `metrics.json`."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run did not finish")
    return dict(json.loads(path.read_text()))
