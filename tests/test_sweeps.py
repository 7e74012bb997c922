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
from tests.conftest import FAST_SEARCH

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


def test_one_invalid_job_fails_alone_and_is_named(victim: Path, tmp_path: Path) -> None:
    # The middle job's reference is unknown: it fails inside the search, after W&B started.
    result = sweep(victim, tmp_path, "env.reference=teacher,nobody,student", "logger=wandb")
    assert result.returncode == EXIT_JOBS_FAILED  # the sweep finished; one of its jobs failed
    jobs = sorted((p for p in tmp_path.iterdir() if p.is_dir()), key=lambda p: p.name)
    assert [p.name[:2] for p in jobs] == ["0_", "1_", "2_"]  # one flat dir per job
    references = [_value(read_overrides(job), "env.reference") for job in jobs]
    assert references == ["teacher", "nobody", "student"]
    good, bad = [jobs[0], jobs[2]], jobs[1]
    for job in good:  # the job after the failed one ran too
        assert (job / METRICS_FILE).is_file() and not (job / FAILURE_FILE).exists()
    assert not (bad / METRICS_FILE).exists()
    failure = json.loads((bad / FAILURE_FILE).read_text())
    assert (bad / CONFIG_FILE).is_file()  # the failure file lies beside its config
    assert _value(failure["overrides"], "env.reference") == "nobody" and failure["job"] == 1
    assert failure["error"] == "ConfigError" and "nobody" in failure["message"]
    assert "Traceback" in failure["traceback"]
    # The end of stderr names the failed job, and only it.
    _, *named = result.stderr[result.stderr.index("error: 1 sweep job(s)") :].splitlines()
    assert len(named) == 1 and named[0].startswith(f"  #1 {bad}: ConfigError: ")
    assert "env.reference=nobody" in bad.name
    # qrl.report groups the finished jobs by the swept key and names the failed one.
    scanned = report.scan_runs(tmp_path)
    assert [r["run_dir"] for r in scanned["failed"]] == [str(bad)]
    keys, groups = report.group_runs(scanned["finished"])
    assert keys == ["env.reference"] and sorted(groups) == [("student",), ("teacher",)]
    # Every W&B run was finished: the failed one with exit code 1, the others with 0.
    for job, code in [(jobs[0], 0), (bad, 1), (jobs[2], 0)]:
        (log,) = job.glob("wandb/offline-run-*/logs/debug.log")
        assert f"got exitcode: {code}" in log.read_text(), job.name


def test_a_rerun_that_succeeds_clears_the_failure(victim: Path, tmp_path: Path) -> None:
    same_dir = "hydra.sweep.subdir=job0"  # both attempts write the same job dir
    first = sweep(victim, tmp_path, "budget.evaluations=abc", same_dir)
    assert first.returncode != 0
    (job,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (
        "budget.evaluations must be int" in json.loads((job / FAILURE_FILE).read_text())["message"]
    )
    assert (job / OVERRIDES_FILE).is_file()
    again = sweep(victim, tmp_path, "budget.evaluations=8", same_dir)
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
    def single(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
        where = [f"victim.run={victim}", f"hydra.run.dir={out}"]
        return subprocess.run(
            [sys.executable, "-m", "qrl.search", *where, *TINY_SEARCH, *args],
            capture_output=True,
            text=True,
            timeout=600,
        )

    bad = single(tmp_path / "bad", "eval.samples=0")
    assert bad.returncode == 2 and "eval.samples must be >= 1" in bad.stderr
    assert not (tmp_path / "bad" / OVERRIDES_FILE).exists()  # no record of a run that was not
    assert not (tmp_path / "bad" / FAILURE_FILE).exists()  # a single run says why on stderr
    good = single(tmp_path / "good", "seed=3")
    assert good.returncode == 0, good.stderr[-2000:]
    assert _value(read_overrides(tmp_path / "good"), "seed") == "3"
