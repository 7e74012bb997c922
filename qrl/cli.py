"""What every `python -m qrl.<task>` shares: run the task, turn qrl errors into one message."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from omegaconf import DictConfig

from qrl.errors import ConfigError, QrlError

if TYPE_CHECKING:
    from qrl.sweeps import Job

EXIT_USAGE = 2
EXIT_JOBS_FAILED = 3  # a multirun that ran every job, some of which failed


def hydra_task(run: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Call a task's `run(cfg)`; a `QrlError` prints one line naming what to fix and exits 2.

    Inside a Hydra job the job's overrides are recorded in its dir; in a multirun a failing job
    records `failure.json` and raises `JobFailed` instead of exiting, so the sweep goes on
    (`qrl.sweeps`). A single run that fails before writing anything (a refused config) takes
    back the run dir Hydra made for it.
    """
    from qrl.sweeps import current_job, run_job

    job = current_job()
    try:
        return run(cfg) if job is None else run_job(run, cfg, job)
    except QrlError as exc:
        _discard_unused_run_dir(job)
        _fail(exc)
    except BaseException:
        _discard_unused_run_dir(job)
        raise


# A run dir the command line names (`hydra.run.dir=...`) that exists already: its entries
# before Hydra started, so that a refused run removes only what Hydra added.
_EXISTING_RUN_DIR: dict[Path, set[str]] = {}


def _remember_run_dir(argv: Sequence[str]) -> None:
    given = [a.partition("=")[2] for a in argv if a.startswith("hydra.run.dir=")]
    if given and Path(given[-1]).is_dir():
        path = Path(given[-1]).resolve()
        _EXISTING_RUN_DIR[path] = {p.name for p in path.iterdir()}


def _discard_unused_run_dir(job: Job | None) -> None:
    """After a single run failed: remove what Hydra made before `run` (the dir, an empty
    `<task>.log`) when the task wrote nothing there, so a refused config leaves no run dir."""
    if job is None or job.multirun or not job.out.is_dir():
        return  # a sweep's failed job keeps its dir: its failure.json says why
    out = job.out.resolve()
    before = _EXISTING_RUN_DIR.get(out, set())
    added = [p for p in out.iterdir() if p.name not in before]
    if not all(p.suffix == ".log" and p.is_file() and p.stat().st_size == 0 for p in added):
        return  # the task wrote something: the dir is a run now
    for path in added:
        path.unlink()
    if out not in _EXISTING_RUN_DIR and not any(out.iterdir()):
        out.rmdir()


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
    """Wrap a `@hydra.main` function: unknown group options and keys on the command line fail
    first, in one line (`qrl.overrides.checked_argv`), before Hydra makes a run dir; a run whose
    config is refused leaves none (`hydra_task`); a multirun with failed jobs ends naming them,
    with exit code 3 (`EXIT_JOBS_FAILED`: the sweep finished; any other non-zero code means it
    did not)."""

    @functools.wraps(main)
    def wrapper() -> None:
        from qrl.overrides import checked_argv  # registers the node schemas (qrl.schema)
        from qrl.sweeps import report_sweep_failures

        try:
            check_group_options(sys.argv[1:])
            sys.argv[1:] = checked_argv(_config_name(main), sys.argv[1:])
        except QrlError as exc:
            _fail(exc)
        _remember_run_dir(sys.argv[1:])
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


def _config_name(main: Callable[[], Any]) -> str | None:
    """The `config_name` a `@hydra.main` function composes (None: not found)."""
    import inspect

    try:
        name = inspect.getclosurevars(main).nonlocals.get("config_name")
    except TypeError:
        return None
    return name if isinstance(name, str) else None


def _fail(exc: QrlError) -> NoReturn:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
