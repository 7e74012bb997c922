"""ONNX Runtime's saturating uint8 x int8 path (x86 without VNNI), checked on any CPU against the
kernel's outputs recorded on such a CPU (tests/fixtures/onnxruntime-x86-avx2/, see its README)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qrl.errors import ConfigError
from qrl.fidelity import recorded_misses
from qrl.quant import preset, quantized_copy
from qrl.quant.saturating import saturating_pairs_matmul

FIXTURES = Path(__file__).parent / "fixtures" / "onnxruntime-x86-avx2"


@pytest.fixture(scope="module")
def ops() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "ops.npz"))


@pytest.fixture(scope="module")
def recorded() -> dict:
    return torch.load(FIXTURES / "models.pt", weights_only=False)


def _cases(ops: dict[str, np.ndarray], op: str) -> list[str]:
    return sorted({k.rsplit("_", 1)[0] for k in ops if k.startswith(op)})


def test_every_recorded_matmul_integer_output_is_reproduced(ops) -> None:
    cases = _cases(ops, "matmul")
    assert len(cases) == 12
    for key in cases:
        a, b, zp = ops[f"{key}_A"], ops[f"{key}_B"], int(ops[f"{key}_azp"])
        qa = torch.from_numpy(a.astype(np.float32))
        qw = torch.from_numpy(b.T.astype(np.float32))  # (N, K): weights output-first
        out = saturating_pairs_matmul(qa, qw) - zp * qw.double().sum(1)
        np.testing.assert_array_equal(out.numpy().astype(np.int64), ops[f"{key}_Y"], err_msg=key)
        exact = (a.astype(np.int64) - zp) @ b.astype(np.int64)
        assert (exact != ops[f"{key}_Y"]).any(), f"{key} would not tell the paths apart"


def test_every_recorded_conv_integer_output_is_exact_int32(ops) -> None:
    cases = _cases(ops, "conv")
    assert len(cases) == 8
    for key in cases:
        x, w, zp = ops[f"{key}_X"], ops[f"{key}_W"], int(ops[f"{key}_xzp"])
        exact = F.conv2d(
            torch.from_numpy(x.astype(np.float64) - zp),
            torch.from_numpy(w.astype(np.float64)),
            padding=1,
        )
        np.testing.assert_array_equal(exact.numpy().astype(np.int64), ops[f"{key}_Y"])


def test_every_recorded_member_is_within_the_fidelity_targets(recorded) -> None:
    assert len(recorded["members"]) == 73
    saturating = recorded_misses(recorded, "saturating_pairs")
    assert len(saturating) == 73 * 4  # per-channel and per-tensor weights, per image and batch
    assert {case: p for case, p in saturating.items() if p} == {}
    # The recorded kernel is not the exact one: exact arithmetic misses many cases.
    assert sum(bool(p) for p in recorded_misses(recorded, "exact").values()) > 10


def test_auto_follows_this_cpu_and_only_uint8_by_int8(monkeypatch) -> None:
    monkeypatch.setattr("qrl.quant.config.int8_accumulation", lambda: "saturating_pairs")
    assert preset("onnx_int8_dynamic").accumulation_path() == "saturating_pairs"
    assert preset("onnx_int8_dynamic", act_bits=4).accumulation_path() == "exact"
    assert preset("onnx_int8_dynamic", accumulation="exact").accumulation_path() == "exact"
    monkeypatch.setattr("qrl.quant.config.int8_accumulation", lambda: "exact")
    assert preset("onnx_int8_dynamic").accumulation_path() == "exact"
    assert preset("onnx_int8_dynamic", accumulation="saturating_pairs").accumulation_path() == (
        "saturating_pairs"
    )
    with pytest.raises(ConfigError, match="uint8 x int8"):
        preset("int4_dynamic", accumulation="saturating_pairs")
    with pytest.raises(ConfigError, match="accumulation must be one of"):
        preset("onnx_int8_dynamic", accumulation="fast")


def test_the_saturating_layer_trains_like_the_exact_one() -> None:
    torch.manual_seed(0)
    # Large activations times large weights of one sign: pairs clip at 32767.
    model = nn.Sequential(nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.full((4, 16), 0.5))
    x = torch.rand(8, 16) + 1.0
    exact_cfg = preset("onnx_int8_dynamic", act_granularity="per_sample", accumulation="exact")
    saturating_cfg = dataclasses.replace(exact_cfg, accumulation="saturating_pairs")
    outs, grads = [], []
    for cfg in (exact_cfg, saturating_cfg):
        quantized = quantized_copy(model, cfg)
        out = quantized(x)
        out.sum().backward()
        outs.append(out.detach())
        grads.append(next(quantized.parameters()).grad)
    assert (outs[1] < outs[0] - 1.0).all()  # clipped pair sums: a smaller output
    torch.testing.assert_close(grads[0], grads[1])  # straight through: the exact path's gradient
