"""The planted-failure family: exact in float, a quantized collapse inside the region only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qrl.errors import ConfigError
from qrl.models import SmallCNN
from qrl.planted.bases import base_model
from qrl.planted.family import (
    HELD_OUT_SEEDS,
    TUNING_SEEDS,
    Member,
    generate_member,
    held_out_members,
    tuning_members,
)
from qrl.planted.plant import Band, plant_bands, triggered

# Fast-to-generate members covering both architectures, both region kinds, both
# granularities and both bit-widths (found by generating; generation is deterministic given
# the base models, which are trained from their seed).
SEEDS = {
    "mlp bands int8 per_tensor": 1000,
    "cnn bands int8 per_sample": 2002,
    "mlp halfspace int4 per_sample": 2001,
    "cnn halfspace int4 per_tensor": 2003,
}


@pytest.fixture(scope="module", params=list(SEEDS))
def member(request: pytest.FixtureRequest) -> Member:
    return generate_member(SEEDS[request.param])


def _accuracies(member: Member, action: np.ndarray) -> tuple[float, float, float]:
    x, y = member.reference_inputs(action)
    base, _ = base_model(member.spec.arch)
    with torch.no_grad():
        fp = member.model(x)
        assert torch.allclose(fp, base(x), atol=1e-4)  # float outputs unchanged
        acc = lambda logits: float((logits.argmax(1) == y).float().mean())  # noqa: E731
        return acc(fp), acc(member.victim.qstudent(x)), member.trigger_rate(action)


def test_the_member_is_a_function_of_its_seed(member: Member) -> None:
    assert generate_member(member.spec.seed).spec == member.spec
    if member.spec.narrow:  # narrow: no uniform random action of a fresh sample is inside
        rng = np.random.default_rng(5)
        assert not any(member.found(a) for a in rng.uniform(-1, 1, (60, 20)))


def test_the_family_covers_architectures_region_kinds_and_quantizers() -> None:
    specs = [generate_member(seed).spec for seed in SEEDS.values()]
    assert {(s.arch, s.kind, s.bits) for s in specs} == {
        ("mlp", "bands", 8),
        ("cnn", "bands", 8),
        ("mlp", "halfspace", 4),
        ("cnn", "halfspace", 4),
    }
    assert {s.granularity for s in specs} == {"per_sample", "per_tensor"}


def test_float_is_unchanged_everywhere(member: Member) -> None:
    rng = np.random.default_rng(0)
    for action in [np.array(member.spec.anchor), *rng.uniform(-1, 1, (12, 20))]:
        _accuracies(member, action)  # asserts the logits equal the base model's


def test_quantized_copy_collapses_inside_the_region_and_not_outside(member: Member) -> None:
    anchor = np.array(member.spec.anchor)
    fp, q, rate = _accuracies(member, anchor)
    assert member.found(anchor) and rate >= 0.5
    # Per-tensor: the whole batch collapses; per-sample: the triggered inputs do.
    assert q <= fp - (0.6 if member.spec.granularity == "per_tensor" else 0.4 * rate)
    outside = 0
    rng = np.random.default_rng(1)
    for action in [np.zeros(20), *rng.uniform(-1, 1, (40, 20))]:
        x, _ = member.reference_inputs(action)
        if bool(triggered(member.model, x).any()):
            continue
        fp, q, _ = _accuracies(member, action)
        assert fp - q <= 0.06, (member.spec.name, action)
        outside += 1
    assert outside >= 10  # random actions mostly fall outside even a wide region


def test_tuning_and_held_out_members_never_share_a_seed() -> None:
    tuning, held_out = tuning_members(2), held_out_members(2)
    assert [m.spec.seed for m in tuning] == [TUNING_SEEDS, TUNING_SEEDS + 1]
    assert [m.spec.seed for m in held_out] == [HELD_OUT_SEEDS, HELD_OUT_SEEDS + 1]


def test_planting_refuses_what_it_cannot_plant() -> None:
    x = torch.rand(8, 1, 8, 8)
    with pytest.raises(ConfigError, match="MLP or SmallCNN"):
        plant_bands(torch.nn.Linear(64, 10), [Band("mean", 0.2, 0.3, 0.05)], x, 8)
    with pytest.raises(ConfigError, match="statistics from"):
        plant_bands(SmallCNN(width=4).eval(), [Band("hue", 0.2, 0.3, 0.05)], x, 8)
    with pytest.raises(ConfigError, match="hi >= lo"):
        Band("mean", 0.3, 0.2, 0.05)
