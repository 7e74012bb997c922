"""The pairs table: detrimental and robust network-policy pairs across models and bit budgets.

    python experiments/pairs_table.py [--models cnn,mlp] [--budgets 3.0,4.0] [--seeds 0]

One Hydra sweep of `python -m qrl.pairs` (both kinds, every model's cached digits victim,
every average-bit budget, every seed; finished pairs are loaded, not retrained), grouped by
`qrl.report`; writes runs/experiments/pairs_table/report.{md,csv,png} and regenerates the
`pairs_table` section of experiments/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import common

from qrl import report

GROUP = ["victim.model", "bits.budget", "kind"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--budgets", default="3.0,4.0")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="runs/experiments/pairs_table")
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides of qrl.pairs")
    args = parser.parse_args()
    command, wanted = common.pair_sweep(
        args.models.split(","),
        args.budgets.split(","),
        args.seeds.split(","),
        common.PAIRS_ROOT,
        args.overrides,
    )
    scanned = common.scan(common.PAIRS_ROOT, wanted)
    runs = scanned["finished"]
    if not runs:
        print("error: no finished pairs; see the sweep's output above", file=sys.stderr)
        return 1
    table = report.compare(runs, GROUP, common.PAIR_METRICS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys, metrics, rows = report.summarize(runs, GROUP, common.PAIR_METRICS)
    report.write_csv(out / "report.csv", keys, metrics, rows)
    report.compare_plot(out / "report.png", runs, GROUP, "drop")
    listed = report.not_finished(scanned, GROUP)
    (out / "report.md").write_text(table + ("\n\n" + listed if listed else "") + "\n")
    section = "\n".join(
        [
            "## Network-policy pairs across models and bit budgets",
            "",
            "```bash",
            f"python experiments/pairs_table.py --models {args.models} --budgets "
            f"{args.budgets} --seeds {args.seeds}",
            "```",
            "",
            common.stamp(),
            f"The sweep it runs: `{common.shown(command)}`.",
            "",
            "Each row: one pair trained from the model's distilled digits student (Stage B: PPO "
            "bit-width policy and KD + QAT network together, 60 rounds), evaluated on the digits "
            "test split (449 images). Fractions, mean over seeds (± std [95% bootstrap interval] "
            "with two seeds or more). **drop** = the pair's network in full precision (`acc_fp`) "
            "minus the same network quantized under its own policy (`acc_q`); `drop_uniform`: "
            "under the budget's uniform bits; `drop_random`: under random per-input bits at the "
            "budget; `drop_onnx_int8`: on ONNX Runtime's dynamic int8 kernels (8 bits, no "
            "policy); `acc_teacher` is the teacher's accuracy, for scale. Quantizer: "
            "`int4_dynamic` (per-sample asymmetric activations at the policy's bits, 8-bit "
            "per-channel weights), bit set {2,3,4,5,6,8}.",
            "",
            table,
            *(["", listed] if listed else []),
            "",
            f"Rows as CSV: `{out}/report.csv`; drops as a plot: `{out}/report.png`.",
        ]
    )
    common.update_readme("pairs_table", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
