"""Each quantizer preset against the real int8 kernel it models, on stressed digits models.

    python experiments/simulator_fidelity.py [--out runs/experiments/simulator_fidelity]

Runs `python benchmarks/fidelity.py` (the whole member family, every kernel, the cause
ablation; about 80 s on two cores) and regenerates the `simulator_fidelity` section of
experiments/README.md from the tables it writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import common

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"

ABOUT = """\
Members (`qrl.fidelity`): the distilled digits CNN student with a quarter of one conv block's
channels, or one channel, rescaled by k through BatchNorm's gamma and beta and the next conv's
weights divided by k (`qrl.stress.rescale_channels`: the float function is unchanged); a digits
MLP with hidden units rescaled the same way (`rescale_units`) and with planted brightness-outlier
units. Every member runs on every kernel that takes its layers (torch.ao quantizes Linear layers
only, so it gets the MLPs), once one image per call and once the whole test split in one call.
Accuracies are of the quantized model on the digits test split (not a gap or a drop).

The causes, each one row of the second table: (1) the exporter folds BatchNorm into the conv
before ONNX Runtime quantizes the weights, so the rescaled gamma lands in the conv weights;
(2) ONNX Runtime's dynamic `ConvInteger` has one weight scale per tensor even with
`per_channel=True` (only `MatMulInteger` weights are per channel), so the rescaled channels
stretch the grid until the other channels' weights round to zero; (3) its symmetric int8 weight
grid is [-127, 127] with scale absmax / 127, not torch's [-128, 127] with absmax / 127.5.
(4) On x86 CPUs without VNNI, ONNX Runtime's 8-bit-weight MatMul adds u8 x s8 products in
saturating 16-bit pairs (its ConvInteger stays exact). `onnx_int8_dynamic` simulates the path
this machine's CPU runs (`accumulation: auto`; the line below names it), and the last table checks
both simulated paths against the kernel's outputs recorded on such a CPU
(`tests/fixtures/onnxruntime-x86-avx2`); the 7-bit-weight path
(`onnx_int8_dynamic_reduce_range`) cannot saturate."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/experiments/simulator_fidelity")
    args = parser.parse_args()
    common.enter_repo()
    tables = Path(args.out) / "fidelity.md"
    common.run([sys.executable, str(BENCHMARK), "--out", str(tables)], sweep=False)
    text = tables.read_text().strip().replace("\n### ", "\n#### ")
    section = "\n".join(
        [
            *common.heading(
                "Simulator fidelity: each preset against its real int8 kernel, on stressed models"
            ),
            "",
            ABOUT,
            "",
            text,
        ]
    )
    common.update_readme("simulator_fidelity", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
