"""What every `python -m qrl.<task>` shares: run the task, turn qrl errors into one message."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from qrl.errors import QrlError

EXIT_USAGE = 2


def hydra_task(run: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Call a task's `run(cfg)`; a `QrlError` prints one line naming what to fix and exits 2."""
    try:
        return run(cfg)
    except QrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
