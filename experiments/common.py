"""What every experiment script shares: running a sweep, picking exactly its runs, reporting
them through `qrl.report`, and writing its section of experiments/README.md with the command,
the machine and the date."""

from __future__ import annotations

import argparse
import datetime
import fcntl
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from qrl import report
from qrl.cli import EXIT_JOBS_FAILED
from qrl.model_defaults import AUTO_KEYS
from qrl.runs import atomic_write

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "experiments" / "README.md"
README_LOCK = ROOT / "runs" / "experiments" / ".readme.lock"  # runs/ is not tracked
# Overrides that never tell runs apart (where outputs go, how much is printed).
# Keys that name no other experiment: `train.twin` is the sibling robust pair of a sweep's
# detrimental job (`pair_sweep`).
NOT_A_SETTING = frozenset({"progress", "out", "train.twin"})


def enter_repo() -> None:
    """Work from the repository root, so relative run dirs are the ones the README names."""
    os.chdir(ROOT)


def shown(command: Sequence[str]) -> str:
    """The command as a user types it in a shell (`python -m ...`, quoted where needed)."""
    parts = ["python", *command[1:]] if command and command[0] == sys.executable else command
    return shlex.join(str(p) for p in parts)


def invocation() -> str:
    """How this script was started, to rerun it exactly (`--report-only`, which reports runs
    an earlier invocation made, left out)."""
    script = Path(sys.argv[0]).resolve()
    where = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    args = [a for a in sys.argv[1:] if a != "--report-only"]
    return shlex.join(["python", str(where), *args])


def run(command: Sequence[str], sweep: bool = True) -> None:
    """Run a command, echoing it. A sweep that finished with failed jobs (exit 3) is not fatal:
    the report lists those jobs. Any other failure stops the experiment before it reports."""
    print(shown(command), flush=True)
    done = subprocess.run(list(command), check=False)
    if done.returncode != 0 and not (sweep and done.returncode == EXIT_JOBS_FAILED):
        raise SystemExit(f"{shown(command)} exited with {done.returncode}; nothing reported")


def normalized(value: object) -> str:
    """An override value as Hydra writes it into a job's `overrides.yaml`, made comparable
    (`3`, `3.0` and `3.00` are one budget; `false` and `False` one flag)."""
    text = str(value).strip()
    try:
        return repr(float(text))
    except ValueError:
        return text.lower()


def sweep_values(overrides: Iterable[str]) -> dict[str, set[str]]:
    """`["seed=0,1", "kind=robust"]` -> `{"seed": {"0.0", "1.0"}, "kind": {"robust"}}`:
    the values each task key may take in a sweep (Hydra's own keys left out)."""
    wanted: dict[str, set[str]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.lstrip("+")
        if not sep or key.startswith(("hydra.", "~")) or key in NOT_A_SETTING:
            continue
        wanted[key] = {normalized(v) for v in value.split(",")}
    return wanted


def check_extra(overrides: Sequence[str], controlled: Mapping[str, str]) -> None:
    """Refuse extra overrides of keys the script sets itself, naming the option to use."""
    for item in overrides:
        key = item.partition("=")[0].lstrip("+")
        if key in controlled or key.startswith("hydra.sweep"):
            raise SystemExit(
                f"error: {key} is set by this script; use {controlled.get(key, 'its --out')}"
            )


def pick(runs: Sequence[dict[str, Any]], wanted: Mapping[str, set[str]]) -> list[dict]:
    """The runs made by exactly these overrides: the same keys, each with a wanted value
    (a run with an extra override, such as a shorter `train.rounds`, is another experiment)."""
    picked = []
    for r in runs:
        have = {k: v for k, v in r["overrides"].items() if k not in NOT_A_SETTING}
        if set(have) == set(wanted) and all(normalized(have[k]) in wanted[k] for k in wanted):
            picked.append(r)
    return picked


def scan(root: Path, overrides: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """`qrl.report.scan_runs(root)`, restricted to the runs these overrides made."""
    wanted = sweep_values(overrides)
    scanned = report.scan_runs(root) if root.is_dir() else {}
    picked = {status: pick(records, wanted) for status, records in scanned.items()}
    if not any(picked.values()):
        raise SystemExit(
            f"error: no run under {root} was made by {sorted(wanted.items())}; the sweep "
            "above should have made them (see its output)"
        )
    return picked


def write_report(
    out: Path,
    scanned: Mapping[str, list[dict[str, Any]]],
    group: Sequence[str],
    metrics: Sequence[str],
    plot_metric: str | None = None,
) -> tuple[str, str]:
    """Group the finished runs with `qrl.report` and write <out>/report.{md,csv,png}.

    Returns (the markdown table, the list of failed and unfinished runs, empty if none).
    """
    runs = scanned["finished"]
    if not runs:
        raise SystemExit(f"error: no finished runs to report ({len(scanned['failed'])} failed)")
    out.mkdir(parents=True, exist_ok=True)
    keys, kept, rows = report.summarize(runs, group, metrics)
    table = report.compare(runs, group, metrics)
    report.write_csv(out / "report.csv", keys, kept, rows)
    report.compare_plot(out / "report.png", runs, group, plot_metric or kept[0])
    listed = report.not_finished(dict(scanned), group)
    text = table + ("\n\n" + listed if listed else "") + "\n"
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(text))
    return table, listed


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


def _day(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d")


def stamp(trained: Iterable[Path] = ()) -> str:
    """'Generated on <machine>, <date>.', plus when the given files (trained models that a
    rerun loads instead of retraining) were written."""
    line = f"Generated on {machine()}, {_day(datetime.datetime.now(datetime.UTC).timestamp())}."
    days = sorted({_day(p.stat().st_mtime) for p in trained if p.is_file()})
    if days:
        span = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
        line += f" Models trained {span}: a rerun loads finished ones rather than retraining."
    return line


def heading(
    title: str,
    command: Sequence[str] | None = None,
    trained: Iterable[Path] = (),
    ran: str = "The sweep it runs",
) -> list[str]:
    """A section's first lines: its title, how to regenerate it, where and when, and the
    command it ran (when it ran one worth naming)."""
    lines = ["## " + title, "", "```bash", invocation(), "```", "", stamp(trained)]
    if command is not None:
        lines.append(f"{ran}: `{shown(command)}`.")
    return lines


def update_readme(name: str, text: str) -> None:
    """Replace the section between `<!-- name:start -->` and `<!-- name:end -->` (appended
    when absent), so rerunning a script regenerates its numbers and nothing else. Locked and
    atomic: two scripts finishing together both keep their sections."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.strip()}\n{end}"
    README_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(README_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        readme = README.read_text()
        if start in readme and end in readme:
            head, tail = readme[: readme.index(start)], readme[readme.index(end) + len(end) :]
            readme = head + block + tail
        else:
            readme = readme.rstrip("\n") + "\n\n" + block + "\n"
        atomic_write(README, lambda tmp: tmp.write_text(readme))
    print(f"updated the {name} section of {README}")


# --- searches of the distilled digits student, shared by agents_vs_baselines and honest_selection

SEARCH_KEYS = {
    "agent": "--agents",
    "seed": "--seeds",
    "budget.evaluations": "--evaluations",
    "env.reference": "--reference",
    "experiment": "(always digits_int4)",
}


def search_sweep(
    agents: str,
    seeds: str,
    evaluations: int,
    reference: str,
    out: Path,
    overrides: Sequence[str] = (),
    report_only: bool = False,
) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """Search the default digits student's 4-bit copy (`+experiment=digits_int4`) with every
    agent and seed at the same budget, one job dir per configuration under `out`.

    Returns the command and its runs (`report_only`: the runs already there; none searched).
    """
    check_extra(overrides, SEARCH_KEYS)
    task = [
        "+experiment=digits_int4",
        f"agent={agents}",
        f"seed={seeds}",
        f"budget.evaluations={evaluations}",
        f"env.reference={reference}",
        *overrides,
    ]
    command = [
        sys.executable,
        "-m",
        "qrl.search",
        "-m",
        *task,
        f"hydra.sweep.dir={out}",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",
        "progress=false",
    ]
    if not report_only:
        run(command)
    return command, scan(out, task)


def search_arguments(parser: argparse.ArgumentParser, agents: str, name: str) -> None:
    """The options of an experiment over `search_sweep` (runs under runs/experiments/<name>_*)."""
    parser.add_argument("--agents", default=agents)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--evaluations", type=int, default=1000)
    parser.add_argument("--reference", default="student", choices=["student", "teacher"])
    parser.add_argument("--out", help=f"default: runs/experiments/{name}_<reference>")
    parser.add_argument(
        "--report-only", action="store_true", help="report the runs already in --out; search none"
    )
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides of qrl.search")


def search_from(
    args: argparse.Namespace, name: str
) -> tuple[Path, list[str], dict[str, list[dict[str, Any]]]]:
    """`search_sweep` with the options of `search_arguments`: (out dir, command, runs)."""
    enter_repo()
    out = Path(args.out or f"runs/experiments/{name}_{args.reference}")
    command, scanned = search_sweep(
        args.agents,
        args.seeds,
        args.evaluations,
        args.reference,
        out,
        args.overrides,
        args.report_only,
    )
    return out, command, scanned


def gap_words(reference: str) -> tuple[str, str]:
    """(short name, definition) of what a search's gaps are, by its reference."""
    if reference == "student":
        return "drop", (
            "**drops**: the full-precision student's accuracy minus its quantized copy's on the "
            "same inputs"
        )
    return "gap to the teacher", (
        "**gaps to the teacher**: the teacher's accuracy minus the quantized student's"
    )


# --- the network-policy pairs, shared by pairs_table, drop_vs_budget and granularity -----------

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
PAIR_KEYS = {
    "victim.model": "--models / --model",
    "bits.budget": "--budgets / --budget",
    "seed": "--seeds",
    "kind": "(both kinds are always trained)",
    "victim.run": "(the cached victim of --models)",
}


def pair_sweep(
    models: Sequence[str],
    budgets: Sequence[str],
    seeds: Sequence[str],
    overrides: Sequence[str] = (),
    root: Path = PAIRS_ROOT,
    report_only: bool = False,
) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """Train (or load, when finished) the robust pairs of every model, budget and seed in one
    Hydra sweep under `root`, then the detrimental pairs in a second, each held under its
    robust twin's policy (`train.twin=${robust_twin:}`, the job dir with `kind=robust`). One
    job dir per configuration, named by its overrides, so experiments that share a
    configuration share its run.

    Returns the robust sweep's command and the runs of both, as `qrl.report.scan_runs` sorts
    them (`report_only`: the pairs already finished; none trained).
    """
    check_extra(overrides, PAIR_KEYS)
    grid = [
        f"victim.model={','.join(models)}",
        f"bits.budget={','.join(str(float(b)) for b in budgets)}",
        f"seed={','.join(str(int(s)) for s in seeds)}",
        *overrides,
    ]
    sweep = [
        sys.executable,
        "-m",
        "qrl.pairs",
        "-m",
        *grid,
        f"hydra.sweep.dir={root}",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",
        "progress=false",
    ]
    command = [*sweep, "kind=robust"]
    if not report_only:
        run(command)
        run([*sweep, "kind=detrimental", "train.twin=${robust_twin:}"])  # each under its twin
    return command, scan(root, [*grid, "kind=detrimental,robust"])


def pair_settings(runs: Sequence[dict[str, Any]]) -> str:
    """What the pairs were trained with, read from their configs (not typed)."""
    cfg = runs[0]["config"]
    factors = cfg["train"].get("detrimental_rounds_factor") or {}
    longer = "".join(f"; the {m}'s detrimental pairs {f:g}x as many" for m, f in factors.items())
    own: dict[str, list[str]] = {}  # the per-model defaults that `auto` keys read
    for key, (map_key, _) in AUTO_KEYS.items():
        if cfg["train"].get(key) == "auto":
            for model, value in (cfg["train"].get(map_key) or {}).items():
                own.setdefault(model, []).append(f"`{key}` {value}")
    longer += "".join(f"; the {m}'s own {', '.join(v)}" for m, v in own.items())
    return (
        f"{cfg['train']['rounds']} rounds of (one PPO rollout of "
        f"{cfg['ppo']['n_envs'] * cfg['ppo']['model']['n_steps']} inputs + update, "
        f"{cfg['train']['net_steps']} KD + QAT network steps of {cfg['train']['batch_size']} "
        f"inputs){longer}; quantizer `{cfg['quant']['name']}` (activations "
        f"{cfg['quant']['act_granularity']}, {'a' if not cfg['quant']['act_symmetric'] else ''}"
        f"symmetric; weights {cfg['quant']['weight_bits']}-bit "
        f"{cfg['quant']['weight_granularity']}); bit set "
        f"{{{','.join(str(b) for b in cfg['bits']['set'])}}}; evaluated on the "
        f"{cfg['eval']['split']} split; the robust pair trained first, and each detrimental "
        "pair held under its twin's policy (`train.twin`)"
    )


def trained_files(runs: Sequence[dict[str, Any]], name: str = "network.pt") -> list[Path]:
    return [Path(r["run_dir"]) / name for r in runs]
