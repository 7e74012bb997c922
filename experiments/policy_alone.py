"""How much can a learned bit-width policy alone hurt an ordinary distilled student?

    python experiments/policy_alone.py [--distill runs/demo/seed0/distill] [--out runs/policy_alone]

PPO trains a per-input bit-width policy on the contextual QuantBits task (detrimental reward)
with the network frozen (`python -m qrl.pairs kind=detrimental train.net_steps=0`). On the test
split it is compared, at the same 4.0-bit budget, with random per-input bits and with the
label-using per-input worst case: an input counts as broken if *any* fixed per-layer pattern at
the budget makes the quantized student wrong on it (an upper bound for any bit policy).
Every number is a drop: the student's full-precision accuracy minus its quantized accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from qrl import distill, pairs
from qrl.config import instantiate, load_config
from qrl.pairing.evaluation import fixed_patterns, quantized_right
from qrl.pairs import load_pair
from qrl.policies import RandomBits
from qrl.runs import load_run_config
from qrl.scoring import correct, predict_logits, rate
from qrl.tables import format_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distill", type=Path, default=None, help="a distill run dir")
    parser.add_argument("--out", type=Path, default=Path("runs/experiments/policy_alone"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    distill_dir = args.distill or args.out / "distill"
    if not (distill_dir / "metrics.json").is_file():
        distill.run(load_config("distill", [f"out={distill_dir}", f"seed={args.seed}"]))
    pair_dir = args.out / "policy"
    pairs.run(
        load_config(
            "pairs",
            [
                "kind=detrimental",
                "train.net_steps=0",  # the network stays the distilled student
                f"victim.run={distill_dir}",
                f"out={pair_dir}",
                f"seed={args.seed}",
            ],
        )
    )
    pair = load_pair(pair_dir)
    test = instantiate(load_run_config(distill_dir).data).test
    x, y = test.x, test.y
    acc_fp = rate(correct(predict_logits(pair.network, x), y))
    q = pair.quantized
    acc_policy = rate(quantized_right(q, x, y, pair.bits))
    acc_random = rate(quantized_right(q, x, y, RandomBits(pair.decoder, args.seed)))
    patterns, how = fixed_patterns(pair.decoder)
    survives = torch.ones(len(y), dtype=torch.bool)
    for p in patterns:
        survives &= quantized_right(q, x, y, torch.from_numpy(p))
    acc_worst = rate(survives)
    rows = [
        ["PPO bit-width policy (learned, network frozen)", acc_policy],
        ["random per-input bits", acc_random],
        [f"per-input worst case over {how} budget patterns (uses labels)", acc_worst],
    ]
    print(f"digits student, seed {args.seed}, test split, full precision {100 * acc_fp:.2f}%")
    print(
        format_table(
            ["bit policy at a 4.0-bit budget", "quantized acc %", "drop (FP − quantized), points"],
            [[name, f"{100 * a:.2f}", f"{100 * (acc_fp - a):.2f}"] for name, a in rows],
            markdown=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
