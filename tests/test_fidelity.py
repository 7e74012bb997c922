"""Simulator fidelity: every preset models its real int8 kernel on stressed models.

The small family here runs in `make test`; `benchmarks/fidelity.py` runs the whole family.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

from qrl.checkpoints import load_model
from qrl.data import load_data
from qrl.errors import ConfigError
from qrl.fidelity import (
    Member,
    cnn_members,
    compare,
    kernel_logits,
    kernels,
    measure,
    mlp_members,
    simulator_logits,
    train_digits_mlp,
)
from qrl.models import MLP, ResNet18, SmallCNN
from qrl.quant import layer_names, preset, quantized_copy
from qrl.quant.backends import OnnxRuntimeBackend, mirror_preset
from qrl.quant.cpu import describe_paths, int8_accumulation
from qrl.quant.folding import conv_batchnorm_pairs, fold_batchnorm
from qrl.quant.functional import quantize_weight
from qrl.stress import check_preserved, rescale_channels, rescale_units

SAMPLES = 200


@pytest.fixture(scope="module")
def digits_xy() -> tuple[torch.Tensor, torch.Tensor]:
    test = load_data("digits", seed=0).test
    return test.x[:SAMPLES], test.y[:SAMPLES]


@pytest.fixture(scope="module")
def student(digits_run: Path) -> SmallCNN:
    model, _ = load_model(digits_run / "student.pt")
    assert isinstance(model, SmallCNN)
    return model.eval()


def _select(members: list[Member], names: set[str]) -> list[Member]:
    chosen = [m for m in members if m.name in names]
    assert len(chosen) == len(names)
    return chosen


def test_every_kernel_matches_its_preset_on_stressed_models(student, digits_xy) -> None:
    x, y = digits_xy
    cnn = _select(
        list(cnn_members(student, x, strengths=(10.0, 100.0, 200.0))),
        {
            "cnn channels second 1/4 k=10",  # every kernel keeps its accuracy: agreement counts
            "cnn channels second 1/4 k=100",  # ONNX Runtime's 8-bit weights keep most of it
            "cnn channels second 1/4 k=200",
            "cnn channels third 1/4 k=200",
            "cnn channels first 1 channel k=200",
        },
    )
    mlp = train_digits_mlp(load_data("digits", seed=0), epochs=10)
    mlps = _select(
        list(mlp_members(mlp, x, strengths=(100.0, 300.0))),
        {
            "mlp units layer 0 1/4 k=100",
            "mlp units layer 1 1/4 k=300",
            "mlp outlier brightness 1 unit k=100",
        },
    )
    # onnx_int8_dynamic simulates the accumulation this CPU's kernel runs (exact int32 with
    # VNNI, saturating 16-bit pairs without; the recorded AVX2 kernel is checked on any CPU in
    # test_saturating.py), so every kernel is checked against its preset here.
    cases = [(m, k) for m in cnn + mlps for k in kernels() if k.runs_convs or m.arch == "mlp"]
    results = [measure(m, k, x, y) for m, k in cases]
    problems = {f"{r.member} on {r.kernel}": r.problems() for r in results if r.problems()}
    assert not problems
    # The family stresses the kernels: some members collapse, some keep their accuracy.
    kernel_accs = [r.acc_kernel_batch for r in results]
    assert min(kernel_accs) < 0.3 and max(kernel_accs) > 0.8
    assert all(r.acc_fp > 0.9 for r in results)


def test_the_check_fails_for_the_preset_that_ignored_folding(student, digits_xy) -> None:
    x, y = digits_xy
    (member,) = _select(
        list(cnn_members(student, x, strengths=(200.0,), one_channel=False)),
        {"cnn channels second 1/4 k=200"},
    )
    kernel = kernels()[0]
    old = dataclasses.replace(
        kernel.preset, fold_batchnorm=False, conv_weight_granularity=None, weight_range="full"
    )
    real = kernel_logits(kernel.build(member.model, x[:8]), x)
    with torch.no_grad():
        fp = member.model(x)
    result = compare(member, kernel, "old", simulator_logits(member.model, old, x), real, fp, y)
    assert result.problems()
    assert result.acc_sim_image - result.acc_kernel_image > 0.3


def test_folding_preserves_the_function_and_the_layer_names() -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 3, 16, 16)
    for model in (SmallCNN(3, 10, (16, 16), width=8), ResNet18(3, 10, (16, 16), width=8)):
        for m in model.modules():  # non-trivial running statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 2)
        model.eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        folded = fold_batchnorm(model)
        with torch.no_grad():
            assert torch.allclose(folded(x), model(x), atol=1e-4)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        cfg = preset("onnx_int8_dynamic")
        assert layer_names(quantized_copy(model, cfg)) == layer_names(
            quantized_copy(model, preset("int8_dynamic"))
        )
    assert len(conv_batchnorm_pairs(SmallCNN(1, 10, (8, 8), width=4))) == 4
    # stem + 8 blocks x 2 + 3 projection shortcuts
    assert len(conv_batchnorm_pairs(ResNet18(3, 10, (16, 16), width=8))) == 20


def test_weight_grids() -> None:
    w = torch.tensor([[-1.0, -0.5, 0.25, 1.0]])
    narrow = quantize_weight(w, preset("onnx_int8_dynamic"))
    assert torch.allclose(narrow[0, 1], torch.tensor(-64 / 127))  # -0.5 * 127 = -63.5 -> -64
    reduced = quantize_weight(w, preset("onnx_int8_dynamic_reduce_range"))
    assert torch.allclose(reduced, torch.tensor([[-1.0, -0.5, 0.25, 1.0]]))  # on the 1/64 grid
    full = quantize_weight(w, preset("int8_dynamic"))
    levels = full * 127.5  # torch's grid: scale absmax / 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4) and full[0, 3] < 1.0
    with pytest.raises(ConfigError, match="symmetric"):
        preset("int8_dynamic", weight_range="narrow", weight_symmetric=False)
    with pytest.raises(ConfigError, match="weight_range"):
        preset("int8_dynamic", weight_range="wide")
    with pytest.raises(ConfigError, match="conv_weight_granularity"):
        preset("int8_dynamic", conv_weight_granularity="per_row")


def test_conv_weights_follow_their_own_granularity() -> None:
    conv = torch.tensor([[1.0, 0.001]]).reshape(2, 1, 1, 1)
    cfg = preset("onnx_int8_dynamic")  # per-channel Linear, per-tensor conv weights
    assert quantize_weight(conv, cfg, conv=True)[1].item() == 0.0
    assert quantize_weight(conv, cfg, conv=False)[1].item() == pytest.approx(0.001, rel=0.01)


def test_stress_keeps_the_float_function_and_refuses_bad_arguments(student, digits_xy) -> None:
    x, _ = digits_xy
    stressed = rescale_channels(student, 1, 500.0, fraction=0.25)
    assert check_preserved(student, stressed, x) < 1e-3
    mlp = MLP(1, 10, (8, 8), hidden=(16, 8)).eval()
    assert check_preserved(mlp, rescale_units(mlp, 1, 300.0, units=1), x) < 1e-3
    with pytest.raises(ConfigError, match="positive"):
        rescale_channels(student, 0, -2.0)
    with pytest.raises(ConfigError, match="block must"):
        rescale_channels(student, 3, 10.0)  # the last block feeds the head, not a conv
    with pytest.raises(ConfigError, match="at least one"):
        rescale_units(mlp, 0, 10.0, fraction=0.0)
    with pytest.raises(ConfigError, match="not function-preserving"):
        check_preserved(mlp, MLP(1, 10, (8, 8), hidden=(16, 8)).eval(), x)


def test_cpu_accumulation_and_no_warning(monkeypatch, student, digits_xy) -> None:
    assert int8_accumulation(frozenset({"avx2", "avx512_vnni"})) == "exact"
    assert int8_accumulation(frozenset({"asimd", "asimddp"})) == "exact"
    assert int8_accumulation(frozenset()) == "unknown"
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert int8_accumulation(frozenset({"avx2", "fma"})) == "saturating_pairs"

    # The simulator models both paths, so building the kernel warns on no CPU; the lines
    # that report a comparison name the simulated path and the kernel's.
    monkeypatch.setattr("qrl.quant.cpu.int8_accumulation", lambda flags=None: "saturating_pairs")
    x, _ = digits_xy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OnnxRuntimeBackend(student, x[:8])
        OnnxRuntimeBackend(student, x[:8], reduce_range=True)
    line = describe_paths("saturating_pairs", frozenset({"avx2", "fma"}))
    assert line.startswith("simulated: saturating 16-bit pairs")
    assert "this CPU (x86 without VNNI): saturating 16-bit pairs" in line


def test_mirror_presets() -> None:
    assert mirror_preset("onnxruntime") == "onnx_int8_dynamic"
    assert mirror_preset("onnxruntime", onnx_reduce_range=True) == "onnx_int8_dynamic_reduce_range"
    assert mirror_preset("torch_ao") == "torch_int8_dynamic"
    with pytest.raises(ConfigError, match="unknown quant backend"):
        mirror_preset("tflite")
