"""Hydra multirun sweeps that survive a bad job.

Each job of a sweep records, in its own dir, the overrides that made it (`overrides.yaml`, what
`qrl.report` groups by) and, when it fails, why (`failure.json`). The failed job still raises, so
every launcher (basic, joblib, Ray, submitit) marks it failed; the sweeper has by then run the
other jobs of the batch. At the end `report_sweep_failures` names the failed jobs and the
command exits 3 (`qrl.cli.EXIT_JOBS_FAILED`).

Run dirs of one config are not changed by a failed job: `overrides.yaml` is written at the start
of a sweep's job only into a dir without a finished run, and otherwise only after a success (a
single run that fails leaves none).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from qrl.devices import resolve_device
from qrl.runs import METRICS_FILE, atomic_write

FAILURE_FILE = "failure.json"
OVERRIDES_FILE = "overrides.yaml"


class JobFailed(RuntimeError):
    """A sweep job failed; its `failure.json` holds the error and the traceback."""


def robust_twin_dir() -> str:
    """`${robust_twin:}`, for `train.twin` of a detrimental pair in a sweep whose job dirs are
    named by their overrides (`hydra.sweep.subdir=${hydra.job.override_dirname}`): this job's
    dir with `kind=robust`, where the same sweep with `kind=robust` trained its twin. Empty
    (which `train.twin` refuses, saying what to give) for a job dir named otherwise."""
    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    parts = out.name.split(",")
    if "kind=detrimental" not in parts:
        return ""
    twin = out.with_name(",".join("kind=robust" if p == "kind=detrimental" else p for p in parts))
    # Relative where it can be, like the sweep dir it was given: a moved checkout still resumes.
    return str(twin.relative_to(Path.cwd())) if twin.is_relative_to(Path.cwd()) else str(twin)


OmegaConf.register_new_resolver("robust_twin", robust_twin_dir, replace=True)


@dataclass(frozen=True)
class Job:
    """The Hydra job that is running: its number, dir and command-line overrides."""

    num: int
    out: Path
    overrides: list[str]
    multirun: bool

    @property
    def label(self) -> str:
        return f"#{self.num} ({' '.join(self.overrides) or 'no overrides'})"


def current_job() -> Job | None:
    """The running Hydra job, or None outside one (a test calling `run(cfg)` directly)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return Job(
        num=int(hc.job.num) if multirun else 0,  # a single run has no job number
        out=Path(hc.runtime.output_dir),
        overrides=[str(o) for o in hc.overrides.task],
        multirun=multirun,
    )


def write_overrides(out: Path, overrides: list[str]) -> None:
    """Record a job's overrides as Hydra would in `.hydra/overrides.yaml` (a YAML list)."""
    text = "".join(f"- {json.dumps(o)}\n" for o in overrides) or "[]\n"
    atomic_write(out / OVERRIDES_FILE, lambda tmp: tmp.write_text(text))


def read_overrides(run_dir: Path) -> list[str] | None:
    """A run dir's recorded overrides, or None when it has none (a run from before them)."""
    from omegaconf import OmegaConf

    path = run_dir / OVERRIDES_FILE
    if not path.is_file():
        return None
    return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path))]  # type: ignore[union-attr]


def record_failure(job: Job, exc: BaseException) -> Path:
    """Write `failure.json` beside the job's config: what failed, why, and its overrides."""
    record = {
        "job": job.num,
        "overrides": job.overrides,
        "error": type(exc).__name__,
        "message": str(exc),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    text = json.dumps(record, indent=2) + "\n"
    return atomic_write(job.out / FAILURE_FILE, lambda tmp: tmp.write_text(text))


def read_failure(run_dir: Path) -> dict[str, Any] | None:
    """A job dir's `failure.json`, or None."""
    path = run_dir / FAILURE_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else None


def threads_per_job(n_jobs: int, cpus: int) -> int:
    """Torch threads for each of `n_jobs` local parallel jobs (joblib's -1: one per CPU), so
    that together they use the CPUs once instead of each taking all of them."""
    parallel = cpus if n_jobs < 0 else min(max(n_jobs, 1), cpus)
    return max(1, cpus // parallel)


def _share_cpus() -> None:
    """In a job of the joblib launcher, take this job's share of the CPUs for torch."""
    import os

    import torch
    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().launcher
    if str(launcher.get("_target_", "")).endswith("JoblibLauncher"):
        torch.set_num_threads(threads_per_job(int(launcher.get("n_jobs", -1)), os.cpu_count() or 1))


def run_job(run: Callable[[DictConfig], Any], cfg: DictConfig, job: Job) -> Any:
    """Run one job of a Hydra app, recording its overrides and, if it fails, its failure.

    In a multirun, any exception is recorded in `failure.json`, printed as one line, and
    raised again as `JobFailed` so that the launcher marks the job failed and the sweeper goes
    on with the other jobs. A success removes a failure left by an earlier attempt.
    """
    if job.multirun:
        _share_cpus()
        if not (job.out / METRICS_FILE).is_file():  # a job that dies still shows what it was
            write_overrides(job.out, job.overrides)
    try:
        result = run(cfg)
    except Exception as exc:
        if not job.multirun:
            raise
        path = record_failure(job, exc)
        print(f"error: job {job.label} failed: {exc} (recorded in {path})", file=sys.stderr)
        raise JobFailed(f"job {job.label} failed: {type(exc).__name__}: {exc}") from exc
    (job.out / FAILURE_FILE).unlink(missing_ok=True)
    write_overrides(job.out, job.overrides)
    return result


# --- the sweep as a whole (the process that launches the jobs) -----------------------------

_SWEEPS: list[tuple[Path, float]] = []  # (sweep dir, start time) of this process's multiruns


class SweepCallback(Callback):
    """Hydra callback (conf/hydra/default.yaml): remembers where each multirun writes its jobs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _SWEEPS.append((Path(str(config.hydra.sweep.dir)).resolve(), time.time() - 1.0))


def sweep_failures() -> list[tuple[Path, dict[str, Any]]]:
    """(job dir, failure record) of every job that failed in this process's sweeps."""
    found = []
    for sweep_dir, started in _SWEEPS:
        for path in sorted(sweep_dir.rglob(FAILURE_FILE)):
            if path.stat().st_mtime >= started:  # not a failure left by an earlier sweep
                found.append((path.parent, json.loads(path.read_text())))
    return found


def report_sweep_failures() -> int:
    """Print one line per failed job of this process's sweeps; returns how many failed.

    A job is named by its number and dir (Hydra's `sweep.subdir`: its overrides, paths left
    out); its `failure.json` holds every override and the traceback.
    """
    failures = sweep_failures()
    if failures:
        print(
            f"error: {len(failures)} sweep job(s) failed; the others ran "
            "(`python -m qrl.report <sweep dir>` lists them):",
            file=sys.stderr,
        )
        for job_dir, record in failures:
            print(
                f"  #{record.get('job')} {job_dir}: {record.get('error')}: {record.get('message')}",
                file=sys.stderr,
            )
    return len(failures)


def task_device(cfg: Any) -> Any:
    """The torch device of a task's config (`device`, default `auto`), for the job running it:
    job k of a local multirun gets GPU k mod #GPUs (`qrl.devices.resolve_device`)."""
    job = current_job()
    spec = cfg.get("device", "auto") if hasattr(cfg, "get") else "auto"
    return resolve_device(spec, job_num=job.num if job is not None and job.multirun else None)
