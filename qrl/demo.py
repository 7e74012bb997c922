"""`make demo`: the whole pipeline on the default data set, offline, with a table per stage.

python -m qrl.demo out=runs/demo
"""

from __future__ import annotations

import sys
from pathlib import Path

from qrl import distill, quant_eval
from qrl.config import load_config
from qrl.errors import QrlError


def main(argv: list[str]) -> int:
    out = Path("runs/demo")
    extra = []
    for arg in argv:
        if arg.startswith("out="):
            out = Path(arg.split("=", 1)[1])
        else:
            extra.append(arg)
    try:
        print("== stage A: teacher and distilled student (python -m qrl.distill)")
        cfg = load_config("distill", [f"out={out / 'distill'}", *extra])
        distill.run(cfg)
        print(
            "\n== dynamic quantization per bit-width and on int8 kernels (python -m qrl.quant_eval)"
        )
        cfg = load_config("quant_eval", [f"run={out / 'distill'}", f"out={out / 'quant_eval'}"])
        quant_eval.run(cfg)
    except QrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\ndemo outputs are in {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
