"""Per-tensor vs per-sample vs per-channel: does a pair's failure depend on how the dynamic
quantizer shares its activation ranges?

    python experiments/granularity.py [--model cnn] [--budget 4.0] [--seeds 0] [--batch 64]

Trains (or loads) the model's detrimental and robust pairs at the budget (the sweep of
experiments/pairs_table.py), then quantizes each pair's network and the distilled student with
the same quantizer at each activation granularity (`per_tensor`: one range per batch and layer;
`per_sample`: one per input, what the pairs were trained under; `per_channel`: one per channel
over the batch) and scores them on the test split, `--batch` inputs at a time, under the pair's
own policy and under uniform bits. Rows go through `qrl.report`; writes
runs/experiments/granularity/report.{md,csv,png} and regenerates the `granularity` section of
experiments/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import common
import torch

from qrl.checkpoints import load_model
from qrl.pairing.evaluation import batched_bits, quantized_right
from qrl.pairs import load_pair
from qrl.quant import QuantConfig, quantized_copy
from qrl.scoring import accuracy_drop, correct, predict_logits, rate
from qrl.victim import load_victim, victim_dir

GRANULARITIES = ("per_tensor", "per_sample", "per_channel")
GROUP = ["network", "policy", "granularity"]


def rows_for(
    name: str,
    seed: int,
    network: torch.nn.Module,
    quant: QuantConfig,
    policies: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
) -> list[dict[str, Any]]:
    """One record per (policy, granularity): accuracy in full precision, quantized, and drop."""
    acc_fp = rate(correct(predict_logits(network, x), y))
    records = []
    for granularity in GRANULARITIES:
        quantized = quantized_copy(network, dataclasses.replace(quant, act_granularity=granularity))
        for policy, bits in policies.items():
            acc_q = rate(quantized_right(quantized.eval(), x, y, bits, batch=batch))
            records.append(
                {
                    "seed": seed,
                    "overrides": {"network": name, "policy": policy, "granularity": granularity},
                    "acc_fp": acc_fp,
                    "acc_q": acc_q,
                    "drop": accuracy_drop(acc_fp, acc_q),
                }
            )
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--budget", default="4.0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch", type=int, default=64, help="inputs quantized together")
    parser.add_argument("--bits", default="2,3,4,8", help="uniform bit-widths to score")
    parser.add_argument("--out", default="runs/experiments/granularity")
    args = parser.parse_args()
    common.enter_repo()
    command, scanned = common.pair_sweep([args.model], [args.budget], args.seeds.split(","))
    pairs = scanned["finished"]
    if not pairs:
        raise SystemExit("error: no finished pairs to quantize; see the sweep's output above")
    victim = load_victim(victim_dir(args.model), QuantConfig())
    x, y = victim.data.test.x, victim.data.test.y
    uniform = {f"uniform {b} bits": torch.tensor(int(b)) for b in args.bits.split(",")}
    student, _ = load_model(victim_dir(args.model) / "student.pt")
    quant = load_pair(pairs[0]["run_dir"]).quant
    records = rows_for("distilled student", 0, student, quant, uniform, x, y, args.batch)
    for run in pairs:
        pair = load_pair(run["run_dir"])
        policies = {"own policy": batched_bits(pair.bits, x), **uniform}
        name = f"{pair.kind} pair"
        records += rows_for(
            name, int(run["seed"]), pair.network, pair.quant, policies, x, y, args.batch
        )
    scored = {"finished": records, "failed": [], "unfinished": []}
    table, _ = common.write_report(Path(args.out), scored, GROUP, ["acc_fp", "acc_q", "drop"])
    section = "\n".join(
        [
            *common.heading(
                "Per-tensor vs per-sample vs per-channel activation ranges",
                command,
                common.trained_files(pairs),
            ),
            "",
            f"Digits {args.model}: the distilled student and the pairs trained at a "
            f"{float(args.budget)}-bit budget with per-sample activation ranges, each quantized "
            f"with the pairs' quantizer (`{pairs[0]['config']['quant']['name']}`: "
            f"{quant.weight_bits}-bit "
            f"{quant.weight_granularity} weights) at three activation granularities: "
            "`per_tensor` (one range per layer for the whole batch), `per_sample` (one per "
            "input) and `per_channel` (one per channel over the batch). Test split "
            f"({len(x)} images) in its stored order, in consecutive batches of {args.batch}: "
            "shared ranges depend on which inputs share a batch. Fractions, mean ± std [95% "
            "bootstrap interval of the mean] over the pairs' seeds (the student: one). "
            "**drop** = the network in full precision minus the same network quantized; "
            "`own policy`: the pair's per-input bits (under a shared range each input still "
            "gets its own bits).",
            "",
            table,
            "",
            f"Rows as CSV: `{args.out}/report.csv`; drops as a plot: `{args.out}/report.png`.",
        ]
    )
    common.update_readme("granularity", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
