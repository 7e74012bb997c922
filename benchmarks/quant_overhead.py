"""Forward time of the fake-quantized copy over the float model, measured side by side.

    python benchmarks/quant_overhead.py [--repeats 30]

Cases: the small CNN on 8x8 digits-shaped inputs (batch 512) and ResNet-18 on 32x32x3 inputs
(batch 128), each at uniform 4-bit activations and at per-input bits (every input its own
random per-layer bit-widths from {2,...,8}). Targets: <= 1.5x float for uniform bits and
<= 2.5x for per-input bits on the small CNN. Timings interleave the float and quantized models
(median of the repeats) so that machine load affects both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from qrl.models import ResNet18, SmallCNN
from qrl.quant import QuantConfig, layer_names, quantized_copy, set_bits_


@torch.no_grad()
def _time(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def measure(model: nn.Module, x: torch.Tensor, repeats: int, seed: int = 0) -> dict[str, float]:
    """Median forward seconds of float, uniform-bits and per-input-bits models."""
    model = model.eval()
    uniform = set_bits_(quantized_copy(model, QuantConfig(act_bits=4)).eval(), 4)
    per_input = quantized_copy(model, QuantConfig(act_bits=4)).eval()
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(2, 9, (x.shape[0], len(layer_names(per_input))), generator=gen)
    set_bits_(per_input, bits)
    models = {"float": model, "uniform": uniform, "per_input": per_input}
    for m in models.values():  # warm-up: allocator, weight cache, oneDNN primitives
        for _ in range(3):
            _time(m, x)
    samples: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for name, m in models.items():
            samples[name].append(_time(m, x))
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = [
        (
            "small CNN (width 16), 1x8x8, batch 512",
            SmallCNN(1, 10, (8, 8), width=16),
            (512, 1, 8, 8),
            1.5,
            2.5,
        ),
        (
            "small CNN (width 64), 1x8x8, batch 512",
            SmallCNN(1, 10, (8, 8), width=64),
            (512, 1, 8, 8),
            1.5,
            2.5,
        ),
        (
            "ResNet-18 (width 64), 3x32x32, batch 128",
            ResNet18(3, 10, (32, 32)),
            (128, 3, 32, 32),
            None,
            None,
        ),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for name, model, shape, uniform_target, per_input_target in cases:
        repeats = args.repeats if "ResNet" not in name else max(3, args.repeats // 6)
        t = measure(model, torch.rand(shape), repeats)
        for kind, target in (
            ("uniform 4-bit", uniform_target),
            ("per-input bits", per_input_target),
        ):
            key = "uniform" if kind.startswith("uniform") else "per_input"
            ratio = t[key] / t["float"]
            verdict = (
                ""
                if target is None
                else f"  target <= {target}x: {'met' if ratio <= target else 'NOT met'}"
            )
            print(
                f"{name:42s} {kind:15s} float {t['float'] * 1e3:8.2f} ms  quantized "
                f"{t[key] * 1e3:8.2f} ms  ratio {ratio:5.2f}x{verdict}"
            )


if __name__ == "__main__":
    main()
