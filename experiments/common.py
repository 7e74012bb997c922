"""What every experiment script shares: running a sweep, picking its runs, and writing its
section of experiments/README.md with the command, the machine and the date."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from qrl import report

README = Path(__file__).with_name("README.md")


def shown(command: Sequence[str]) -> str:
    """The command as a user types it (`python -m ...`, not this interpreter's path)."""
    parts = ["python", *command[1:]] if command and command[0] == sys.executable else command
    return " ".join(str(p) for p in parts)


def run(command: Sequence[str], sweep: bool = True) -> None:
    """Run a command, echoing it. A sweep that finished but names failed jobs (exit 1) is not
    fatal: the report lists those jobs. Anything else that fails stops the experiment."""
    print(shown(command), flush=True)
    done = subprocess.run(list(command), check=False)
    if done.returncode != 0 and not (sweep and done.returncode == 1):
        raise SystemExit(f"{shown(command)} exited with {done.returncode}")


def machine() -> str:
    """One line naming the machine the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        memory = ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}){memory}, {gpu}; torch {torch.__version__}"


def stamp() -> str:
    """'Measured on <machine>, <date>.' for a section's header."""
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return f"Measured on {machine()}, {today}."


def pick(runs: Sequence[dict[str, Any]], wanted: Mapping[str, Sequence[str]]) -> list[dict]:
    """The runs whose overrides take one of the wanted values for every key."""
    return [r for r in runs if all(r["overrides"].get(k) in set(vs) for k, vs in wanted.items())]


def scan(root: Path, wanted: Mapping[str, Sequence[str]]) -> dict[str, list[dict[str, Any]]]:
    """`qrl.report.scan_runs(root)`, restricted to the runs this experiment asked for."""
    scanned = report.scan_runs(root)
    return {status: pick(records, wanted) for status, records in scanned.items()}


def update_readme(name: str, text: str) -> None:
    """Replace the section between `<!-- name:start -->` and `<!-- name:end -->` (appended
    when absent), so rerunning a script regenerates its numbers and nothing else."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.strip()}\n{end}"
    readme = README.read_text()
    if start in readme and end in readme:
        readme = readme[: readme.index(start)] + block + readme[readme.index(end) + len(end) :]
    else:
        readme = readme.rstrip("\n") + "\n\n" + block + "\n"
    README.write_text(readme)
    print(f"updated the {name} section of {README}")


PAIRS_ROOT = Path("runs/experiments/pairs")
PAIR_METRICS = (
    "acc_teacher",
    "acc_fp",
    "acc_q",
    "drop",
    "drop_uniform",
    "drop_random",
    "drop_onnx_int8",
    "mean_bits",
)


def pair_sweep(
    models: Sequence[str],
    budgets: Sequence[str],
    seeds: Sequence[str],
    root: Path = PAIRS_ROOT,
    overrides: Sequence[str] = (),
) -> tuple[list[str], dict[str, list[str]]]:
    """Train (or load, when finished) the detrimental and robust pairs of every model, budget
    and seed in one Hydra sweep under `root`, one job dir per configuration, named by its
    overrides, so experiments that share a configuration share its run.

    Returns the command and the override values that select this sweep's runs.
    """
    command = [
        sys.executable,
        "-m",
        "qrl.pairs",
        "-m",
        f"victim.model={','.join(models)}",
        f"bits.budget={','.join(budgets)}",
        "kind=detrimental,robust",
        f"seed={','.join(seeds)}",
        f"hydra.sweep.dir={root}",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",
        "progress=false",
        *overrides,
    ]
    run(command)
    wanted = {"victim.model": list(models), "bits.budget": list(budgets), "seed": list(seeds)}
    return command, wanted
