"""Simulator fidelity on the whole stressed-model family (qrl.fidelity), as markdown tables.

    python benchmarks/fidelity.py [--out runs/bench/fidelity.md] [--samples 449]

1. Per real kernel: how many (member, kernel) cases the preset that models it gets within 2
   accuracy points (per image and whole batch) with >= 99% argmax agreement wherever the kernel
   keeps >= 50% accuracy; the worst gaps.
2. The causes, one at a time, on ONNX Runtime's default kernel: the preset as it was (no
   BatchNorm folding, per-channel conv weights, torch's weight grid), then each cause modelled.
3. Accuracy of simulator / kernel (per image) on the CNN with a quarter of one block's channels
   rescaled by k, with the preset as it was and as it is.
4. Both simulated accumulations (exact int32, saturating 16-bit pairs) against ONNX Runtime's
   outputs recorded on an x86 CPU without VNNI (tests/fixtures/onnxruntime-x86-avx2): whatever
   this machine's CPU, the live kernel is checked against the path `accumulation: auto` picks
   for it (1.), and the recorded one against both.

The CNN is the default digits student (distilled once into qrl's cache), the MLP a small digits
MLP trained here; inputs are the digits test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from qrl.fidelity import (
    POINTS,
    RECORDED_USES,
    RECORDED_WEIGHTS,
    Fidelity,
    Kernel,
    Member,
    cnn_members,
    compare,
    kernel_logits,
    kernels,
    mlp_members,
    recorded_misses,
    run_suite,
    simulator_logits,
    train_digits_mlp,
)
from qrl.quant import preset
from qrl.quant.cpu import describe_paths
from qrl.tables import format_table
from qrl.victim import default_victim

RECORDED = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "onnxruntime-x86-avx2"

# onnx_int8_dynamic before the causes were modelled, then with each added in turn.
CAUSES: list[tuple[str, dict]] = [
    (
        "as it was",
        {"fold_batchnorm": False, "conv_weight_granularity": None, "weight_range": "full"},
    ),
    ("+ BatchNorm folded", {"conv_weight_granularity": None, "weight_range": "full"}),
    ("+ per-tensor conv weights", {"weight_range": "full"}),
    ("+ narrow [-127, 127] grid", {}),
]


def summary(results: list[Fidelity]) -> str:
    rows = []
    for label in dict.fromkeys(r.kernel for r in results):
        mine = [r for r in results if r.kernel == label]
        alive = [r for r in mine if r.acc_kernel_image >= 0.5 or r.acc_kernel_batch >= 0.5]
        rows.append(
            [
                label,
                mine[0].preset,
                f"{sum(not r.problems() for r in mine)}/{len(mine)}",
                f"{100 * max(abs(r.acc_sim_image - r.acc_kernel_image) for r in mine):.2f}",
                f"{100 * max(abs(r.acc_sim_batch - r.acc_kernel_batch) for r in mine):.2f}",
                _min_agreement(alive),
                f"{max(max(r.max_diff_image, r.max_diff_batch) for r in mine):.3g}",
            ]
        )
    return format_table(
        [
            "kernel",
            "simulator preset",
            "cases within targets",
            "worst |acc diff| per image (points)",
            "worst |acc diff| batch (points)",
            "min agreement, kernel acc >= 50%",
            "max |logit diff|",
        ],
        rows,
        markdown=True,
    )


def _min_agreement(results: list[Fidelity]) -> str:
    if not results:
        return "-"
    values = [r.agree_image for r in results if r.acc_kernel_image >= 0.5]
    values += [r.agree_batch for r in results if r.acc_kernel_batch >= 0.5]
    return f"{100 * min(values):.2f}%"


def causes(
    members: list[Member], kernel: Kernel, x: torch.Tensor, y: torch.Tensor
) -> tuple[str, dict[str, list[Fidelity]]]:
    by_variant: dict[str, list[Fidelity]] = {label: [] for label, _ in CAUSES}
    for member in members:
        real = kernel_logits(kernel.build(member.model, x[:8]), x)
        with torch.no_grad():
            fp = member.model(x)
        for label, overrides in CAUSES:
            cfg = dataclasses.replace(kernel.preset, **overrides)
            sim = simulator_logits(member.model, cfg, x)
            by_variant[label].append(compare(member, kernel, label, sim, real, fp, y))
    rows = []
    for label, results in by_variant.items():
        alive = [r for r in results if r.acc_kernel_image >= 0.5 or r.acc_kernel_batch >= 0.5]
        rows.append(
            [
                label,
                f"{sum(not r.problems() for r in results)}/{len(results)}",
                f"{100 * max(abs(r.acc_sim_image - r.acc_kernel_image) for r in results):.2f}",
                f"{100 * max(abs(r.acc_sim_batch - r.acc_kernel_batch) for r in results):.2f}",
                _min_agreement(alive),
            ]
        )
    table = format_table(
        [
            "onnx_int8_dynamic",
            "cases within targets",
            "worst |acc diff| per image (points)",
            "worst |acc diff| batch (points)",
            "min agreement, kernel acc >= 50%",
        ],
        rows,
        markdown=True,
    )
    return table, by_variant


def rescaling_table(results: list[Fidelity], strengths: list[float]) -> str:
    """simulator / kernel accuracy per image, a quarter of one block's channels rescaled."""
    rows = []
    for position in ("first", "second", "third"):
        cells = []
        for k in strengths:
            name = f"cnn channels {position} 1/4 k={k:g}"
            (r,) = [r for r in results if r.member == name and r.kernel == "onnxruntime"]
            cells.append(f"{r.acc_sim_image:.2f} / {r.acc_kernel_image:.2f}")
        rows.append([f"{position}, 1/4", *cells])
    return format_table(
        ["rescaled block, fraction", *[f"k={k:g}" for k in strengths]], rows, markdown=True
    )


def recorded_table() -> str:
    """Cases within targets against the recorded AVX2 kernel, per accumulation, weight grid and
    use (the recording is the live kernel of a CPU class this machine may not have)."""
    recorded = torch.load(RECORDED / "models.pt", weights_only=False)
    rows = []
    for accumulation in ("saturating_pairs", "exact"):
        misses = recorded_misses(recorded, accumulation)
        cells = []
        for weights in RECORDED_WEIGHTS:
            for use in RECORDED_USES:
                cases = [p for key, p in misses.items() if key.endswith(f"{weights} per {use}")]
                cells.append(f"{sum(not p for p in cases)} / {len(cases)}")
        rows.append([accumulation, *cells])
    header = [f"{w} weights, per {u}" for w in RECORDED_WEIGHTS for u in RECORDED_USES]
    return format_table(["simulated accumulation", *header], rows, markdown=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    parser.add_argument("--samples", type=int, default=None, help="test inputs (default: all)")
    args = parser.parse_args()

    started = time.perf_counter()
    victim = default_victim(preset("int8_dynamic"), progress=False)
    x, y = victim.data.test.x, victim.data.test.y
    if args.samples:
        x, y = x[: args.samples], y[: args.samples]
    cnn = victim.student.eval()
    mlp = train_digits_mlp(victim.data)
    cnn_family = list(cnn_members(cnn, x))
    members = cnn_family + list(mlp_members(mlp, x))
    results = run_suite(members, x, y, progress=True)

    onnx = next(k for k in kernels() if k.label == "onnxruntime")
    auto_path = preset("onnx_int8_dynamic").accumulation_path()
    ablation, by_variant = causes(members, onnx, x, y)
    strengths = [100.0, 200.0, 300.0, 500.0, 1000.0]
    parts = [
        f"{len(members)} members ({len(cnn_family)} CNN, {len(members) - len(cnn_family)} MLP), "
        f"{len(results)} (member, kernel) cases, {len(x)} digits test inputs; targets: within "
        f"{100 * POINTS:.0f} points, >= 99% agreement where the kernel keeps >= 50%.",
        f"onnx_int8_dynamic (accumulation=auto) {describe_paths(auto_path)}.",
        "### Every kernel against the preset that models it\n\n" + summary(results),
        "### Each cause, on ONNX Runtime's default kernel (all members)\n\n" + ablation,
        "### Accuracy simulator / kernel, ONNX Runtime, per image: onnx_int8_dynamic as it was\n\n"
        + rescaling_table(by_variant["as it was"], strengths),
        "### The same, onnx_int8_dynamic as it is\n\n" + rescaling_table(results, strengths),
        "### ONNX Runtime recorded on x86 without VNNI (tests/fixtures/onnxruntime-x86-avx2), "
        "against each simulated accumulation\n\n" + recorded_table(),
        f"({time.perf_counter() - started:.0f} s)",
    ]
    text = "\n\n".join(parts) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
