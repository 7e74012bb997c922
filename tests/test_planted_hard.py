"""The hard planted family: a proximity detector exact in float, a region that is a fact of the
float model, a quantized collapse inside it and a graded drop on its approach.

The fast tests plant regions by hand around a distribution's statistics; generating a member
(a minute, with its bank of random actions) is in the slow test, which checks what the
generator guarantees on any CPU: the member's anchor is in its region, the data's own
distribution is off its approach, what it was accepted on holds again, and a stored member
loads back the same.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from qrl.envs.failure_task import FailureTask
from qrl.errors import ConfigError
from qrl.planted.bases import base_model
from qrl.planted.hard import climbable
from qrl.planted.plant import (
    Proximity,
    class_features,
    class_probe,
    image_statistics,
    outlier_value,
    plant_proximity,
    triggered,
)
from qrl.quant import preset
from qrl.victim import Victim

NAMES = ("mean", "x_moment", "top_left", "border")
ANCHOR = np.array([0.3, 0.2, -0.1, 0.4, -0.3, 0.1, 0.0, 0.0, 0.0, 0.2] + [0.0] * 10)


def _draw(
    arch: str, action: np.ndarray, n: int = 512, bits: int = 8, granularity: str = "per_sample"
):
    base, data = base_model(arch)
    quant = preset("int4_dynamic", act_bits=bits, act_granularity=granularity)
    task = FailureTask(
        Victim.from_models(base, base, data, quant),
        mode="input",
        split="train",
        reference="student",
    )
    x, y = task.draw(action, n, torch.Generator().manual_seed(0))
    return base, data, task, x, y


def _region(x: torch.Tensor, target: int | None = None, q: torch.Tensor | None = None) -> Proximity:
    """A ball around x's median statistics holding 60% of x, its approach twice as far."""
    stats = image_statistics(x, NAMES)
    scales = stats.std(dim=0).clamp_min(1e-3)
    plain = Proximity(
        NAMES,
        tuple(stats.median(dim=0).values.tolist()),
        tuple(scales.tolist()),
        (1.0, 0.7, 1.3, 1.0),
        1.0,
        2.0,
    )
    if target is not None:
        plain = dataclasses.replace(plain, target_class=target, class_weight=1.0)
    radius = float(torch.quantile(plain.distance(stats, q), 0.6))
    return dataclasses.replace(plain, radius=radius, approach=2 * radius)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("with_class", [False, True])
def test_the_detector_is_exact_in_float_and_its_region_is_the_ball(
    arch: str, with_class: bool
) -> None:
    base, _, _, x, y = _draw(arch, ANCHOR)
    probe, q, target = None, None, None
    if with_class:
        target = int(torch.bincount(y).argmax())
        probe = class_probe(base, x, y, target)
        with torch.no_grad():
            q = class_features(base, x) @ probe[0] + probe[1]
    region = _region(x, target, q)
    model = plant_proximity(base, region, x[:256], bits=8, probe=probe)
    with torch.no_grad():
        assert torch.allclose(model(x), base(x), atol=1e-4)  # float outputs unchanged
    distance = region.distance(image_statistics(x, NAMES), q)
    inside = distance <= region.radius
    # The region is the ball, to within float rounding at its edge.
    edge = (distance - region.radius).abs() < 1e-3 * region.radius
    assert torch.equal(triggered(model, x)[~edge], inside[~edge])
    assert 0.5 <= float(inside.float().mean()) <= 0.7  # the ball holds ~60% of the draw
    # The outlier is linear in the distance on the approach: M (1 - D / approach).
    value = outlier_value(model, x)
    on = distance < region.approach
    magnitude = float(value[on][0] / (1 - distance[on][0] / region.approach))
    expected = magnitude * (1 - distance / region.approach)
    assert torch.allclose(value[on], expected[on], rtol=1e-3, atol=1e-3 * magnitude)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_the_quantized_copy_collapses_inside_and_the_drop_grows_on_the_approach(arch: str) -> None:
    base, data, _, x, y = _draw(arch, ANCHOR, n=1024)
    region = _region(x)
    model = plant_proximity(base, region, x[:256], bits=8)
    quant = preset("int4_dynamic", act_bits=8, act_granularity="per_sample")
    planted_q = Victim.from_models(model, model, data, quant).quantized
    base_q = Victim.from_models(base, base, data, quant).quantized
    distance = region.distance(image_statistics(x, NAMES))
    with torch.no_grad():
        wrong = (planted_q(x).argmax(1) != y).float()
        same = planted_q(x).argmax(1) == base_q(x).argmax(1)
    far = distance >= region.approach
    assert bool(same[far].all())  # off the approach the planted copy is the base copy
    bins = [
        distance <= 0.5 * region.radius,
        (distance > 1.3 * region.radius) & (distance < 1.7 * region.radius),
        far,
    ]
    errors = [float(wrong[b].mean()) for b in bins]
    assert errors[0] > 0.7  # deep inside: a collapse (~0.9 here)
    assert errors[0] > errors[1] > errors[2]  # graded: less on the approach, least outside


def test_bad_regions_and_probes_are_refused() -> None:
    with pytest.raises(ConfigError, match="radius < approach"):
        Proximity(("mean",), (0.1,), (0.1,), (1.0,), 2.0, 1.0)
    with pytest.raises(ConfigError, match="one centre, scale and weight"):
        Proximity(("mean", "border"), (0.1,), (0.1,), (1.0,), 1.0, 2.0)
    with pytest.raises(ConfigError, match="proximity statistics"):
        Proximity(("brightness",), (0.1,), (0.1,), (1.0,), 1.0, 2.0)
    base, _, _, x, _ = _draw("mlp", ANCHOR, n=64)
    region = dataclasses.replace(_region(x), target_class=3, class_weight=1.0)
    with pytest.raises(ConfigError, match="class term needs its probe"):
        plant_proximity(base, region, x, bits=8)


def test_a_profile_is_climbable_when_the_reward_rises_before_the_region() -> None:
    rises = ((0.0, 0.0, 0.0), (0.5, 0.2, 0.1), (1.0, 0.9, 0.6))
    needle = ((0.0, 0.0, 0.0), (0.5, 0.0, 0.1), (1.0, 0.9, 0.6))
    never_inside = ((0.0, 0.0, 0.0), (1.0, 0.5, 0.4))
    costs_nothing = ((0.0, 0.0, 0.0), (0.5, 0.2, 0.1), (1.0, 0.0, 0.6))  # a harmless collapse
    # found where the reward is, not where the unit fires: a jump from 0 to found is a needle
    jumps = ((0.0, 0.0, 0.0), (0.5, 0.9, 0.1), (1.0, 0.9, 0.6))
    assert climbable(rises)
    assert not climbable(needle)
    assert not climbable(jumps)
    assert not climbable(never_inside)
    assert not climbable(costs_nothing)


@pytest.mark.slow
def test_a_generated_member_keeps_what_it_was_accepted_on(tmp_path) -> None:
    from qrl.planted import hard
    from qrl.planted.family import confined

    member = _first_generated(hard, hard.HARD_HELD_OUT_SEEDS)
    spec = member.spec
    anchor = np.asarray(spec.anchor)
    assert member.found(anchor)
    identity = np.zeros_like(anchor)
    assert not member.found(identity)
    x, _ = member.reference_inputs(identity)
    assert not bool((outlier_value(member.model, x) > 0).any())  # off the approach
    assert confined(member, member.probes)
    assert climbable(spec.profile)
    # Narrow: none of the bank's random actions is in the region; on the member's own draws
    # (not the bank's), a sample of them is not either.
    actions = hard._bank()[0][:200]
    assert not any(member.found(a) for a in actions)
    # A stored member loads back the same.
    hard._save(member, tmp_path / "member.pt")
    again = hard._load(tmp_path / "member.pt")
    assert again.spec == spec
    for action in (anchor, 0.5 * anchor, identity):
        assert again.trigger_rate(action) == member.trigger_rate(action)


def _first_generated(hard, start: int):
    """The first member generated from the seeds from `start` on (some seeds admit none)."""
    for seed in range(start, start + 10):
        try:
            return hard.generate_hard_member(seed)
        except RuntimeError:
            continue
    raise AssertionError(f"no hard member among the seeds {start}..{start + 9}")
