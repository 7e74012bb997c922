"""`make demo`: the whole pipeline on the default data set, offline, with a table per stage.

    python -m qrl.demo out=runs/demo [evaluations=300]

1. distil a student from a teacher on digits (`qrl.distill`);
2. measure its accuracy under dynamic quantization per bit-width and on int8 kernels
   (`qrl.quant_eval`);
3. search input distributions that break its 4-bit dynamic-quantized copy, PPO against the
   random baseline at the same budget (`qrl.search`), and compare them (`qrl.report`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from qrl import distill, quant_eval, search
from qrl.config import load_config
from qrl.errors import QrlError
from qrl.report import collect_runs, compare


def main(argv: list[str]) -> int:
    out, evaluations = Path("runs/demo"), 300
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "out":
            out = Path(value)
        elif key == "evaluations":
            evaluations = int(value)
        else:
            print(
                f"error: unknown argument {arg!r} (use out=<dir>, evaluations=<n>)", file=sys.stderr
            )
            return 2
    try:
        print("== 1. teacher and distilled student (python -m qrl.distill)")
        distill.run(load_config("distill", [f"out={out / 'distill'}"]))
        print("\n== 2. accuracy per bit-width and on int8 kernels (python -m qrl.quant_eval)")
        quant_eval.run(
            load_config("quant_eval", [f"run={out / 'distill'}", f"out={out / 'quant_eval'}"])
        )
        for agent in ("ppo", "random"):
            print(f"\n== 3. search with {agent}, {evaluations} evaluations (python -m qrl.search)")
            search.run(
                load_config(
                    "search",
                    [
                        f"agent={agent}",
                        f"victim.run={out / 'distill'}",
                        f"budget.evaluations={evaluations}",
                        f"out={out / 'search' / agent}",
                    ],
                )
            )
        print("\n== PPO against the random baseline (python -m qrl.report)")
        print(compare(collect_runs(out / "search"), markdown=False))
    except QrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\ndemo outputs are in {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
