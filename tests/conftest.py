"""Shared fixtures: offline W&B, a per-session cache, and one real distillation run on digits."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if "PYTEST_XDIST_WORKER" in os.environ:
    # `make test` runs one pytest-xdist worker per core: one thread each (and in the commands
    # they start), so the workers share the cores instead of fighting over them.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.exact_int8`: the test compares ONNX Runtime's 8-bit-weight int8 kernel
    with qrl's simulator, which models it exactly only where the CPU accumulates u8 x s8
    products in int32 (x86 VNNI or AMX, ARM dot product; see `qrl.quant.cpu`). Elsewhere (x86
    without VNNI: saturating 16-bit pairs) the kernel's numbers are another arithmetic's, and
    the test is skipped with the reason."""
    if item.get_closest_marker("exact_int8") is None:
        return
    from qrl.quant.cpu import describe_int8_accumulation, int8_accumulation

    if int8_accumulation() != "exact":
        pytest.skip(
            f"needs exact int8 accumulation in ONNX Runtime; this CPU: "
            f"{describe_int8_accumulation()}"
        )


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the default-victim cache of the tests apart from the user's."""
    os.environ["QRL_CACHE"] = str(tmp_path_factory.mktemp("qrl-cache"))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default distillation (`python -m qrl.distill data=digits seed=0`) run once, shared
    by the pytest-xdist workers of one session: the first trains it, the others load it. Tests
    read it and copy it before they change anything."""
    from filelock import FileLock

    from qrl import distill
    from qrl.runs import METRICS_FILE

    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # the session's folder, above each worker's own
    out = root / "digits-distill"
    with FileLock(f"{out}.lock"):
        if not (out / METRICS_FILE).is_file():  # written last by a finished run
            distill.run(load_config("distill", [f"out={out}", "progress=false"]))
    return out


def run_at_once(
    *commands: Sequence[str], timeout: float = 600, cwd: Path | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands side by side (a `python -m qrl.<task>` spends seconds on its
    imports alone, mostly on one core); their results in order, as `subprocess.run` gives."""
    procs = [
        subprocess.Popen(
            list(c), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
        )
        for c in commands
    ]
    results = []
    for command, proc in zip(commands, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(list(command), proc.returncode, out, err))
    return results


# A search small enough to run many times in tests (a random agent, small batches, no kernels).
FAST_SEARCH = [
    "env.batch_size=32",
    "eval.samples=64",
    "eval.bootstrap=50",
    "archive.grid=4",  # failures.png with 4 images, not 32: drawing them is most of a tiny run
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
