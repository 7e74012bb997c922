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
from pathlib import Path
from typing import Any

import common

from qrl import report

METRICS = [
    "eval/gap",
    "eval/teacher_gap",
    "select/gap",
    "search/best_batch_gap",
    "search/evaluations_to_best_batch",
    "eval/valid",
    "confirm/gap",
]


def verdicts(rows: list[dict[str, Any]], floor: str = "random") -> list[str]:
    """Each agent's mean held-out gap against the floor's bootstrap interval over seeds."""
    by_agent = {row["agent"]: row["eval/gap"] for row in rows}
    if floor not in by_agent or by_agent[floor]["ci"] is None:
        return [f"(no interval for `{floor}`: it needs two seeds or more)"]
    low, high = by_agent[floor]["ci"]
    lines = []
    for agent, stat in by_agent.items():
        if agent == floor:
            continue
        mean = stat["mean"]
        where = "above" if mean > high else "below" if mean < low else "inside"
        lines.append(
            f"- `{agent}`: mean held-out gap {mean:.3f}, {where} `{floor}`'s 95% interval "
            f"[{low:.3f}, {high:.3f}]"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--agents", default="ppo,sac,es,optuna,random")
    parser.add_argument("--reference", default="student", choices=["student", "teacher"])
    parser.add_argument("--out", help="default: runs/experiments/agents_vs_baselines_<reference>")
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides of qrl.search")
    args = parser.parse_args()
    out = Path(args.out or f"runs/experiments/agents_vs_baselines_{args.reference}")
    command = [
        sys.executable,
        "-m",
        "qrl.search",
        "-m",
        "+experiment=digits_int4",
        f"agent={args.agents}",
        f"seed={args.seeds}",
        f"budget.evaluations={args.evaluations}",
        f"env.reference={args.reference}",
        f"hydra.sweep.dir={out}",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",
        "progress=false",
        *args.overrides,
    ]
    common.run(command)
    scanned = common.scan(out, {"agent": args.agents.split(","), "seed": args.seeds.split(",")})
    runs = scanned["finished"]
    if not runs:
        print("error: no finished searches; see the sweep's output above", file=sys.stderr)
        return 1
    keys, metrics, rows = report.summarize(runs, ["agent"], METRICS)
    table = report.compare(runs, ["agent"], METRICS)
    seeds = report.per_seed(runs, ["agent"], "eval/gap")
    report.write_csv(out / "report.csv", keys, metrics, rows)
    report.compare_plot(out / "report.png", runs, ["agent"], "eval/gap")
    listed = report.not_finished(scanned, ["agent"])
    (out / "report.md").write_text(table + "\n\n" + seeds + ("\n\n" + listed if listed else ""))
    gap = (
        "the drop quantization causes: full-precision student accuracy minus quantized accuracy"
        if args.reference == "student"
        else "the gap to the teacher: teacher accuracy minus quantized accuracy"
    )
    section = "\n".join(
        [
            f"## Agents against baselines on the distilled digits student "
            f"(gap = {args.reference} - quantized)",
            "",
            "```bash",
            f"python experiments/agents_vs_baselines.py --evaluations {args.evaluations} "
            f"--seeds {args.seeds} --agents {args.agents} --reference {args.reference}",
            "```",
            "",
            common.stamp(),
            f"The sweep it runs: `{common.shown(command)}`.",
            "",
            "Input-distribution search (20 dimensions) against the 4-bit per-sample "
            f"dynamic-quantized student, {args.evaluations} evaluations of 256 inputs per run, "
            "search and honest selection together. Every gap is "
            f"{gap}, as a fraction. `eval/gap`: the chosen policy's held-out gap on 4,096 "
            "draws from the test split; `select/gap`: its re-scored gap on the validation "
            "split; `search/best_batch_gap`: the best single search batch (biased up); "
            "`eval/teacher_gap`: teacher minus quantized, beside it; `eval/valid`: whether the "
            "teacher keeps its validity floor on the held-out draws; "
            "`confirm/gap`: the chosen policy on the first real int8 kernel (ONNX Runtime). "
            "Mean ± std [95% bootstrap interval] over seeds.",
            "",
            table,
            "",
            "`eval/gap` per seed:",
            "",
            seeds,
            *(["", listed] if listed else []),
            "",
            "Against random, the floor:",
            "",
            *verdicts(rows),
            "",
            f"Rows as CSV: `{out}/report.csv`; every run's gap as a plot: `{out}/report.png`.",
        ]
    )
    common.update_readme(f"agents_vs_baselines_{args.reference}", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
