"""Cost of simulating ONNX Runtime's saturating int8 path, against the exact one, side by side.

    python benchmarks/accumulation_cost.py [--repeats 20]

`onnx_int8_dynamic` with `accumulation=exact` (int32, CPUs with VNNI) and
`accumulation=saturating_pairs` (x86 without VNNI: uint8 x int8 MatMul products summed in
saturating 16-bit pairs; convolutions stay exact), per image (`per_sample`) and per batch, on the
digits CNN student's shape (width 16, the 449 test images), a digits MLP and ResNet-18 (width 16
on digits, width 64 on 32x32x3 inputs). Only Linear layers take the saturating path, so a
network's cost depends on how much of its work is MatMul. Timings interleave float, exact and
saturating models (median of the repeats) so that machine load affects all alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from qrl.models import MLP, ResNet18, SmallCNN
from qrl.quant import preset, quantized_copy


@torch.no_grad()
def _seconds(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def measure(model: nn.Module, x: torch.Tensor, granularity: str, repeats: int) -> dict[str, float]:
    """Median forward seconds of the float model and of both simulated accumulations."""
    model = model.eval()
    models = {"float": model}
    for path in ("exact", "saturating_pairs"):
        cfg = preset("onnx_int8_dynamic", act_granularity=granularity, accumulation=path)
        models[path] = quantized_copy(model, cfg).eval()
    for m in models.values():  # warm-up: allocator, weight cache, oneDNN primitives
        for _ in range(2):
            _seconds(m, x)
    samples: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for name, m in models.items():
            samples[name].append(_seconds(m, x))
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    digits = (449, 1, 8, 8)
    cases = [
        ("digits CNN (width 16)", SmallCNN(1, 10, (8, 8), width=16), digits),
        ("digits MLP (256, 128)", MLP(1, 10, (8, 8)), digits),
        ("ResNet-18 (width 16), digits", ResNet18(1, 10, (8, 8), width=16), digits),
        ("ResNet-18 (width 64), 3x32x32", ResNet18(3, 10, (32, 32)), (128, 3, 32, 32)),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for name, model, shape in cases:
        x = torch.rand(shape)
        for granularity, use in (("per_sample", "per image"), ("per_tensor", "per batch")):
            t = measure(model, x, granularity, args.repeats)
            print(
                f"{name:30s} batch {shape[0]:3d} {use:9s} float {1e3 * t['float']:7.2f} ms  "
                f"exact {1e3 * t['exact']:7.2f} ms  saturating {1e3 * t['saturating_pairs']:7.2f} "
                f"ms  saturating / exact {t['saturating_pairs'] / t['exact']:5.2f}x"
            )


if __name__ == "__main__":
    main()
