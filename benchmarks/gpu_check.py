"""GPU against CPU, side by side: the quantizer's forward pass and a reduced pipeline.

    python benchmarks/gpu_check.py [--device cuda] [--repeats 10] [--out runs/gpu_check]

1. The fake quantizer (float, uniform 4-bit, per-input bits) on ResNet-18 (3x32x32, batch 256)
   and the small CNN (1x8x8, batch 512): median forward time on the CPU and on the device.
2. A reduced `python -m qrl.reproduce` (digits: stages A, B, C and the search, fewer epochs,
   rounds and evaluations), once per device: wall time and the pairs' drops.
3. A heavier pipeline through the real CLI, once per device: `qrl.distill` of a CIFAR-shaped
   synthetic set with ResNet-18 (a few epochs), then `qrl.search` (PPO) on that victim; wall
   times and the results of both (a GPU run computes the same things, not the same bits).

Prints GPU/CPU ratios. Without a CUDA device it says so and exits 0 (nothing may depend on it);
`--device cpu` runs every step against the CPU itself, to check the script on any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from qrl.models import ResNet18, SmallCNN
from qrl.quant import QuantConfig, layer_names, quantized_copy, set_bits_
from qrl.tables import format_table

# The reduced `make demo`: the same stages, fewer epochs, rounds and evaluations.
REPRODUCE = [
    "+distill.teacher.epochs=5",
    "+distill.student.epochs=5",
    "+pairs.train.rounds=10",
    "search.evaluations=64",
    "search.agents=[ppo]",
    "progress=false",
]
# The heavier pipeline: CIFAR-shaped synthetic data, so that the check needs no files.
DISTILL = [
    "data=synthetic",
    "data.n=4000",
    "data.channels=3",
    "data.size=32",
    "data.num_classes=10",
    "model=resnet18",
    "teacher.epochs=3",
    "student.epochs=3",
    "progress=false",
]
_DISTILL_KEYS = {"data.n", "model", "teacher.epochs", "student.epochs"}
SEARCH = [
    "agent=ppo",
    "budget.evaluations=256",
    "eval.samples=2048",
    "confirm.backends=[onnxruntime]",
    "progress=false",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # CUDA kernels run asynchronously: wait before timing


@torch.no_grad()
def forward_seconds(
    model: nn.Module, x: torch.Tensor, device: torch.device, repeats: int
) -> dict[str, float]:
    """Median forward seconds of the float model and its two quantized copies on `device`."""
    model = model.eval().to(device)
    x = x.to(device)
    uniform = set_bits_(quantized_copy(model, QuantConfig(act_bits=4)).eval(), 4)
    per_input = quantized_copy(model, QuantConfig(act_bits=4)).eval()
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(2, 9, (x.shape[0], len(layer_names(per_input))), generator=gen)
    set_bits_(per_input, bits)  # drawn on the CPU: the quantizer moves them to x's device
    models = {"float": model, "uniform 4-bit": uniform, "per-input bits": per_input}
    samples: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():  # warm-up: allocator, cuDNN/oneDNN kernel choice, weight caches
        for _ in range(3):
            m(x)
    _sync(device)
    for _ in range(repeats):
        for name, m in models.items():
            start = time.perf_counter()
            m(x)
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def quantizer_rows(device: torch.device, repeats: int) -> list[list[str]]:
    torch.manual_seed(0)
    cases = [
        ("ResNet-18, 3x32x32, batch 256", ResNet18(3, 10, (32, 32)), (256, 3, 32, 32)),
        ("small CNN, 1x8x8, batch 512", SmallCNN(1, 10, (8, 8), width=64), (512, 1, 8, 8)),
    ]
    rows = []
    for name, model, shape in cases:
        x = torch.rand(shape)
        cpu = forward_seconds(model, x, torch.device("cpu"), repeats)
        dev = forward_seconds(model, x, device, repeats)
        for kind in cpu:
            rows.append(
                [
                    f"{name}: {kind}",
                    f"{1000 * cpu[kind]:.2f}",
                    f"{1000 * dev[kind]:.2f}",
                    f"{dev[kind] / cpu[kind]:.3f}",
                ]
            )
    return rows


def _cli(task: str, args: list[str]) -> float:
    """Run `python -m qrl.<task> args` and return its wall time (it must succeed)."""
    start = time.perf_counter()
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    done = subprocess.run(
        [sys.executable, "-m", f"qrl.{task}", *args], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"qrl.{task} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


# `--quick`: the same steps at a size that a laptop's CPU runs in a minute (checks the script).
QUICK = ["data.n=400", "model=cnn", "teacher.epochs=1", "student.epochs=1", "budget.evaluations=16"]
QUICK += ["eval.samples=256"]


def pipeline(device: str, run: Path, quick: bool = False) -> dict[str, float]:
    """Distil and search on `device` into `run`; wall times and the headline numbers."""
    size = QUICK if quick else []
    distill_args = [*DISTILL, *[a for a in size if a.split("=")[0] in _DISTILL_KEYS]]
    search_args = [*SEARCH, *[a for a in size if a.split("=")[0] not in _DISTILL_KEYS]]
    where = [f"device={device}", f"hydra.run.dir={run / 'distill'}"]
    distill_s = _cli("distill", [*distill_args, *where])
    where = [f"device={device}", f"victim.run={run / 'distill'}", f"hydra.run.dir={run / 's'}"]
    search_s = _cli("search", [*search_args, *where])
    distill = json.loads((run / "distill" / "metrics.json").read_text())
    search = json.loads((run / "s" / "metrics.json").read_text())
    return {
        "distill_s": distill_s,
        "search_s": search_s,
        "student/acc": distill["student/acc"],
        "eval/gap": search["eval/gap"],
        "confirm/gap": search.get("confirm/gap", float("nan")),
    }


def reproduce(device: str, run: Path, quick: bool = False) -> dict[str, float]:
    """A reduced `qrl.reproduce` on `device` into `run`; wall time and the pairs' drops."""
    size = ["+pairs.train.rounds=2", "+distill.teacher.epochs=1", "+distill.student.epochs=1"]
    chosen = {a.split("=")[0]: a for a in [*REPRODUCE, *(size if quick else [])]}  # quick wins
    args = [*chosen.values(), f"device={device}", f"hydra.run.dir={run}"]
    seconds = _cli("reproduce", args)
    results = json.loads((run / "results.json").read_text())
    return {
        "reproduce_s": seconds,
        "detrimental drop": results["detrimental"]["drop"],
        "robust drop": results["robust"]["drop"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device to compare with the CPU")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--out", default="runs/gpu_check", help="where the pipeline runs go (a fresh dir)"
    )
    parser.add_argument("--skip-pipeline", action="store_true", help="the quantizer only")
    parser.add_argument("--skip-quantizer", action="store_true", help="the pipelines only")
    parser.add_argument("--quick", action="store_true", help="a tiny pipeline (checks the script)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} sees none; nothing to compare")
        return 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}; {device} = {name}; CPU threads {torch.get_num_threads()}")
    if not args.skip_quantizer:
        header = ["quantizer forward", "CPU ms", f"{device} ms", f"{device}/CPU"]
        print(format_table(header, quantizer_rows(device, args.repeats)))
    if args.skip_pipeline:
        return 0
    out = Path(args.out)
    cpu = reproduce("cpu", out / "reproduce-cpu", args.quick)
    dev = reproduce(str(device), out / "reproduce-device", args.quick)
    cpu.update(pipeline("cpu", out / "cpu", args.quick))
    dev.update(pipeline(str(device), out / "device", args.quick))
    rows = [
        [
            key,
            f"{cpu[key]:.4g}",
            f"{dev[key]:.4g}",
            f"{dev[key] / cpu[key]:.3f}" if key.endswith("_s") else "",
        ]
        for key in cpu
    ]
    print(
        format_table(["reduced reproduce; ResNet-18 pipeline", "CPU", str(device), "ratio"], rows)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
