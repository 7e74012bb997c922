"""Which int8 accumulation this CPU's kernels use, and which one qrl's simulator computes.

ONNX Runtime's dynamic int8 kernels multiply uint8 activations by int8 weights. On x86 CPUs with
VNNI (AVX512-VNNI, AVX-VNNI) or AMX, and on ARM CPUs with dot-product instructions, the products
are accumulated exactly in int32. On x86 CPUs without them, the MatMul kernel adds adjacent
products in saturating 16-bit pairs (`vpmaddubsw`): a pair of large activations times large
weights clips at 32767, and the result departs from exact arithmetic (ConvInteger stays exact).
qrl simulates both (`QuantConfig.accumulation`, `qrl.quant.saturating`); `onnx_int8_dynamic`
takes `accumulation: auto`, the path that this CPU runs. ONNX Runtime's remedy, 7-bit weights
(`reduce_range`), makes saturation impossible (`onnx_int8_dynamic_reduce_range`). fbgemm
(torch.ao) avoids the same issue with 7-bit activations, which `torch_int8_dynamic` models.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

EXACT_X86_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
EXACT_ARM_FLAGS = ("asimddp",)  # ARMv8.2 dot product (SDOT/UDOT)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reads (Linux `/proc/cpuinfo`); empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def int8_accumulation(flags: frozenset[str] | None = None) -> str:
    """`exact` (int32, as qrl simulates), `saturating_pairs` (x86 without VNNI) or `unknown`."""
    flags = cpu_flags() if flags is None else flags
    if any(f in flags for f in (*EXACT_X86_FLAGS, *EXACT_ARM_FLAGS)):
        return "exact"
    machine = platform.machine().lower()
    if flags and machine in ("x86_64", "amd64", "i686"):
        return "saturating_pairs"
    return "unknown"


PATHS = {
    "exact": "exact int32",
    "saturating_pairs": "saturating 16-bit pairs (uint8 x int8 MatMul; convolutions exact)",
}


def describe_int8_accumulation(flags: frozenset[str] | None = None) -> str:
    """One line for logs: what this CPU's ONNX Runtime u8 x s8 kernels do."""
    flags = cpu_flags() if flags is None else flags
    mode = int8_accumulation(flags)
    found = sorted(f for f in (*EXACT_X86_FLAGS, *EXACT_ARM_FLAGS) if f in flags)
    if mode == "exact":
        return f"ONNX Runtime int8 on this CPU: exact int32 accumulation ({', '.join(found)})"
    if mode == "saturating_pairs":
        return f"ONNX Runtime int8 on this CPU (x86 without VNNI): {PATHS['saturating_pairs']}"
    return "ONNX Runtime int8 on this CPU: unknown CPU features (qrl assumes exact int32)"


def describe_paths(simulated: str, flags: frozenset[str] | None = None) -> str:
    """One line naming the accumulation qrl simulated and the one this CPU's kernel runs."""
    return f"simulated: {PATHS.get(simulated, simulated)}; {describe_int8_accumulation(flags)}"
