"""Input-distribution and bit-width policies."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qrl.data import load_data
from qrl.errors import ConfigError
from qrl.policies import (
    CORRUPTIONS,
    BitsDecoder,
    InputDistribution,
    LearnedBits,
    RandomBits,
    StaticBits,
)

GREY = InputDistribution(10, 1)
RGB = InputDistribution(4, 3, list(CORRUPTIONS), class_mix=True)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_zero_action_is_the_identity() -> None:
    x = torch.rand(16, 3, 12, 12)
    assert torch.equal(RGB.transform(x, np.zeros(RGB.dim), _gen()), x)
    assert GREY.describe(np.zeros(GREY.dim)).startswith("identity")


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, RGB.dim, elements=st.floats(-1, 1)))
def test_outputs_stay_in_pixel_range(action: np.ndarray) -> None:
    x = torch.rand(4, 3, 10, 10)
    out = RGB.transform(x, action, _gen())
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_acts_and_is_seeded(name: str) -> None:
    dist = InputDistribution(4, 3, [name], class_mix=False)
    x = torch.rand(8, 3, 16, 16) * 0.5 + 0.25
    action = np.full(dist.dim, 0.8)
    a, b = dist.transform(x, action, _gen(1)), dist.transform(x, action, _gen(1))
    assert torch.equal(a, b)
    assert float((a - x).abs().mean()) > 1e-3
    assert name.split("_")[0] in dist.describe(action).replace("colour", "color")


def test_brightness_and_noise_mean_what_they_say() -> None:
    dist = InputDistribution(10, 1, ["brightness", "noise"], class_mix=False)
    x = torch.full((2000, 1, 8, 8), 0.3)
    bright = dist.transform(x, np.array([0.4, 0.0]), _gen())
    assert torch.allclose(bright, torch.full_like(x, 0.5))
    noisy = dist.transform(x, np.array([0.0, -0.5]), _gen())
    assert float((noisy - x).std()) == pytest.approx(0.15, rel=0.05)
    assert dist.describe(np.array([0.4, 0.5])) == "brightness +0.20, noise sigma 0.150"


def test_class_mixture_shifts_the_sampled_classes() -> None:
    pool = load_data("digits").train
    dist = InputDistribution(10, 1, [], class_mix=True)
    action = np.zeros(10)
    _, y0 = dist.sample(pool, 4000, action, _gen())
    action[7] = 1.0
    _, y7 = dist.sample(pool, 4000, action, _gen())
    share0, share7 = float((y0 == 7).float().mean()), float((y7 == 7).float().mean())
    assert share0 == pytest.approx(0.1, abs=0.02)
    expected = np.exp(3) / (9 + np.exp(3))  # prior ~ uniform: p_7 = e^3 / (9 + e^3)
    assert share7 == pytest.approx(expected, abs=0.03)
    assert "7:" in dist.describe(action)


def test_bad_policy_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown corruptions"):
        InputDistribution(10, 1, ["fog"])
    with pytest.raises(ConfigError, match="need 3-channel"):
        InputDistribution(10, 1, ["saturation"])
    with pytest.raises(ValueError, match="needs 20 values"):
        GREY.transform(torch.rand(1, 1, 8, 8), np.zeros(3), _gen())


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 12).flatmap(lambda n: hnp.arrays(np.float64, (7, n), elements=st.floats(-1, 1))),
    st.sampled_from([2.0, 3.5, 4.0, 6.0]),
)
def test_decoded_bits_respect_the_budget_and_the_allowed_set(
    actions: np.ndarray, budget: float
) -> None:
    decoder = BitsDecoder(actions.shape[1], (2, 3, 4, 5, 6, 8), budget)
    bits = decoder.decode(actions)
    assert bits.shape == actions.shape and bits.dtype == np.int64
    assert set(np.unique(bits)) <= {2, 3, 4, 5, 6, 8}
    assert (bits.mean(axis=1) <= budget + 1e-9).all()
    # The budget is spent: no single layer could still step up within it.
    for row in bits:
        raisable = [b for b in row if b < 8]
        if raisable:
            smallest_step = min({2: 1, 3: 1, 4: 1, 5: 1, 6: 2}[b] for b in raisable)
            assert row.sum() + smallest_step > budget * len(row) + 1e-9
    assert np.array_equal(bits[0], decoder.decode(actions[0]))


def test_decoder_documented_examples_and_errors() -> None:
    decoder = BitsDecoder(5)
    assert decoder.uniform().tolist() == [4, 4, 4, 4, 4]
    assert decoder.decode(np.array([1, 1, -1, -1, 0.0])).tolist() == [6, 6, 2, 2, 4]
    assert decoder.decode(np.full(5, 7.0)).tolist() == [4, 4, 4, 4, 4]  # clipped to [-1, 1]
    with pytest.raises(ValueError, match="NaN"):
        decoder.decode(np.array([0, 0, np.nan, 0, 0]))
    with pytest.raises(ConfigError, match="budget"):
        BitsDecoder(5, budget=9.0)
    with pytest.raises(ConfigError, match=r"2\.\.8"):
        BitsDecoder(5, allowed=(1, 4))


def test_bits_policies_give_one_row_per_input() -> None:
    decoder = BitsDecoder(3)
    x = torch.rand(6, 1, 8, 8)
    assert StaticBits([2, 4, 6])(x).tolist() == [[2, 4, 6]] * 6
    random_bits = RandomBits(decoder, seed=0)(x)
    assert random_bits.shape == (6, 3) and float(random_bits.float().mean(dim=1).max()) <= 4.0
    learned = LearnedBits(
        lambda obs: np.where(obs[:, :3] > 0.5, 1.0, -1.0),
        lambda inputs: inputs.flatten(1).numpy(),
        decoder,
    )
    assert learned(x).shape == (6, 3)
    assert learned(torch.ones(6, 1, 8, 8)).tolist() == [[4, 4, 4]] * 6  # constant action
