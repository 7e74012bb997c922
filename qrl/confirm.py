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
from typing import Any

import numpy as np
from torch import nn

from qrl.envs.failure_task import FailureTask
from qrl.heldout import HeldOutResult, score_held_out
from qrl.quant import preset, quantized_copy
from qrl.quant.backends import mirror_preset, real_backend
from qrl.quant.cpu import describe_int8_accumulation
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
    modules = list(victim.student.modules())
    linear_only = any(isinstance(m, nn.Linear) for m in modules) and not any(
        isinstance(m, nn.Conv2d) for m in modules
    )
    # The search's own numbers predict a kernel's only for an 8-bit search over inputs alone
    # (an int4 or bit-width search is not meant to carry over to int8 kernels).
    comparable = task.mode == "input" and victim.quant.act_bits == 8 == victim.quant.weight_bits
    metrics: dict[str, Any] = {}
    messages: list[str] = []
    for name in backends:
        if name == victim.quant.backend or (name == "torch_ao" and not linear_only):
            continue
        backend = real_backend(
            name, victim.student, victim.data.test.head(8), onnx_reduce_range=onnx_reduce_range
        )
        mirror_name = mirror_preset(name, onnx_reduce_range=onnx_reduce_range)
        mirror = preset(mirror_name)
        on_kernel = _input_task(task, dataclasses.replace(victim, qstudent=backend))
        on_mirror = _input_task(
            task,
            dataclasses.replace(
                victim, qstudent=quantized_copy(victim.student, mirror).eval(), quant=mirror
            ),
        )
        cases = [("baseline", np.zeros(on_kernel.action_space.shape, np.float32))]
        if input_part is not None:
            cases.insert(0, ("policy", input_part))
        metrics[f"confirm/{name}/simulator"] = mirror_name
        for case, case_action in cases:
            real = score_held_out(on_kernel, case_action, **settings)
            sim = score_held_out(on_mirror, case_action, **settings)
            prefix = f"confirm/{name}" if case == "policy" else f"confirm/{name}/baseline"
            metrics.update(real.metrics(prefix))
            metrics.update(
                {k.replace(prefix, f"{prefix}/sim"): v for k, v in sim.metrics(prefix).items()}
            )
            what = "the found policy" if case == "policy" else "the data's own distribution"
            searched = None if simulated is None else simulated[0 if case == "policy" else 1]
            if (
                comparable
                and searched is not None
                and victim.quant != mirror
                and disagree(real, searched)
            ):
                messages.append(
                    f"the search's quantizer does not carry over to {name} int8 for {what}: gap "
                    f"{_gap(searched)} searched vs {_gap(real)} on the kernel; search with "
                    f"quant={mirror_name} to steer by the kernel's numbers"
                )
            if disagree(real, sim):
                messages.append(
                    f"{mirror_name} does not predict {name} int8 on this model for {what}: gap "
                    f"{100 * sim.gap:.2f} [{100 * sim.ci[0]:.2f}, {100 * sim.ci[1]:.2f}] on the "
                    f"simulator vs {100 * real.gap:.2f} [{100 * real.ci[0]:.2f}, "
                    f"{100 * real.ci[1]:.2f}] on the kernel (accuracy {100 * sim.acc_q:.1f}% vs "
                    f"{100 * real.acc_q:.1f}%); trust the kernel's numbers. CPU: "
                    f"{describe_int8_accumulation()}"
                )
        if input_part is not None and "confirm/gap" not in metrics:
            metrics["confirm/gap"] = metrics[f"confirm/{name}/gap"]
            metrics["confirm/backend"] = name
    metrics["confirm/warnings"] = messages
    for message in messages:
        warnings.warn(message, SimulatorMismatchWarning, stacklevel=2)
    return metrics


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
    return rows
