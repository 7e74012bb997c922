"""Drop against the average-bit budget: detrimental and robust pairs trained at each budget.

    python experiments/drop_vs_budget.py [--model cnn] [--budgets 3.0,4.0,5.0,6.0] [--seeds 0]

The same sweep as experiments/pairs_table.py (pairs it already trained are loaded, not
retrained) for one model over more budgets; `qrl.report` groups the runs; writes
runs/experiments/drop_vs_budget/report.{md,csv} and drop_vs_budget.png, and regenerates the
`drop_vs_budget` section of experiments/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import common

from qrl import plots, report
from qrl.runs import atomic_write

GROUP = ["bits.budget", "kind"]
CURVES = {  # what each line of the plot shows: (kind, metric)
    "detrimental pair, own policy": ("detrimental", "drop"),
    "robust pair, own policy": ("robust", "drop"),
    "detrimental pair, random bits": ("detrimental", "drop_random"),
    "detrimental pair, uniform bits": ("detrimental", "drop_uniform"),
}


def plot(path: Path, rows: list[dict[str, Any]], model: str) -> Path:
    """Mean drop (points) against the budget, one line per (pair, policy), seed bars if any."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, (kind, metric) in CURVES.items():
        mine = sorted((float(r["bits.budget"]), r[metric]) for r in rows if r["kind"] == kind)
        xs = [b for b, _ in mine]
        ys = [100 * s["mean"] for _, s in mine]
        errs = [100 * (s["std"] or 0.0) for _, s in mine]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
    ax.set(
        xlabel="average-bit budget (bits per layer and input)",
        ylabel="drop: full precision - quantized (points)",
        title=f"digits {model}: drop caused by quantization, by budget",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--budgets", default="3.0,4.0,5.0,6.0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/experiments/drop_vs_budget")
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides of qrl.pairs")
    args = parser.parse_args()
    common.enter_repo()
    command, scanned = common.pair_sweep(
        [args.model], args.budgets.split(","), args.seeds.split(","), args.overrides
    )
    out = Path(args.out)
    metrics = ["drop", "drop_uniform", "drop_random", "acc_fp", "acc_q", "mean_bits"]
    table, listed = common.write_report(out, scanned, GROUP, metrics, "drop")
    runs = scanned["finished"]
    _, _, rows = report.summarize(runs, GROUP, metrics)
    figure = plot(out / "drop_vs_budget.png", rows, args.model)
    section = "\n".join(
        [
            *common.heading(
                "Drop against the average-bit budget", command, common.trained_files(runs)
            ),
            "",
            f"Digits {args.model}: a detrimental and a robust pair trained at each average-bit "
            "budget (the policy's mean bits per layer and input; "
            f"{common.pair_settings(runs)}). Fractions, mean ± std [95% bootstrap interval of "
            "the mean] over seeds; **drop** = the pair's network in full precision minus the "
            "same network quantized under its own policy (`drop_uniform`: under the budget's "
            "uniform bits; `drop_random`: under random per-input bits at the budget).",
            "",
            table,
            *(["", listed] if listed else []),
            "",
            f"Rows as CSV: `{out}/report.csv`; the curves: `{figure}`.",
        ]
    )
    common.update_readme("drop_vs_budget", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
