"""Agents against the black-box baselines and random on the default distilled digits student.

    python experiments/agents_vs_baselines.py [--evaluations 1000] [--seeds 0,1,2]
        [--agents ppo,sac,es,optuna,random] [--reference student] [overrides]

A Hydra sweep of `python -m qrl.search` over the agents and seeds, all at the same budget of
evaluations, searching input distributions against the student's 4-bit per-sample
dynamic-quantized copy (`+experiment=digits_int4`); `qrl.report` groups the runs by agent.
With `--reference student` (the default) the reward and every gap are the drop quantization
causes (full-precision student minus quantized); `--reference teacher` rewards the gap to the
teacher. Writes <out>/report.{md,csv,png} and regenerates the `agents_vs_baselines_<reference>`
section of experiments/README.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import common

from qrl import report
from qrl.stats import difference_ci

METRICS = [
    "eval/gap",
    "eval/teacher_gap",
    "select/gap",
    "search/best_batch_gap",
    "search/evaluations_to_best_batch",
    "eval/valid",
    "confirm/gap",
]


def against_floor(runs: list[dict[str, Any]], name: str, floor: str = "random") -> list[str]:
    """Each agent's mean held-out value minus the floor's, with a 95% bootstrap interval that
    resamples each agent's seeds (with 3 seeds a rough interval: descriptive, not a test)."""
    values: dict[str, list[float]] = {}
    valid: dict[str, int] = {}
    for r in runs:
        if "eval/gap" in r:
            agent = str(r["overrides"]["agent"])
            values.setdefault(agent, []).append(float(r["eval/gap"]))
            valid[agent] = valid.get(agent, 0) + int(bool(r.get("eval/valid", True)))
    if floor not in values:
        return [f"(`{floor}` was not run: nothing to hold the agents against)"]
    lines = []
    for agent in sorted(set(values) - {floor}):
        diff, (low, high) = difference_ci(values[agent], values[floor])
        lines.append(
            f"- `{agent}` - `{floor}`: held-out {name} {diff:+.3f} [{low:+.3f}, {high:+.3f}] "
            f"({len(values[agent])} vs {len(values[floor])} seeds; valid on "
            f"{valid[agent]}/{len(values[agent])} vs {valid[floor]}/{len(values[floor])})"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.search_arguments(parser, agents="ppo,sac,es,optuna,random", name="agents_vs_baselines")
    args = parser.parse_args()
    out, command, scanned = common.search_from(args, "agents_vs_baselines")
    table, listed = common.write_report(out, scanned, ["agent"], METRICS, "eval/gap")
    runs = scanned["finished"]
    seeds = report.per_seed(runs, ["agent"], "eval/gap")
    cfg = runs[0]["config"]
    name, words = common.gap_words(args.reference)
    what = f"`eval/gap`, `select/gap`, `search/best_batch_gap` and `confirm/gap` are {words}"
    section = "\n".join(
        [
            *common.heading(
                f"Agents against baselines on the distilled digits student ({name})", command
            ),
            "",
            f"Input-distribution search (`space.mode={cfg['space']['mode']}`) against the "
            f"student's `{cfg['quant']['name']}` dynamic-quantized copy, {args.evaluations} "
            f"evaluations of {cfg['env']['batch_size']} inputs per run, search and honest "
            f"selection together. {what}. `eval/gap`: the chosen policy on "
            f"{cfg['eval']['samples']} held-out draws from the {cfg['eval']['split']} split; "
            "`select/gap`: its re-scored value on the validation split; "
            "`search/best_batch_gap`: the best single search batch (biased up); "
            "`confirm/gap`: the chosen policy on the first real int8 kernel (ONNX Runtime); "
            "`eval/teacher_gap`: teacher minus quantized, beside it whatever the reward; "
            "`eval/valid`: 1 when the teacher keeps its validity floor on the held-out draws. "
            "Fractions, mean ± std [95% bootstrap interval of the mean] over seeds.",
            "",
            table,
            "",
            "`eval/gap` per seed:",
            "",
            seeds,
            *(["", listed] if listed else []),
            "",
            "Each agent against random, the floor (difference of mean held-out "
            f"{name}s, [95% bootstrap over seeds]):",
            "",
            *against_floor(runs, name),
            "",
            "A run whose `eval/valid` is 0 chose a distribution on which the teacher falls below "
            "its validity floor on the held-out draws: its drop is real, but on inputs the "
            "environment counts as invalid.",
            "",
            f"Rows as CSV: `{out}/report.csv`; every run's `eval/gap` as a plot: "
            f"`{out}/report.png`.",
        ]
    )
    common.update_readme(f"agents_vs_baselines_{args.reference}", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
