"""Confirmation on real int8 kernels, each beside the simulator preset that models it.

A search steers by qrl's simulator; what a user deploys is a kernel. For every real backend this
re-scores, on the same held-out draws:

- the found policy's input distribution on the kernel (`confirm/<backend>/gap`, ...);
- the data's own distribution on the kernel (`confirm/<backend>/baseline/...`): how the deployed
  model does before any policy, the first number a user deciding whether to deploy needs;
- both again on the simulator preset that models the kernel (`mirror_preset`), and warns
  when simulator and kernel gaps differ by more than their intervals: there, the simulator cannot
  be trusted for this model (see `qrl.fidelity`).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from qrl.envs.failure_task import FailureTask
from qrl.heldout import HeldOutResult, score_held_out
from qrl.quant import QuantConfig, preset, quantized_copy
from qrl.quant.backends import mirror_preset, real_backend
from qrl.quant.cpu import describe_paths, int8_accumulation
from qrl.victim import Victim


class SimulatorMismatchWarning(UserWarning):
    """The simulator preset and the real kernel it models disagree on this model."""


def disagree(a: HeldOutResult, b: HeldOutResult) -> bool:
    """True when the two gaps' intervals do not overlap."""
    return a.ci[1] < b.ci[0] or b.ci[1] < a.ci[0]


def confirm_on_kernels(
    task: FailureTask,
    action: np.ndarray,
    *,
    backends: list[str],
    onnx_reduce_range: bool = False,
    simulated: tuple[HeldOutResult, HeldOutResult] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Re-evaluate the policy's input distribution and the data's own on real int8 backends.

    Bit-width actions have no meaning on 8-bit kernels and are dropped; torch.ao runs only
    for students made of Linear layers (it leaves convolutions in float). `confirm/gap` is the
    first backend's gap; `confirm/warnings` lists simulator-kernel disagreements.

    Args:
        task: the held-out task of the simulated victim; each backend gets a copy in mode
            `input` on the same split, with the same reference.
        action: the policy's action in the task's space.
        backends: names of real backends (`onnxruntime`, `torch_ao`).
        onnx_reduce_range: 7-bit ONNX Runtime weights.
        simulated: the search quantizer's held-out results (policy, data's own distribution)
            on the same draws; for an 8-bit search over inputs, a kernel gap outside their
            intervals is a warning too.
        **settings: the keywords of `score_held_out` (the same draws as the simulator's).
    """
    victim = task.victim
    if not isinstance(victim.student, nn.Module):
        return {}
    input_part, _ = task.split_action(action)
    cases = (
        [("baseline", None)] if input_part is None else [("policy", input_part), ("baseline", None)]
    )
    metrics: dict[str, Any] = {}
    messages: list[str] = []
    for name in backends:
        if name == victim.quant.backend or (
            name == "torch_ao" and not _linear_only(victim.student)
        ):
            continue
        kernel = _KernelCheck.build(task, name, onnx_reduce_range)
        metrics[f"confirm/{name}/simulator"] = kernel.mirror_name
        metrics.update(kernel.accumulation_metrics())
        for case, case_action in cases:
            searched = None if simulated is None else simulated[0 if case == "policy" else 1]
            case_metrics, case_messages = kernel.score(case, case_action, searched, settings)
            metrics.update(case_metrics)
            messages += case_messages
        if input_part is not None and "confirm/gap" not in metrics:
            metrics["confirm/gap"] = metrics[f"confirm/{name}/gap"]
            metrics["confirm/backend"] = name
    metrics["confirm/warnings"] = messages
    for message in messages:
        warnings.warn(message, SimulatorMismatchWarning, stacklevel=2)
    return metrics


def _linear_only(model: nn.Module) -> bool:
    """A model of Linear layers without convolutions: the only kind torch.ao quantizes whole."""
    modules = list(model.modules())
    return any(isinstance(m, nn.Linear) for m in modules) and not any(
        isinstance(m, nn.Conv2d) for m in modules
    )


@dataclass
class _KernelCheck:
    """One real backend beside the simulator preset that models it, on the same draws."""

    name: str
    mirror_name: str
    mirror: QuantConfig
    search_quant: QuantConfig
    on_kernel: FailureTask
    on_mirror: FailureTask
    comparable: bool  # the search's own numbers predict the kernel's (8-bit, inputs alone)

    @classmethod
    def build(cls, task: FailureTask, name: str, onnx_reduce_range: bool) -> _KernelCheck:
        victim = task.victim
        backend = real_backend(
            name, victim.student, victim.data.test.head(8), onnx_reduce_range=onnx_reduce_range
        )
        mirror_name = mirror_preset(name, onnx_reduce_range=onnx_reduce_range)
        mirror = preset(mirror_name)
        simulated = quantized_copy(victim.student, mirror).eval()
        # An int4 or bit-width search is not meant to carry over to int8 kernels.
        comparable = task.mode == "input" and victim.quant.act_bits == 8 == victim.quant.weight_bits
        return cls(
            name,
            mirror_name,
            mirror,
            victim.quant,
            _input_task(task, dataclasses.replace(victim, quantized=backend)),
            _input_task(task, dataclasses.replace(victim, quantized=simulated, quant=mirror)),
            comparable,
        )

    def accumulation_metrics(self) -> dict[str, str]:
        """Which int8 accumulation the preset simulated and which one the kernel ran (fbgemm's
        7-bit activations and 7-bit ONNX Runtime weights cannot saturate: exact)."""
        saturates = self.name == "onnxruntime" and self.mirror.weight_range != "reduced"
        kernel = int8_accumulation() if saturates else "exact"
        return {
            f"confirm/{self.name}/accumulation_simulated": self.mirror.accumulation_path(),
            f"confirm/{self.name}/accumulation_kernel": "exact" if kernel == "unknown" else kernel,
        }

    def score(
        self,
        case: str,
        action: np.ndarray | None,
        searched: HeldOutResult | None,
        settings: dict[str, Any],
    ) -> tuple[dict[str, Any], list[str]]:
        """The kernel's and its preset's held-out metrics for one case, and any warnings."""
        if action is None:  # the data's own distribution: the identity action
            action = np.zeros(self.on_kernel.action_space.shape, np.float32)
        real = score_held_out(self.on_kernel, action, **settings)
        sim = score_held_out(self.on_mirror, action, **settings)
        prefix = f"confirm/{self.name}" if case == "policy" else f"confirm/{self.name}/baseline"
        metrics = dict(real.metrics(prefix))
        metrics.update(
            {k.replace(prefix, f"{prefix}/sim"): v for k, v in sim.metrics(prefix).items()}
        )
        what = "the found policy" if case == "policy" else "the data's own distribution"
        messages = []
        carries = self.comparable and self.search_quant != self.mirror
        if carries and searched is not None and disagree(real, searched):
            messages.append(
                f"the search's quantizer does not carry over to {self.name} int8 for {what}: "
                f"gap {_gap(searched)} searched vs {_gap(real)} on the kernel; search with "
                f"quant={self.mirror_name} to steer by the kernel's numbers"
            )
        if disagree(real, sim):
            messages.append(
                f"{self.mirror_name} does not predict {self.name} int8 on this model for {what}: "
                f"gap {_gap(sim)} on the simulator vs {_gap(real)} on the kernel (accuracy "
                f"{100 * sim.acc_q:.1f}% vs {100 * real.acc_q:.1f}%); trust the kernel's "
                f"numbers. {describe_paths(self.mirror.accumulation_path())}"
            )
        return metrics, messages


def _gap(result: HeldOutResult) -> str:
    low, high = result.ci
    return f"{100 * result.gap:.2f} [{100 * low:.2f}, {100 * high:.2f}]"


def _input_task(task: FailureTask, victim: Victim) -> FailureTask:
    """`task` in mode `input` on `victim` (a real kernel takes inputs, not bit-widths).

    A bit-width task has no input family; its copy gets one corruption, at the zero action the
    identity, so that the data's own distribution can still be drawn.
    """
    if task.corruptions or task.class_mix:
        return task.replace(victim=victim, mode="input")
    return FailureTask(
        victim,
        mode="input",
        corruptions=["brightness"],
        class_mix=False,
        split=task.split,
        reference=task.reference,
    )


def kernel_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Summary-table rows (what, points, note) for the kernels in a run's `confirm/*` metrics."""

    def pct(key: str) -> str:
        return f"{100 * metrics[key]:.2f}"

    rows = []
    for key in sorted(k for k in metrics if k.endswith("/simulator")):
        name = key.split("/")[1]
        for label, p in (
            ("found policy", f"confirm/{name}"),
            ("data's own distribution", f"confirm/{name}/baseline"),
        ):
            if f"{p}/gap" not in metrics:
                continue
            rows.append(
                [
                    f"{name} int8, {label}: gap / quantized acc",
                    f"{pct(f'{p}/gap')} / {pct(f'{p}/acc_q')}",
                    f"gap CI [{pct(f'{p}/gap_ci_low')}, {pct(f'{p}/gap_ci_high')}]; "
                    f"{metrics[key]}: {pct(f'{p}/sim/gap')} / {pct(f'{p}/sim/acc_q')}",
                ]
            )
        simulated = metrics.get(f"confirm/{name}/accumulation_simulated")
        if simulated is not None:
            kernel = metrics[f"confirm/{name}/accumulation_kernel"]
            rows.append(
                [f"{name} int8 accumulation", "", f"simulated {simulated}; kernel ran {kernel}"]
            )
    return rows
