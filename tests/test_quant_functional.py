"""Property tests of the pure quantization functions (hypothesis)."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qrl.errors import ConfigError
from qrl.quant import QuantConfig, compute_qparams, fake_quantize, fake_quantize_ste, qrange
from qrl.quant.functional import observe_range, quantize_activation

BITS = st.integers(2, 8)
# Activations: finite, moderately sized, batch-first (B, F).
ACTS = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 6), st.integers(1, 40)),
    elements=st.floats(-50, 50, width=32, allow_nan=False),
)
SETTINGS = settings(max_examples=60, deadline=None)


def _qparams(x: torch.Tensor, bits: int, symmetric: bool, granularity: str = "per_sample"):
    lo, hi = observe_range(x, granularity)
    qmin, qmax = qrange(bits, symmetric)
    scale, zp = compute_qparams(lo, hi, qmin, qmax, symmetric=symmetric)
    return scale, zp, qmin, qmax


@SETTINGS
@given(ACTS, BITS, st.booleans())
def test_fake_quantize_is_idempotent_for_fixed_qparams(a: np.ndarray, bits: int, sym: bool) -> None:
    x = torch.from_numpy(a)
    scale, zp, qmin, qmax = _qparams(x, bits, sym)
    once = fake_quantize(x, scale, zp, qmin, qmax)
    assert torch.equal(fake_quantize(once, scale, zp, qmin, qmax), once)


@SETTINGS
@given(ACTS, BITS)
def test_error_is_at_most_half_a_step_inside_the_range(a: np.ndarray, bits: int) -> None:
    x = torch.from_numpy(a)
    scale, zp, qmin, qmax = _qparams(x, bits, symmetric=False)
    # min-max asymmetric: every value is inside the clipping range.
    err = (fake_quantize(x, scale, zp, qmin, qmax) - x).abs()
    assert bool((err <= scale / 2 * (1 + 1e-4) + 1e-6).all())


@SETTINGS
@given(ACTS, BITS, st.booleans())
def test_values_lie_on_the_integer_grid(a: np.ndarray, bits: int, sym: bool) -> None:
    x = torch.from_numpy(a)
    scale, zp, qmin, qmax = _qparams(x, bits, sym)
    k = fake_quantize(x, scale, zp, qmin, qmax) / scale + zp
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert int(k.round().min()) >= qmin and int(k.round().max()) <= qmax
    assert len(torch.unique(k.round())) <= 2**bits


def test_ste_passes_gradients_inside_the_range_only() -> None:
    x = torch.linspace(-3, 3, 61, requires_grad=True)
    scale, zp = torch.tensor(0.1), torch.tensor(8.0)  # 4 bits: range [-0.8, 0.7]
    out = fake_quantize_ste(x, scale, zp, 0, 15)
    out.sum().backward()
    assert x.grad is not None
    inside = (x.detach() >= -0.8 - 1e-6) & (x.detach() <= 0.7 + 1e-6)
    assert torch.equal(x.grad, inside.float())
    assert torch.allclose(out, fake_quantize(x.detach(), scale, zp, 0, 15))


@SETTINGS
@given(ACTS, BITS, st.floats(0.01, 100))
def test_dynamic_scale_follows_the_input_range(a: np.ndarray, bits: int, c: float) -> None:
    x = torch.from_numpy(a)
    cfg = QuantConfig(act_bits=bits)
    base, lo, hi = quantize_activation(x, bits, cfg)
    scaled, lo_c, hi_c = quantize_activation(x * c, bits, cfg)
    assert torch.allclose(lo_c, lo * c, rtol=1e-5, atol=1e-6)
    assert torch.allclose(hi_c, hi * c, rtol=1e-5, atol=1e-6)
    step = ((hi.clamp(min=0) - lo.clamp(max=0)) / (2**bits - 1)).clamp_min(
        1e-6
    ) * c  # zero in range
    # Equal up to at most one grid step where float rounding moves a value across a tie.
    assert bool(((scaled - base * c).abs() <= step * 1.001 + 1e-5).all())


def test_per_sample_qparams_ignore_the_rest_of_the_batch() -> None:
    x = torch.randn(4, 10)
    x[3] *= 100  # an outlier input
    cfg = QuantConfig(act_bits=3)
    alone, _, _ = quantize_activation(x[:1], 3, cfg)
    together, _, _ = quantize_activation(x, 3, cfg)
    assert torch.equal(alone[0], together[0])
    per_tensor, _, _ = quantize_activation(
        x, 3, QuantConfig(act_bits=3, act_granularity="per_tensor")
    )
    assert not torch.equal(per_tensor[0], together[0])


def test_constant_inputs_do_not_divide_by_zero() -> None:
    for include_zero in (True, False):
        cfg = QuantConfig(act_bits=4, act_include_zero=include_zero)
        for value in (0.0, 3.0, -2.0):
            out, _, _ = quantize_activation(torch.full((2, 5), value), 4, cfg)
            assert torch.allclose(out, torch.full((2, 5), value), atol=abs(value) / 7 + 1e-6)


def test_percentile_clipping_clips_outliers() -> None:
    x = torch.cat([torch.linspace(0, 1, 999), torch.tensor([1000.0])]).view(1, -1)
    cfg = QuantConfig(act_bits=8, act_clip="percentile", act_percentile=99.0)
    out, _, hi = quantize_activation(x, 8, cfg)
    assert float(hi) < 2.0 and float(out.max()) < 2.0
    assert float((out[0, :999] - x[0, :999]).abs().max()) < 0.01


@pytest.mark.parametrize("bad", [1, 9, 0, 4.5, True, "8"])
def test_bits_outside_2_to_8_are_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match="act_bits must be an integer from 2 to 8"):
        QuantConfig(act_bits=bad)  # type: ignore[arg-type]


def test_nan_and_inf_inputs_are_rejected() -> None:
    for bad in (float("nan"), float("inf")):
        x = torch.ones(2, 3)
        x[1, 1] = bad
        with pytest.raises(ValueError, match="NaN or infinite activations"):
            quantize_activation(x, 8, QuantConfig())


def test_symmetric_grid_follows_torch_observers() -> None:
    qmin, qmax = qrange(8, symmetric=True)
    assert (qmin, qmax) == (-128, 127)
    scale, zp = compute_qparams(torch.tensor(-2.0), torch.tensor(1.0), qmin, qmax, symmetric=True)
    assert float(scale) == pytest.approx(2.0 / 127.5) and float(zp) == 0.0
    assert qrange(8, symmetric=False, reduce_range=True) == (0, 127)
    lo, hi = qrange(torch.tensor([2, 8]), symmetric=False)
    assert lo.tolist() == [0.0, 0.0] and hi.tolist() == [3.0, 255.0]
