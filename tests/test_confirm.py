"""Confirmation on real kernels: the data's own distribution, and simulator-kernel warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from qrl.checkpoints import load_model
from qrl.confirm import SimulatorMismatchWarning, confirm_on_kernels, kernel_rows
from qrl.envs.failure_task import FailureTask
from qrl.heldout import score_held_out
from qrl.quant import preset
from qrl.stress import rescale_channels
from qrl.victim import Victim, load_victim

SETTINGS = {"samples": 512, "seed": 1, "resamples": 300}
# 7-bit ONNX Runtime weights: a kernel path that onnx_int8_dynamic_reduce_range models exactly on
# every CPU (the 8-bit one saturates on x86 CPUs without VNNI; see qrl.quant.cpu).
KERNEL = {"backends": ["onnxruntime"], "onnx_reduce_range": True}


def _stressed_task(digits_run: Path) -> FailureTask:
    """The digits student with a quarter of its third block's channels rescaled by 200."""
    victim = load_victim(digits_run, preset("int8_dynamic"))
    teacher, _ = load_model(digits_run / "teacher.pt")
    stressed = rescale_channels(victim.student, 2, 200.0, fraction=0.25)
    stressed_victim = Victim.from_models(teacher, stressed, victim.data, preset("int8_dynamic"))
    return FailureTask(stressed_victim, split="test", mode="input", reference="student")


def test_the_kernel_numbers_of_the_data_itself_are_reported(digits_run: Path) -> None:
    task = _stressed_task(digits_run)
    action = np.zeros(task.action_space.shape, np.float32)
    action[0] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", SimulatorMismatchWarning)  # the mirror preset is right
        metrics = confirm_on_kernels(task, action, **KERNEL, **SETTINGS)
    # The deployed kernel already fails on clean inputs: that is the first number shown.
    assert metrics["confirm/onnxruntime/baseline/acc_q"] < 0.5
    assert metrics["confirm/onnxruntime/baseline/acc_fp"] > 0.9
    assert metrics["confirm/onnxruntime/simulator"] == "onnx_int8_dynamic_reduce_range"
    assert (
        abs(
            metrics["confirm/onnxruntime/baseline/sim/acc_q"]
            - metrics["confirm/onnxruntime/baseline/acc_q"]
        )
        <= 0.02
    )
    assert metrics["confirm/warnings"] == []
    rows = {row[0]: row for row in kernel_rows(metrics)}
    assert "onnxruntime int8, data's own distribution: gap / quantized acc" in rows
    assert "onnxruntime int8, found policy: gap / quantized acc" in rows


def test_a_simulator_that_misses_the_kernel_is_a_warning(digits_run: Path, monkeypatch) -> None:
    task = _stressed_task(digits_run)
    # A preset that models the wrong kernel: per-channel weights of the unfolded network.
    monkeypatch.setattr("qrl.confirm.mirror_preset", lambda name, **_: "int8_dynamic")
    with pytest.warns(SimulatorMismatchWarning, match="does not predict onnxruntime"):
        metrics = confirm_on_kernels(task, np.zeros(task.action_space.shape), **KERNEL, **SETTINGS)
    assert len(metrics["confirm/warnings"]) == 2  # the policy and the data's own distribution
    assert "data's own distribution" in metrics["confirm/warnings"][1]


def test_a_search_quantizer_that_misses_the_kernel_is_a_warning(digits_run: Path) -> None:
    task = _stressed_task(digits_run)  # searched with int8_dynamic: unfolded, per-channel
    zeros = np.zeros(task.action_space.shape, np.float32)
    searched = score_held_out(task, zeros, **SETTINGS)
    assert searched.acc_q > 0.9  # the search's quantizer sees a healthy model
    with pytest.warns(SimulatorMismatchWarning, match="does not carry over to onnxruntime"):
        metrics = confirm_on_kernels(
            task, zeros, simulated=(searched, searched), **KERNEL, **SETTINGS
        )
    assert any("quant=onnx_int8_dynamic_reduce_range" in m for m in metrics["confirm/warnings"])
