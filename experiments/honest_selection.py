"""Honest selection: does the held-out value of the chosen policy stay inside the interval of the
search's own re-scored estimate, on the default distilled digits student?

    python experiments/honest_selection.py [--agents es,ppo] [--seeds 0,1,2] [--evaluations 1000]
        [--reference student]

The search spends 95% of its budget; the rest re-scores its best distinct policies on fresh
validation batches and picks the best re-scored one (`qrl.selection`). This script runs the
sweep, then, per run, sets the best single search batch, the chosen policy's re-scored value
and interval, and its held-out value and interval side by side; writes
runs/experiments/honest_selection_<reference>/report.{md,csv,png} and regenerates the
`honest_selection_<reference>` section of experiments/README.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import common

from qrl.tables import format_table

METRICS = ["search/best_batch_gap", "select/gap", "eval/gap", "eval/acc_teacher", "eval/valid"]


def per_run(runs: list[dict[str, Any]]) -> tuple[str, int, int]:
    """One row per run, and how many runs hold the held-out value inside the re-scored
    interval (and how many of those keep the teacher valid)."""
    rows, inside, valid = [], 0, 0
    for r in sorted(runs, key=lambda r: (str(r["overrides"]["agent"]), int(r["seed"]))):
        low, high = r["select/gap_ci_low"], r["select/gap_ci_high"]
        held = r["eval/gap"]
        ok = low <= held <= high
        inside += ok
        valid += ok and bool(r["eval/valid"])
        ratio = held / r["select/gap"] if r["select/gap"] else float("nan")
        rows.append(
            [
                r["overrides"]["agent"],
                str(r["seed"]),
                f"{r['search/best_batch_gap']:.3f}",
                f"{r['select/gap']:.3f} [{low:.3f}, {high:.3f}]",
                f"{held:.3f} [{r['eval/gap_ci_low']:.3f}, {r['eval/gap_ci_high']:.3f}]",
                "yes" if ok else "no",
                f"{ratio:.2f}",
                str(r["select/search_rank"]),
                f"{r['eval/acc_teacher']:.3f}",
            ]
        )
    header = [
        "agent",
        "seed",
        "best single batch (`search/best_batch_gap`)",
        "chosen: re-scored [CI]",
        "chosen: held-out [CI]",
        "held-out inside the re-scored CI",
        "held-out / re-scored",
        "search rank of the chosen",
        "held-out teacher acc",
    ]
    return format_table(header, rows, markdown=True), inside, valid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.search_arguments(parser, agents="es,ppo", name="honest_selection")
    args = parser.parse_args()
    out, command, scanned = common.search_from(args, "honest_selection")
    _, listed = common.write_report(out, scanned, ["agent"], METRICS, "eval/gap")
    runs = scanned["finished"]
    table, inside, valid = per_run(runs)
    cfg = runs[0]["config"]
    name, words = common.gap_words(args.reference)
    section = "\n".join(
        [
            *common.heading(f"Honest selection on the distilled digits student ({name})", command),
            "",
            f"Each run spends {args.evaluations} evaluations: the search "
            f"{100 * (1 - cfg['select']['fraction']):.0f}% of them, and the rest re-score its "
            f"{cfg['select']['candidates']} best distinct policies on fresh batches of the "
            f"{cfg['select']['split']} split (never drawn by the search); the best re-scored "
            "policy is chosen, then scored on "
            f"{cfg['eval']['samples']} held-out draws from the {cfg['eval']['split']} split. "
            f"All values are {words}, as fractions; intervals: "
            f"{100 * cfg['eval']['ci_level']:.0f}% cluster bootstrap over source images.",
            "",
            table,
            *(["", listed] if listed else []),
            "",
            f"Held-out value inside the re-scored interval: {inside} of {len(runs)} runs "
            f"({valid} of them with the teacher above its validity floor on the held-out "
            "draws).",
        ]
    )
    common.update_readme(f"honest_selection_{args.reference}", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
