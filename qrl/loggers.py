"""Metric logging: a CSV file and TensorBoard always; Weights & Biases when asked for.

W&B runs offline unless the user sets `WANDB_MODE=online`, and a run that crashes still
finishes its W&B run (with a non-zero exit code), so no multirun job leaves one open.
"""

from __future__ import annotations

import csv
import os
import shutil
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
        fresh: start `log.csv` and `tb/` afresh instead of continuing them (a task that does
            not resume mid-way, like the search, reruns from its first step).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        cfg: DictConfig | Mapping[str, Any] | None = None,
        config: DictConfig | Mapping[str, Any] | None = None,
        name: str | None = None,
        *,
        fresh: bool = False,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            (self.run_dir / "log.csv").unlink(missing_ok=True)
            shutil.rmtree(self.run_dir / "tb", ignore_errors=True)
        opts: Mapping[str, Any] = cfg if cfg is not None else {}
        self.wandb_run: Any = None
        if opts.get("wandb", False):
            # Before any SummaryWriter exists: W&B then mirrors every TensorBoard log of the
            # run (ours and SB3's), which is how the SB3 integration reports training metrics.
            self.wandb_run = _start_wandb(self.run_dir, opts, config, name)
        self._csv_file = open(self.run_dir / "log.csv", "a", newline="")  # noqa: SIM115
        self._csv = csv.writer(self._csv_file)
        if self._csv_file.tell() == 0:
            self._csv.writerow(["step", "key", "value"])
        self._earlier_events = _event_files(self.run_dir / "tb")  # an earlier attempt's
        self.tb = SummaryWriter(str(self.run_dir / "tb"))

    def rewind(self, step: int) -> None:
        """Forget what an earlier, interrupted attempt logged at `step` or later.

        A run that resumes at `step` calls this, so that `log.csv` holds each step once and
        TensorBoard drops the stale events (`purge_step`).
        """
        from torch.utils.tensorboard import SummaryWriter

        path = self.run_dir / "log.csv"
        self._csv_file.close()
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [r for r in rows[1:] if r and int(float(r[0])) < step]
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([["step", "key", "value"], *kept])
        self._csv_file = open(path, "a", newline="")  # noqa: SIM115
        self._csv = csv.writer(self._csv_file)
        self.tb.close()
        _wait_past(self._earlier_events)
        self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=step)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar metrics at `step` (keys are namespaced, e.g. `teacher/loss`).

        W&B receives them through its TensorBoard mirror, not a second time here.
        """
        for key, value in metrics.items():
            self._csv.writerow([step, key, float(value)])
            self.tb.add_scalar(key, float(value), step)
        self._csv_file.flush()

    def sb3_callbacks(self) -> list[Any]:
        """Stable-Baselines3 callbacks for this run: the W&B integration's, when W&B is on."""
        if self.wandb_run is None:
            return []
        from wandb.integration.sb3 import WandbCallback

        return [WandbCallback(verbose=0)]

    def log_image(self, key: str, path: Path) -> None:
        """Attach a picture to the W&B run (it already lies in the run dir)."""
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Image(str(path))})

    def log_artifact(self, name: str, kind: str, paths: list[Path]) -> None:
        """Store files as one W&B artifact (e.g. the failure archive)."""
        if self.wandb_run is not None:
            import wandb

            artifact = wandb.Artifact(name, type=kind)
            for path in paths:
                artifact.add_file(str(path))
            self.wandb_run.log_artifact(artifact)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Record a run's final numbers (W&B summary; the caller writes metrics.json)."""
        if self.wandb_run is not None:
            self.wandb_run.summary.update(
                {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
            )

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

    from qrl.specs import to_dict

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
        sync_tensorboard=True,
    )


def _event_files(tb_dir: Path) -> list[Path]:
    return sorted(tb_dir.glob("events.out.tfevents.*"))


def _wait_past(files: list[Path]) -> None:
    """Sleep into the second after the newest of the TensorBoard event `files`.

    TensorBoard applies a purge step to the files that sort before it, and a file's name is
    `events.out.tfevents.<second>.<host>.<pid>.<counter>`, the counter sorting as text (10
    before 9): a purging file written in the same second as the events it purges, by the same
    process, may sort before them (measured: a resumed run's stale steps came back). A file
    of a later second sorts after them all.
    """
    import time

    seconds = [int(f.name.split(".")[3]) for f in files if f.name.split(".")[3].isdigit()]
    if seconds and max(seconds) >= int(time.time()):
        time.sleep(max(seconds) + 1 - time.time())
