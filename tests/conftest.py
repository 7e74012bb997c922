"""Shared fixtures: offline W&B, a per-session cache, and one real distillation run on digits."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path

import pytest

from qrl.config import load_config

# Epochs small enough for unit tests; the digits acceptance run below uses the defaults.
QUICK = [
    "data=synthetic",
    "teacher.epochs=3",
    "student.epochs=3",
    "progress=false",
    "model.teacher.width=8",
    "model.student.width=4",
]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the default-victim cache of the tests apart from the user's."""
    os.environ["QRL_CACHE"] = str(tmp_path_factory.mktemp("qrl-cache"))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default distillation (`python -m qrl.distill data=digits seed=0`) run once."""
    from qrl import distill

    out = tmp_path_factory.mktemp("digits-distill")
    distill.run(load_config("distill", [f"out={out}", "progress=false"]))
    return out


# A search small enough to run many times in tests (a random agent, small batches, no kernels).
FAST_SEARCH = [
    "env.batch_size=32",
    "eval.samples=64",
    "eval.bootstrap=50",
    "progress=false",
    "confirm.backends=[]",
    "agent=random",
]


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny distillation (`QUICK`) run once, the victim of the fast search tests."""
    from qrl import distill

    out = tmp_path_factory.mktemp("quick-distill")
    distill.run(load_config("distill", [*QUICK, f"out={out}"]))
    return out
