"""Independent stages side by side, one process each, sharing the machine's cores.

`qrl.reproduce` trains a detrimental and a robust pair that do not depend on each other; on a
2-core machine two single-threaded processes finish them in little more than the time of one.
Each job runs in a spawned process (no torch or CUDA state is shared with this one); the
processes start once per `SideBySide` and serve every batch of jobs after, and a job's error is
raised again here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Job:
    """One call to run: a module-level function (so it pickles), its arguments and a name."""

    name: str
    func: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Any:
        return self.func(*self.args, **self.kwargs)


def resolve_jobs(jobs: int | str) -> int:
    """`jobs`: a positive count, or `auto` (one per core, at most 2: the stages come in twos)."""
    if jobs == "auto":
        return max(1, min(2, os.cpu_count() or 1))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer or auto, got {jobs!r}")
    return jobs


class SideBySide:
    """Runs batches of independent jobs in up to `processes` processes (1: here, in turn).

    Use it as a context manager; the processes start with the first batch of two or more jobs
    and stop when the block ends.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.threads = max(1, (os.cpu_count() or 1) // max(processes, 1))
        self._pool: ProcessPoolExecutor | None = None

    @property
    def parallel(self) -> bool:
        return self.processes > 1

    def __enter__(self) -> SideBySide:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        """Each job's result, in order."""
        if not self.parallel or len(jobs) <= 1:
            return [job() for job in jobs]
        names = ", ".join(job.name for job in jobs)
        print(
            f"side by side in {self.processes} processes ({self.threads} thread(s) each): {names}"
        )
        pool = self._started()
        started = time.perf_counter()
        futures = [pool.submit(_timed, job) for job in jobs]
        results = []
        for job, future in zip(jobs, futures, strict=True):
            try:
                result, seconds = future.result()  # the job's own error, raised again here
            except BaseException:
                print(f"{job.name}: failed (its error follows)")
                raise
            total = time.perf_counter() - started
            print(f"{job.name}: finished in {seconds:.0f} s ({total:.0f} s since the start)")
            results.append(result)
        return results

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=get_context("spawn"),  # a fresh interpreter: no forked threads, CUDA
                initializer=_limit_threads,
                initargs=(self.threads,),
            )
        return self._pool


def run_side_by_side(jobs: Sequence[Job], processes: int) -> list[Any]:
    """`SideBySide(processes).run(jobs)` for one batch."""
    with SideBySide(processes) as side:
        return side.run(jobs)


def _timed(job: Job) -> tuple[Any, float]:
    started = time.perf_counter()
    return job(), time.perf_counter() - started


def _limit_threads(threads: int) -> None:
    """Each worker's share of the cores (torch, and the OpenMP pools of ONNX Runtime)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
