"""What every `python -m qrl.<task>` shares: run the task, turn qrl errors into one message."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from omegaconf import DictConfig

from qrl.errors import ConfigError, QrlError

EXIT_USAGE = 2
EXIT_JOBS_FAILED = 3  # a multirun that ran every job, some of which failed


def hydra_task(run: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Call a task's `run(cfg)`; a `QrlError` prints one line naming what to fix and exits 2.

    Inside a Hydra job the job's overrides are recorded in its dir; in a multirun a failing job
    records `failure.json` and raises `JobFailed` instead of exiting, so the sweep goes on
    (`qrl.sweeps`).
    """
    from qrl.sweeps import current_job, run_job

    job = current_job()
    try:
        return run(cfg) if job is None else run_job(run, cfg, job)
    except QrlError as exc:
        _fail(exc)


def check_group_options(argv: Sequence[str]) -> None:
    """A `ConfigError` for a command-line group option with no `conf/<group>/<option>.yaml`.

    Hydra would stop on it too, but before `run`, with a multi-line message and exit code 1;
    this says it in qrl's words. Sweeps (`agent=ppo,sac`) check every option; Hydra's sweep
    functions (`glob(...)`) and keys that are not groups are left to Hydra.
    """
    from qrl.config import CONF_DIR

    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep or arg.startswith(("-", "~")) or "/" in key or "." in key or "(" in value:
            continue
        folder = CONF_DIR / key
        if not key or not folder.is_dir():
            continue
        choices = sorted(p.stem for p in folder.glob("*.yaml"))
        for option in value.split(","):
            if option not in choices and option != "null":
                raise ConfigError(
                    f"unknown {key} option {option!r}; choose one of {', '.join(choices)} "
                    f"(files in {folder})"
                )


def checked_options(main: Callable[[], Any]) -> Callable[[], None]:
    """Wrap a `@hydra.main` function: unknown group options on the command line fail first,
    and a multirun with failed jobs ends naming them, with exit code 3 (`EXIT_JOBS_FAILED`:
    the sweep finished; any other non-zero code means it did not)."""

    @functools.wraps(main)
    def wrapper() -> None:
        from qrl.sweeps import report_sweep_failures

        try:
            check_group_options(sys.argv[1:])
        except QrlError as exc:
            _fail(exc)
        code: Any = 0
        try:
            main()
        except SystemExit as exc:  # Hydra reports the first failed job and exits 1
            code = exc.code
        if report_sweep_failures():
            sys.exit(EXIT_JOBS_FAILED)
        if code:
            sys.exit(code)

    return wrapper


def _fail(exc: QrlError) -> NoReturn:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
