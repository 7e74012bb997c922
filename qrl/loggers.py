"""Metric logging: a CSV file and TensorBoard always; Weights & Biases when asked for.

W&B runs offline unless the user sets `WANDB_MODE=online`, and a run that crashes still
finishes its W&B run (with a non-zero exit code), so no multirun job leaves one open.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from omegaconf import DictConfig


class RunLogger:
    """Logs scalar metrics to `<run_dir>/log.csv`, `<run_dir>/tb/` and optionally W&B.

    Use as a context manager so that every sink is closed, also when the run fails.

    Args:
        run_dir: the task's run directory.
        cfg: the `logger` config group (`wandb`, `project`, `entity`, `tags`, `group`).
        config: the full run config, recorded by W&B.
        name: a run name for W&B.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        cfg: DictConfig | Mapping[str, Any] | None = None,
        config: DictConfig | Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        opts: Mapping[str, Any] = cfg if cfg is not None else {}
        self._csv_file = open(self.run_dir / "log.csv", "a", newline="")  # noqa: SIM115
        self._csv = csv.writer(self._csv_file)
        if self._csv_file.tell() == 0:
            self._csv.writerow(["step", "key", "value"])
        self.tb = SummaryWriter(str(self.run_dir / "tb"))
        self.wandb_run: Any = None
        if opts.get("wandb", False):
            self.wandb_run = _start_wandb(self.run_dir, opts, config, name)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar metrics at `step` (keys are namespaced, e.g. `teacher/loss`)."""
        for key, value in metrics.items():
            self._csv.writerow([step, key, float(value)])
            self.tb.add_scalar(key, float(value), step)
        self._csv_file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: float(v) for k, v in metrics.items()}, step=step)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Record a run's final numbers (W&B summary; the caller writes metrics.json)."""
        if self.wandb_run is not None:
            self.wandb_run.summary.update(dict(metrics))

    def close(self, failed: bool = False) -> None:
        self.tb.close()
        self._csv_file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if failed else 0)
            self.wandb_run = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(failed=exc_type is not None)


def _start_wandb(
    run_dir: Path,
    opts: Mapping[str, Any],
    config: DictConfig | Mapping[str, Any] | None,
    name: str | None,
) -> Any:
    import wandb

    from qrl.config import to_dict

    # No network is the common case on research machines: offline unless asked otherwise.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(
        project=opts.get("project", "qrl"),
        entity=opts.get("entity"),
        group=opts.get("group"),
        tags=list(opts.get("tags") or []),
        name=name,
        dir=str(run_dir),
        config=to_dict(config),
        reinit="finish_previous",
        sync_tensorboard=False,
    )
