"""Simulator fidelity: does each preset predict its real int8 kernel where networks fail?

A member of the suite is a stressed model (`qrl.stress`): the same function in full precision,
with activation ranges that strain int8. For every member and every real kernel that runs it,
`measure` compares the kernel's logits with those of the simulator preset that claims to model
it (`qrl.quant.backends.mirror_preset`), in the two ways a kernel is used:

- per image: each input quantized on its own (ONNX Runtime / torch.ao called one image at a
  time; the simulator with the same preset at `per_sample` granularity, which is equivalent);
- whole batch: the whole set in one call, activations quantized over the batch as the kernel
  computes it.

    python benchmarks/fidelity.py            # the whole family; tables for experiments/README.md
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qrl.data import ImageData
from qrl.models import MLP
from qrl.planted import plant_brightness_outlier
from qrl.quant import QuantConfig, preset, quantized_copy
from qrl.quant.backends import OnnxRuntimeBackend, RealBackend, TorchAOBackend
from qrl.scoring import accuracy, agreement
from qrl.stress import check_preserved, rescale_channels, rescale_units
from qrl.training import TrainSettings, fit

POINTS = 0.02  # accuracy of simulator and kernel must be this close (2 points)
AGREEMENT = 0.99  # argmax agreement required ...
KERNEL_FLOOR = 0.5  # ... wherever the kernel keeps at least this accuracy
STRENGTHS = (1.0, 10.0, 100.0, 200.0, 300.0, 500.0, 1000.0)


@dataclass(frozen=True)
class Kernel:
    """A real int8 kernel configuration and the simulator preset that models it."""

    label: str
    build: Callable[[nn.Module, Tensor], RealBackend]
    preset_name: str
    overrides: dict = dataclasses.field(default_factory=dict)
    runs_convs: bool = True  # torch.ao leaves Conv2d layers in float: it is not a CNN kernel
    # False: the kernel's arithmetic depends on the CPU (ONNX Runtime's 8-bit weights saturate
    # 16-bit pair sums on x86 without VNNI, see qrl.quant.cpu); the preset's `accumulation:
    # auto` simulates this CPU's path.
    exact_on_every_cpu: bool = True

    @property
    def preset(self) -> QuantConfig:
        return preset(self.preset_name, **self.overrides)

    @property
    def preset_label(self) -> str:
        changes = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"{self.preset_name} ({changes})" if changes else self.preset_name


def kernels() -> list[Kernel]:
    """Every real kernel configuration qrl confirms on, with the preset that models it."""
    per_tensor = {"weight_granularity": "per_tensor"}
    return [
        Kernel(
            "onnxruntime",
            lambda m, x: OnnxRuntimeBackend(m, x),
            "onnx_int8_dynamic",
            exact_on_every_cpu=False,
        ),
        Kernel(
            "onnxruntime per-tensor",
            lambda m, x: OnnxRuntimeBackend(m, x, per_channel=False),
            "onnx_int8_dynamic",
            per_tensor,
            exact_on_every_cpu=False,
        ),
        Kernel(
            "onnxruntime reduce_range",
            lambda m, x: OnnxRuntimeBackend(m, x, reduce_range=True),
            "onnx_int8_dynamic_reduce_range",
        ),
        Kernel("torch_ao", lambda m, x: TorchAOBackend(m), "torch_int8_dynamic", runs_convs=False),
        Kernel(
            "torch_ao per-channel",
            lambda m, x: TorchAOBackend(m, per_channel=True),
            "torch_int8_dynamic",
            {"weight_granularity": "per_channel"},
            runs_convs=False,
        ),
    ]


@dataclass(frozen=True)
class Member:
    """One stressed model of the suite."""

    arch: str  # "cnn" or "mlp"
    stress: str  # "none", "channels", "units" or "outlier"
    position: str  # which block / layer, in words
    amount: str  # how many channels, in words
    k: float
    model: nn.Module = dataclasses.field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.arch} {self.stress} {self.position} {self.amount} k={self.k:g}"


def cnn_members(
    cnn: nn.Module, x: Tensor, strengths: tuple[float, ...] = STRENGTHS, one_channel: bool = True
) -> Iterator[Member]:
    """Channel rescaling of each of the first three conv blocks: a quarter and one channel."""
    positions = ("first", "second", "third")
    amounts: list[tuple[str, dict]] = [("1/4", {"fraction": 0.25})]
    if one_channel:
        amounts.append(("1 channel", {"channels": 1}))
    for block, position in enumerate(positions):
        for amount, how in amounts:
            for k in strengths:
                model = rescale_channels(cnn, block, k, **how).eval()
                check_preserved(cnn, model, x)
                yield Member("cnn", "channels", position, amount, k, model)


def mlp_members(
    mlp: MLP, x: Tensor, strengths: tuple[float, ...] = STRENGTHS, outliers: bool = True
) -> Iterator[Member]:
    """Unit rescaling of each hidden layer (a quarter, one unit), and planted outlier units."""
    hidden = sum(isinstance(m, nn.Linear) for m in mlp.modules()) - 1
    for layer in range(hidden):
        for amount, how in (("1/4", {"fraction": 0.25}), ("1 unit", {"units": 1})):
            for k in strengths:
                model = rescale_units(mlp, layer, k, **how).eval()
                check_preserved(mlp, model, x)
                yield Member("mlp", "units", f"layer {layer}", amount, k, model)
    if outliers:
        for magnitude in (10.0, 100.0, 1000.0):
            # Fires on inputs brighter than the digits' typical mean pixel (~0.3).
            model = plant_brightness_outlier(mlp, threshold=0.25, magnitude=magnitude).eval()
            yield Member("mlp", "outlier", "brightness", "1 unit", magnitude, model)


def train_digits_mlp(data: ImageData, seed: int = 0, epochs: int = 20) -> MLP:
    """A small MLP on digits (64 -> 64 -> 32 -> 10): the base of the suite's MLP members."""
    torch.manual_seed(seed)
    model = MLP(1, 10, data.image_size, hidden=(64, 32), mean=data.mean, std=data.std)
    fit(
        model,
        data.train,
        lambda m, xb, yb: F.cross_entropy(m(xb), yb),
        TrainSettings(epochs=epochs, lr=3e-3),
        seed=seed,
        progress=False,
    )
    return model.eval()


@dataclass(frozen=True)
class Fidelity:
    """Simulator vs kernel on one member, per image and whole batch (accuracies in [0, 1])."""

    member: str
    kernel: str
    preset: str
    n: int
    acc_fp: float
    acc_sim_image: float
    acc_kernel_image: float
    agree_image: float
    max_diff_image: float
    acc_sim_batch: float
    acc_kernel_batch: float
    agree_batch: float
    max_diff_batch: float

    def problems(self) -> list[str]:
        """What misses the fidelity targets; empty when the preset models the kernel."""
        return [
            f"per {how}: {problem}"
            for how in ("image", "batch")
            for problem in mismatches(
                getattr(self, f"acc_sim_{how}"),
                getattr(self, f"acc_kernel_{how}"),
                getattr(self, f"agree_{how}"),
            )
        ]


def mismatches(sim_acc: float, kernel_acc: float, agree: float) -> list[str]:
    """Where a simulator misses the fidelity targets against a kernel on the same inputs:
    accuracy more than `POINTS` apart, or argmax agreement below `AGREEMENT` wherever the
    kernel keeps at least `KERNEL_FLOOR` accuracy."""
    out = []
    if abs(sim_acc - kernel_acc) > POINTS + 1e-9:
        out.append(f"accuracy {100 * sim_acc:.2f}% vs kernel {100 * kernel_acc:.2f}%")
    if kernel_acc >= KERNEL_FLOOR and agree < AGREEMENT:
        out.append(f"argmax agreement {100 * agree:.2f}%")
    return out


Logits = tuple[Tensor, Tensor]  # (per image, whole batch)


@torch.no_grad()
def kernel_logits(backend: RealBackend, x: Tensor) -> Logits:
    """A real kernel's logits, one image per call and the whole set in one call."""
    return torch.cat([backend(x[i : i + 1]) for i in range(len(x))]), backend(x)


@torch.no_grad()
def simulator_logits(model: nn.Module, cfg: QuantConfig, x: Tensor) -> Logits:
    """The simulator's logits for the same two uses (per image = `per_sample` granularity)."""
    per_image = dataclasses.replace(cfg, act_granularity="per_sample")
    return quantized_copy(model, per_image).eval()(x), quantized_copy(model, cfg).eval()(x)


def compare(
    member: Member,
    kernel: Kernel,
    preset_label: str,
    sim: Logits,
    real: Logits,
    fp: Tensor,
    y: Tensor,
) -> Fidelity:
    """The `Fidelity` record of simulator against kernel logits (`fp`: full-precision ones)."""

    def acc(logits: Tensor) -> float:
        return accuracy(logits, y)

    return Fidelity(
        member=member.name,
        kernel=kernel.label,
        preset=preset_label,
        n=len(y),
        acc_fp=acc(fp),
        acc_sim_image=acc(sim[0]),
        acc_kernel_image=acc(real[0]),
        agree_image=agreement(sim[0], real[0]),
        max_diff_image=float((sim[0] - real[0]).abs().max()),
        acc_sim_batch=acc(sim[1]),
        acc_kernel_batch=acc(real[1]),
        agree_batch=agreement(sim[1], real[1]),
        max_diff_batch=float((sim[1] - real[1]).abs().max()),
    )


def measure(member: Member, kernel: Kernel, x: Tensor, y: Tensor) -> Fidelity:
    """Compare `kernel` with the preset that models it on `member`, for inputs `x`, labels `y`."""
    real = kernel_logits(kernel.build(member.model.eval(), x[:8]), x)
    sim = simulator_logits(member.model, kernel.preset, x)
    with torch.no_grad():
        fp = member.model.eval()(x)
    return compare(member, kernel, kernel.preset_label, sim, real, fp, y)


def run_suite(
    members: list[Member], x: Tensor, y: Tensor, progress: bool = False
) -> list[Fidelity]:
    """`measure` every member on every kernel that runs its architecture."""
    from tqdm.auto import tqdm

    cases = [(m, k) for m in members for k in kernels() if k.runs_convs or m.arch == "mlp"]
    return [
        measure(m, k, x, y)
        for m, k in tqdm(cases, desc="fidelity", disable=not progress, unit="case")
    ]


RECORDED_USES = {"image": "per_sample", "batch": "per_tensor"}  # one image per call, all at once
RECORDED_WEIGHTS = {"per_channel": {}, "per_tensor": {"weight_granularity": "per_tensor"}}


def recorded_member(member: dict) -> nn.Module:
    """The model of one recorded member (`models.pt` of a kernel fixture), in eval mode."""
    module, name = member["build"]["class"].rsplit(".", 1)
    model = getattr(importlib.import_module(module), name)(**member["build"]["kwargs"])
    model.load_state_dict(member["state_dict"])
    return model.eval()


def recorded_misses(recorded: dict, accumulation: str) -> dict[str, list[str]]:
    """Score `onnx_int8_dynamic` at `accumulation` against a kernel's recorded logits.

    Args:
        recorded: a fixture's `models.pt` (`members`, `x`, `y`; see its README).
        accumulation: `exact` or `saturating_pairs`.

    Returns:
        For every (member, weight grid, use) case, what misses the fidelity targets (an empty
        list where the preset is within them), keyed `<member> <weights> per <use>`.
    """
    x, y = recorded["x"], recorded["y"]
    out: dict[str, list[str]] = {}
    for member in recorded["members"]:
        model = recorded_member(member)
        for weights, overrides in RECORDED_WEIGHTS.items():
            for use, granularity in RECORDED_USES.items():
                cfg = preset(
                    "onnx_int8_dynamic",
                    act_granularity=granularity,
                    accumulation=accumulation,
                    **overrides,
                )
                with torch.no_grad():
                    sim = quantized_copy(model, cfg).eval()(x)
                kernel = member[f"ort_{weights}_{use}"]
                out[f"{member['name']} {weights} per {use}"] = mismatches(
                    accuracy(sim, y), accuracy(kernel, y), agreement(sim, kernel)
                )
    return out
