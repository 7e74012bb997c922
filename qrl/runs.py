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

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"


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
    """What every task does first: create `cfg.out`, save the config there, seed everything.

    Returns:
        (run dir, start time for `write_metrics`).
    """
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # A rerun into the same dir replaces the result: until it finishes, the dir is unfinished.
    (out / METRICS_FILE).unlink(missing_ok=True)
    save_config(out, cfg)
    seed_everything(int(cfg.seed))
    return out, started


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
