"""Bit-width pairs across architectures and budgets: does each model's failure belong to its pair?

    python experiments/cross_architecture.py [--cases cnn:3.0,cnn:4.0,...] [--seeds 0,1,2]
        [--report-only]

For every case (a model's cached digits victim at an average-bit budget) and seed, the
detrimental and robust pairs of `python -m qrl.pairs` (the sweep of experiments/pairs_table.py
and drop_vs_budget.py; finished pairs are loaded, not retrained) are cross-evaluated on the
test split (`qrl.pairing.evaluation.cross_evaluation`): the detrimental network under its own
policy, the robust twin's, random bits at the budget, and the best and worst fixed per-layer
pattern. Writes runs/experiments/cross_architecture/rows.csv and regenerates the
`cross_architecture` section of experiments/README.md.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common

from qrl.pairing.evaluation import cross_evaluation
from qrl.pairs import load_pair
from qrl.quant import preset
from qrl.tables import format_table
from qrl.victim import distilled_victim

CASES = "cnn:3.0,cnn:4.0,cnn:5.0,cnn:6.0,mlp:4.0,resnet18:4.0"
UNIFORM = "uniform bits at the budget"  # the row `uniform <budget> bits` (an integer budget)
# The table's columns: (heading, network, policy row of the cross-evaluation, value)
COLUMNS = (
    ("detrimental drop, own policy", "detrimental", "own policy", "drop"),
    ("robust drop, own policy", "robust", "own policy", "drop"),
    ("detrimental drop, twin's policy", "detrimental", "robust policy", "drop"),
    ("detrimental drop, random bits", "detrimental", "random bits", "drop"),
    ("detrimental drop, best fixed pattern", "detrimental", "best fixed pattern", "drop"),
    ("detrimental drop, worst fixed pattern", "detrimental", "worst fixed pattern", "drop"),
    ("robust drop, random bits", "robust", "random bits", "drop"),
    ("robust drop, uniform bits", "robust", UNIFORM, "drop"),
    ("detrimental FP acc", "detrimental", "own policy", "acc_fp"),
    ("robust FP acc", "robust", "own policy", "acc_fp"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=CASES, help="model:budget, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/experiments/cross_architecture")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="cross-evaluate the pairs already finished; train none (the table's n says how many)",
    )
    args = parser.parse_args()
    common.enter_repo()
    cases = [(m, float(b)) for m, b in (c.split(":") for c in args.cases.split(","))]
    seeds = [int(s) for s in args.seeds.split(",")]
    commands, runs = [], []
    for model in dict.fromkeys(m for m, _ in cases):  # one sweep per model, its budgets
        budgets = [str(b) for m, b in cases if m == model]
        command, scanned = common.pair_sweep(
            [model], budgets, [str(s) for s in seeds], report_only=args.report_only
        )
        commands.append(command)
        runs += scanned["finished"]
    rows = [
        {"model": m, "budget": b, "seed": s, **cross_of(runs, m, b, s)}
        for m, b in cases
        for s in seeds
        if found(runs, m, b, s)
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "rows.csv", rows)
    section = [
        *common.heading(
            "Bit-width pairs across architectures and budgets",
            commands[0],
            common.trained_files(runs),
            ran="The first of its sweeps (per model, the robust pairs, then the detrimental ones "
            "with `kind=detrimental 'train.twin=${robust_twin:}'`; pairs already trained are "
            "loaded)",
        ),
        "",
        "Each model's cached digits victim; both pairs trained with the defaults of "
        f"conf/pairs.yaml ({common.pair_settings(runs)}). Points, "
        "mean ± std over seeds (n). **drop** = the network's own full-precision accuracy minus "
        "its quantized accuracy under the named bits: its own policy, the robust twin's policy "
        "(the same seed's), random per-input bits at the budget, and the best and worst fixed "
        "per-layer pattern at the budget (every pattern, or 200 random ones where there are "
        "more than 2,000). FP acc: full precision, in %.",
        "",
        summary_table(rows),
        "",
        "Per seed (points; the targets hold on every seed or not at all):",
        "",
        per_seed_table(rows),
        "",
        f"Per seed, with the fixed patterns named: `{out}/rows.csv`.",
    ]
    common.update_readme("cross_architecture", "\n".join(section))
    return 0


def found(runs: Sequence[dict[str, Any]], model: str, budget: float, seed: int) -> bool:
    return all(pair_dir(runs, model, budget, seed, k) is not None for k in KINDS)


KINDS = ("detrimental", "robust")


def pair_dir(
    runs: Sequence[dict[str, Any]], model: str, budget: float, seed: int, kind: str
) -> Path | None:
    for r in runs:
        c = r["config"]
        if (c["victim"]["model"], float(c["bits"]["budget"]), int(c["seed"]), c["kind"]) == (
            model,
            budget,
            seed,
            kind,
        ):
            return Path(r["run_dir"])
    return None


def cross_of(
    runs: Sequence[dict[str, Any]], model: str, budget: float, seed: int
) -> dict[str, Any]:
    """The columns of one (model, budget, seed), from both pairs' cross-evaluation."""
    dirs = {k: pair_dir(runs, model, budget, seed, k) for k in KINDS}
    pairs = {k: load_pair(d, space="bits") for k, d in dirs.items() if d is not None}
    victim, _, _ = distilled_victim(None, model, preset("int4_dynamic"), "cpu", False)
    print(f"cross-evaluating {model} at {budget} bits, seed {seed}")
    rows = cross_evaluation(pairs, victim.data.test, seed=seed)
    by = {(r["network"], r["policy"]): r for r in rows}
    for net in KINDS:  # the budget's uniform bits, where it is a whole number of bits
        uniform = by.get((net, f"uniform {budget:g} bits"))
        by[(net, UNIFORM)] = uniform or {"drop": float("nan")}
    values = {heading: by[(net, pol)][key] for heading, net, pol, key in COLUMNS}
    for label in ("best", "worst"):
        values[f"{label} pattern"] = by[("detrimental", f"{label} fixed pattern")]["note"]
    return values


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["budget"])].append(r)
    headers = ["model", "budget", "n", *(c[0] for c in COLUMNS)]
    body = []
    for (model, budget), group in groups.items():
        cells = [model, f"{budget:.1f}", str(len(group))]
        for heading, *_ in COLUMNS:
            cells.append(mean_std([100 * r[heading] for r in group]))
        body.append(cells)
    return format_table(headers, body, markdown=True)


def per_seed_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ["model", "budget", "seed", *(c[0] for c in COLUMNS)]
    body = [
        [r["model"], f"{r['budget']:.1f}", str(r["seed"])]
        + [f"{100 * r[heading]:.2f}" for heading, *_ in COLUMNS]
        for r in rows
    ]
    return format_table(headers, body, markdown=True)


def mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {std:.2f}"


if __name__ == "__main__":
    sys.exit(main())
