"""Agents against the random baseline on the default distilled digits student.

    python experiments/agents_vs_random.py [--evaluations 1000] [--seeds 0,1,2]

A Hydra sweep of `python -m qrl.search` over agent in {ppo, sac, es, random} and the seeds, all
at the same budget of evaluations, searching input distributions against the student's 4-bit
per-sample dynamic-quantized copy (`+experiment=digits_int4`); then `python -m qrl.report`
prints mean ± std over seeds and every seed's held-out gap.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from qrl import report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--agents", default="ppo,sac,es,random")
    parser.add_argument("--out", default="runs/experiments/agents_vs_random")
    parser.add_argument(
        "overrides", nargs="*", help="further Hydra overrides, e.g. env.reference=student"
    )
    args = parser.parse_args()
    command = [
        sys.executable,
        "-m",
        "qrl.search",
        "-m",
        "+experiment=digits_int4",
        f"agent={args.agents}",
        f"seed={args.seeds}",
        f"budget.evaluations={args.evaluations}",
        f"hydra.sweep.dir={args.out}",
        "progress=false",
        *args.overrides,
    ]
    print(" ".join(command[1:]))
    subprocess.run(command, check=True)
    return report.main([args.out, "--out", str(Path(args.out) / "report.md")])


if __name__ == "__main__":
    sys.exit(main())
