"""Multirun sweeps that survive a bad job: the others run, the failure is recorded and named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qrl import report
from qrl.cli import EXIT_JOBS_FAILED
from qrl.runs import CONFIG_FILE, METRICS_FILE
from qrl.sweeps import FAILURE_FILE, OVERRIDES_FILE, read_overrides
from tests.conftest import FAST_SEARCH, run_at_once

# A search small enough for a sweep of three jobs in a test.
TINY_SEARCH = [*FAST_SEARCH, "budget.evaluations=8"]


@pytest.fixture
def victim(quick_run: Path) -> Path:
    return quick_run


def sweep(victim: Path, sweep_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m qrl.search -m ...` into `sweep_dir`."""
    where = [f"victim.run={victim}", f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(
        [sys.executable, "-m", "qrl.search", "-m", *where, *TINY_SEARCH, *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _one_invalid_job(victim: Path, sweep_dir: Path, *args: str) -> list[Path]:
    """Sweep three references, the middle one unknown: it fails inside the search. Checks
    that it fails alone, is recorded and named, and that the others finish; returns the jobs.
    """
    # Three parallel jobs (the default launcher, joblib, with one job per CPU otherwise).
    references = "env.reference=teacher,nobody,student"
    result = sweep(victim, sweep_dir, references, "hydra.launcher.n_jobs=3", *args)
    assert result.returncode == EXIT_JOBS_FAILED  # the sweep finished; one of its jobs failed
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: p.name)
    assert [p.name[:2] for p in jobs] == ["0_", "1_", "2_"]  # one flat dir per job
    references = [_value(read_overrides(job), "env.reference") for job in jobs]
    assert references == ["teacher", "nobody", "student"]
    good, bad = [jobs[0], jobs[2]], jobs[1]
    for job in good:  # the job after the failed one ran too
        assert (job / METRICS_FILE).is_file() and not (job / FAILURE_FILE).exists()
    assert not (bad / METRICS_FILE).exists()
    failure = json.loads((bad / FAILURE_FILE).read_text())
    # The schema refuses the value before the job's run starts: no config.yaml is written.
    assert not (bad / CONFIG_FILE).exists()
    assert _value(failure["overrides"], "env.reference") == "nobody" and failure["job"] == 1
    assert failure["error"] == "ConfigError" and "nobody" in failure["message"]
    assert "Traceback" in failure["traceback"]
    # The end of stderr names the failed job, and only it.
    _, *named = result.stderr[result.stderr.index("error: 1 sweep job(s)") :].splitlines()
    assert len(named) == 1 and named[0].startswith(f"  #1 {bad}: ConfigError: ")
    assert "env.reference=nobody" in bad.name
    # qrl.report groups the finished jobs by the swept key and names the failed one.
    scanned = report.scan_runs(sweep_dir)
    assert [r["run_dir"] for r in scanned["failed"]] == [str(bad)]
    keys, groups = report.group_runs(scanned["finished"])
    assert keys == ["env.reference"] and sorted(groups) == [("student",), ("teacher",)]
    return jobs


def test_one_invalid_job_fails_alone_and_is_named(victim: Path, tmp_path: Path) -> None:
    jobs = _one_invalid_job(victim, tmp_path)
    assert not any((job / "wandb").exists() for job in jobs)  # W&B only when asked for
    # The CSV log in every job that started (the schema refused the middle one before).
    assert [(job / "log.csv").is_file() for job in jobs] == [True, False, True]


# The same sweep with W&B: slow, since W&B waits ~10 s before it finishes a run whose only
# TensorBoard dir is qrl's. That a search failing after W&B started still finishes its W&B run
# (exit code 1) is checked in `make test` by tests/test_search.py and tests/test_loggers.py.
@pytest.mark.slow
def test_one_invalid_job_fails_alone_and_finishes_its_wandb_run(
    victim: Path, tmp_path: Path
) -> None:
    # The middle job is refused by the config schema before its run starts: it opens no W&B
    # run; the others finish theirs with exit code 0.
    jobs = _one_invalid_job(victim, tmp_path, "logger=wandb")
    assert not list(jobs[1].glob("wandb/offline-run-*"))
    for job in (jobs[0], jobs[2]):
        (log,) = job.glob("wandb/offline-run-*/logs/debug.log")
        assert "got exitcode: 0" in log.read_text(), job.name


def test_a_rerun_that_succeeds_clears_the_failure(victim: Path, tmp_path: Path) -> None:
    same_dir = "hydra.sweep.subdir=job0"  # both attempts write the same job dir
    # One job a sweep: Hydra's basic launcher runs it in the sweep's own process (joblib's,
    # the default, is tested above).
    basic = "hydra/launcher=basic"
    first = sweep(victim, tmp_path, "budget.evaluations=abc", same_dir, basic)
    assert first.returncode != 0
    (job,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (
        "budget.evaluations must be int" in json.loads((job / FAILURE_FILE).read_text())["message"]
    )
    assert (job / OVERRIDES_FILE).is_file()
    again = sweep(victim, tmp_path, "budget.evaluations=8", same_dir, basic)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (job / METRICS_FILE).is_file() and not (job / FAILURE_FILE).exists()
    assert _value(read_overrides(job), "budget.evaluations") == "8"


def _value(overrides: list[str] | None, key: str) -> str | None:
    """The value `key=...` takes in a list of overrides."""
    for item in overrides or []:
        name, _, value = item.partition("=")
        if name == key:
            return value
    return None


def test_a_single_run_records_its_overrides_only_when_it_finishes(
    victim: Path, tmp_path: Path
) -> None:
    def single(out: Path, *args: str) -> list[str]:
        where = [f"victim.run={victim}", f"hydra.run.dir={out}"]
        return [sys.executable, "-m", "qrl.search", *where, *TINY_SEARCH, *args]

    bad, good = run_at_once(
        single(tmp_path / "bad", "eval.samples=0"), single(tmp_path / "good", "seed=3")
    )
    assert bad.returncode == 2 and "eval.samples must be >= 1" in bad.stderr
    assert not (tmp_path / "bad" / OVERRIDES_FILE).exists()  # no record of a run that was not
    assert not (tmp_path / "bad" / FAILURE_FILE).exists()  # a single run says why on stderr
    assert good.returncode == 0, good.stderr[-2000:]
    assert _value(read_overrides(tmp_path / "good"), "seed") == "3"


def test_robust_twin_names_the_sibling_job_of_a_sweep_named_by_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    def job_in(name: str) -> None:
        runtime = SimpleNamespace(output_dir=str(tmp_path / "sweep" / name))
        monkeypatch.setattr(
            HydraConfig, "get", staticmethod(lambda: SimpleNamespace(runtime=runtime))
        )

    monkeypatch.chdir(tmp_path)
    job_in("bits.budget=3.0,kind=detrimental,seed=1")
    cfg = OmegaConf.create({"train": {"twin": "${robust_twin:}"}})
    assert cfg.train.twin == str(Path("sweep") / "bits.budget=3.0,kind=robust,seed=1")
    job_in("2026-12-01_02-00-45")  # a single run's dir: no sibling by name
    assert cfg.train.twin == ""  # which train.twin refuses (tests/test_pairs.py)
