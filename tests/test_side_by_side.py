"""Independent stages side by side (`qrl.side_by_side`, `qrl.reproduce`'s `jobs`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qrl.side_by_side import Job, SideBySide, resolve_jobs, run_side_by_side


def _pid_and_threads(value: int) -> tuple[int, int, int]:
    import torch

    return value, os.getpid(), torch.get_num_threads()


def _fails(name: str) -> None:
    raise ValueError(f"{name} went wrong")


def test_jobs_run_in_their_own_processes_and_return_in_order() -> None:
    jobs = [Job(f"job{i}", _pid_and_threads, (i,)) for i in range(3)]
    results = run_side_by_side(jobs, processes=2)
    assert [value for value, _, _ in results] == [0, 1, 2]
    pids = {pid for _, pid, _ in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    expected = max(1, (os.cpu_count() or 1) // 2)  # the cores split between the two
    assert {threads for _, _, threads in results} == {expected}


def test_the_processes_start_once_and_serve_every_batch() -> None:
    with SideBySide(2) as side:
        first = side.run([Job(f"a{i}", _pid_and_threads, (i,)) for i in range(2)])
        second = side.run([Job(f"b{i}", _pid_and_threads, (i,)) for i in range(2)])
    assert len({pid for _, pid, _ in first + second}) <= 2  # the same two processes
    assert side._pool is None  # stopped with the block


def test_one_process_or_one_job_runs_here() -> None:
    for jobs, processes in (
        ([Job("a", _pid_and_threads, (1,))], 2),
        ([Job("b", _pid_and_threads, (2,))] * 2, 1),
    ):
        assert {pid for _, pid, _ in run_side_by_side(jobs, processes)} == {os.getpid()}


def test_a_job_s_error_is_raised_again_and_the_job_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = [Job("fine", _pid_and_threads, (1,)), Job("broken", _fails, ("broken",))]
    with pytest.raises(ValueError, match="broken went wrong"):
        run_side_by_side(jobs, processes=2)
    assert "broken: failed" in capsys.readouterr().out


@pytest.mark.parametrize("value", [0, -1, "two", 1.5, True])
def test_jobs_must_be_a_positive_count_or_auto(value: object) -> None:
    with pytest.raises(ValueError, match="jobs must be a positive integer or auto"):
        resolve_jobs(value)  # type: ignore[arg-type]
    assert resolve_jobs(3) == 3 and 1 <= resolve_jobs("auto") <= 2


def test_reproduce_refuses_a_bad_jobs_value_before_writing(tmp_path: Path) -> None:
    from qrl import reproduce
    from qrl.config import load_config
    from qrl.errors import ConfigError

    with pytest.raises(ConfigError, match="jobs must be a positive integer or auto, got 0"):
        reproduce.run(load_config("reproduce", [f"out={tmp_path / 'x'}", "jobs=0"]))
    assert not (tmp_path / "x").exists()
