"""The pairs table: detrimental and robust network-policy pairs across models and bit budgets.

    python experiments/pairs_table.py [--models cnn,mlp,resnet18] [--budgets 4.0] [--seeds 0,1,2]

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

GROUP = ["victim.model", "bits.budget", "kind"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,mlp,resnet18")
    parser.add_argument("--budgets", default="4.0")  # the CNN's other budgets: drop_vs_budget
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/experiments/pairs_table")
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides of qrl.pairs")
    args = parser.parse_args()
    common.enter_repo()
    command, scanned = common.pair_sweep(
        args.models.split(","), args.budgets.split(","), args.seeds.split(","), args.overrides
    )
    out = Path(args.out)
    table, listed = common.write_report(out, scanned, GROUP, common.PAIR_METRICS, "drop")
    runs = scanned["finished"]
    section = "\n".join(
        [
            *common.heading(
                "Network-policy pairs across models and bit budgets",
                command,
                common.trained_files(runs),
            ),
            "",
            "Each row: pairs trained from the model's distilled digits student (Stage B: a PPO "
            "bit-width policy and the network, by KD + QAT, trained together; "
            f"{common.pair_settings(runs)}). Fractions, mean ± std [95% bootstrap interval of "
            "the mean] over seeds. **drop** = the pair's network in full precision (`acc_fp`) "
            "minus the same network quantized under its own policy (`acc_q`); `drop_uniform`: "
            "under the budget's uniform bits; `drop_random`: under random per-input bits at the "
            "budget; `drop_onnx_int8`: on ONNX Runtime's dynamic int8 kernels (8 bits, no "
            "policy, one image at a time). `acc_teacher` is the teacher's accuracy, for scale "
            "(not a gap).",
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
