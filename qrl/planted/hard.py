"""The hard planted family: narrow regions with a graded approach, that random search rarely hits.

Each member is a base digits model (`qrl.planted.bases`) with a proximity detector planted into
it (`qrl.planted.plant.plant_proximity`). Its distance D sums two parts:
- an L1 distance, with random per-statistic weights, in the space of 3-5 statistics linear in
  the pixels (out of ten: brightness, mass balances, border, centre and the four quarters),
  from the median statistics of a random "anchor" distribution of the default input family;
- a class term: a linear probe of the model's own features for one target class
  (`qrl.planted.plant.class_probe`), so that only inputs the model sees as that class come
  near. The anchor favours the target class (its mixture weight high, the others low).
The region is the ball D <= radius, the radius holding 60% of the anchor's inputs
(`CORE_SHARE`): to be in it, a distribution must put most of its mass on one class *and* move
several image statistics to the anchor's at once, a corner of the 20-dimensional action space
that needs the corruption and the class-mixture coordinates to agree.

Like a real failure, the region has a graded approach: the planted outlier grows linearly from
the approach's edge (`APPROACH` radii) to the region, and with it the quantized copy's accuracy
drop. An action is found (`HardMember.found`) where the reward says so: the quantized copy
loses at least `FOUND_DROP` of the member's fixed draw of it. (Version 5 counted the planted
unit firing on half the draw, a fact of the float model; but the drop saturates near 0.9 on
the approach, before the unit fires on half the draw, so an agent that climbed the reward to
its top had not "found" it.)

A generated member is accepted only if
- the identity action is off its approach (none of the data's own inputs comes near: its
  quantized copy there is the base model's), and the float model keeps >= 90% accuracy at the
  anchor,
- none of the `VOLUME_BANK` uniform random actions of a shared bank is in its region grown by
  `MARGIN`, nor found (`_found_in_bank`; so random search finds few members within 1,000
  evaluations; the benchmark measures how few),
- outside the approach the quantized copy loses at most 5 points (on the identity and
  `PROBES` random actions), and
- the reward grows along the line from the identity to the anchor (`approach_profile`): some
  point before it is found pays a partial drop, so the approach can be climbed, and the anchor
  is found.

Generating a member takes seconds to minutes (most anchors give a region that is not narrow
enough), so `hard_member` keeps each one under `$QRL_CACHE/planted`; a seed that admits no
member within its draws is skipped. Members use their own seeds (`HARD_TUNING_SEEDS + i`,
`HARD_HELD_OUT_SEEDS + i`), apart from the easy family's; tuning never sees a held-out member.
"""

from __future__ import annotations

import dataclasses
import fcntl
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qrl.data import ImageData
from qrl.envs.failure_task import FailureTask
from qrl.planted.bases import ARCHITECTURES, base_model
from qrl.planted.family import (
    MIN_ANCHOR_ACC,
    PROBES,
    REFERENCE_DRAWS,
    Member,
    MemberSpec,
    _calibration,
    confined,
    first_acceptable,
)
from qrl.planted.plant import (
    ALL_STATISTICS,
    LEVEL,
    Proximity,
    class_features,
    class_probe,
    image_statistics,
    plant_proximity,
)
from qrl.quant import QuantConfig, preset
from qrl.victim import Victim, cache_dir

VERSION = 6  # bump when generation changes: stored members are keyed on it
HARD_TUNING_SEEDS = 3_000
HARD_HELD_OUT_SEEDS = 4_000
CORE_SHARE = 0.6  # the region's radius holds this share of the anchor's inputs
APPROACH = 3.0  # the approach reaches this many radii from the centre
VOLUME_BANK = 4_000  # shared uniform random actions none of which may be in a region
MARGIN = 1.1  # ... nor in the region grown by this factor (its volume is then well below)
ANCHORS = 200  # valid anchors tried per configuration (few give a region that narrow)
CLASS_WEIGHT = 1.5  # the class term's weight, in medians of the anchor's statistics distance
BANK_SEED = 7
LINE_POINTS = 11  # points on the line identity -> anchor of the approach profile
MIN_APPROACH_DROP = 0.02  # a point on the line before it is found pays at least this drop
FOUND_DROP = 0.5  # an action is found where the quantized copy loses this share of its draw


class HardMember(Member):
    """A hard member: an action is found where its reward, the quantized copy's accuracy drop
    on the fixed draw, reaches `FOUND_DROP`."""

    def found(self, action: np.ndarray) -> bool:
        return self.drop(action) >= FOUND_DROP


@dataclass(frozen=True)
class HardSpec(MemberSpec):
    """A hard member: a `Proximity` region, and its reward along the line into it."""

    region: Proximity | None = None
    profile: tuple[tuple[float, float, float], ...] = ()  # (t, drop, trigger rate) per point

    @property
    def kind(self) -> str:
        return "proximity"

    @property
    def name(self) -> str:
        k = len(self.region.statistics) if self.region else 0
        return f"{self.arch}-{self.granularity}-int{self.bits}-prox{k}-hard{VERSION}-s{self.seed}"

    def describe(self) -> dict[str, object]:
        assert self.region is not None
        return {
            **super().describe(),
            "narrow": True,
            "region": {
                "statistics": list(self.region.statistics),
                "weights": [round(w, 3) for w in self.region.weights],
                "radius": round(self.region.radius, 4),
                "approach": round(self.region.approach, 4),
            },
            "approach": [
                {"t": t, "drop": round(d, 3), "trigger_rate": round(r, 3)}
                for t, d, r in self.profile
            ],
        }


@cache
def _probes(arch: str) -> tuple[Tensor, Tensor]:
    """The base model's class probes (`class_probe`, one per class) as (weights (F, 10),
    biases (10,)), fit on clean training images and images of 32 random distributions."""
    base, data = _base(arch)
    task = _task(base, data, preset("int4_dynamic"))
    rng = np.random.default_rng(BANK_SEED)
    xs, ys = [task.pool.x], [task.pool.y]
    for i in range(32):
        action = rng.uniform(-1, 1, task.action_space.shape) * rng.uniform(0.2, 1.0)
        x, y = task.draw(action, 64, torch.Generator().manual_seed(i))
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    probes = [class_probe(base, x, y, k) for k in range(data.num_classes)]
    return torch.stack([w for w, _ in probes], dim=1), torch.tensor([b for _, b in probes])


@cache
def _base(arch: str) -> tuple[nn.Module, ImageData]:
    """`base_model`, loaded once per process (its file is read on every call)."""
    return base_model(arch)


def class_scores(arch: str, x: Tensor) -> Tensor:
    """Every class probe's score q on inputs x, (N, classes)."""
    weights, biases = _probes(arch)
    base, _ = _base(arch)
    with torch.no_grad():
        return class_features(base, x) @ weights + biases


@cache
def _bank() -> tuple[np.ndarray, Tensor, dict[str, Tensor]]:
    """The shared uniform random actions (VOLUME_BANK, 20), the statistics of their draws
    (VOLUME_BANK, REFERENCE_DRAWS, len(ALL_STATISTICS)) and, per architecture, the class
    scores of the draws (VOLUME_BANK, REFERENCE_DRAWS, classes); each action is drawn with its
    index as seed."""
    base, data = _base("mlp")  # draws depend on the data alone, not on the model
    task = _task(base, data, preset("int4_dynamic"))
    rng = np.random.default_rng(BANK_SEED)
    actions = rng.uniform(-1, 1, (VOLUME_BANK, *task.action_space.shape))
    names = sorted(ALL_STATISTICS)
    stats: list[Tensor] = []
    scores: dict[str, list[Tensor]] = {arch: [] for arch in ARCHITECTURES}
    for i, action in enumerate(actions):
        x, _ = task.draw(action, REFERENCE_DRAWS, torch.Generator().manual_seed(i))
        stats.append(image_statistics(x, names))
        for arch in ARCHITECTURES:
            scores[arch].append(class_scores(arch, x))
    return actions, torch.stack(stats), {a: torch.stack(v) for a, v in scores.items()}


def _task(base: nn.Module, data: ImageData, quant: QuantConfig) -> FailureTask:
    return FailureTask(
        Victim.from_models(base, base, data, quant),
        mode="input",
        split="train",
        reference="student",
    )


def _bank_columns(names: list[str]) -> Tensor:
    """The bank's statistics of `names` only, (VOLUME_BANK, REFERENCE_DRAWS, K)."""
    order = sorted(ALL_STATISTICS)
    return _bank()[1][..., [order.index(n) for n in names]]


def approach_profile(member: Member, anchor: np.ndarray) -> tuple[tuple[float, float, float], ...]:
    """(t, drop, trigger rate) at t anchor, t = 0 .. 1: the member's reward (the quantized
    copy's accuracy drop on its fixed draw) along the line from the identity into its region."""
    points = []
    for t in np.linspace(0.0, 1.0, LINE_POINTS):
        action = t * anchor
        x, y = member.reference_inputs(action)
        with torch.no_grad():
            fp = float((member.model(x).argmax(1) == y).float().mean())
            q = float((member.victim.quantized(x).argmax(1) == y).float().mean())
        points.append((round(float(t), 2), fp - q, member.trigger_rate(action)))
    return tuple(points)


def climbable(profile: tuple[tuple[float, float, float], ...]) -> bool:
    """Some point before the line's first found one pays a partial drop, so the approach has a
    slope to climb, and the anchor is found (a collapse whose constant answer is the class the
    region favours would cost nothing there)."""
    drops = [drop for _, drop, _ in profile]
    first = next((i for i, drop in enumerate(drops) if drop >= FOUND_DROP), None)
    return (
        first is not None
        and max(drops[:first], default=0.0) >= MIN_APPROACH_DROP
        and drops[-1] >= FOUND_DROP
    )


def generate_hard_member(seed: int) -> Member:
    """The hard member of `seed` (deterministic; see the module doc for what is accepted).

    Raises:
        RuntimeError: no acceptable configuration in 10 draws.
    """
    return first_acceptable(seed, _attempt, "hard planted region")


def _attempt(seed: int, rng: np.random.Generator) -> Member | None:
    """One drawn configuration's member, or None if no anchor gives an acceptable region."""
    arch = ARCHITECTURES[int(rng.integers(len(ARCHITECTURES)))]
    bits = int(rng.choice([4, 8]))
    granularity = str(rng.choice(["per_sample", "per_tensor"]))
    k = int(rng.choice([3, 4, 5]))
    names = [str(n) for n in rng.choice(sorted(ALL_STATISTICS), size=k, replace=False)]
    target = int(rng.integers(10))
    base, data = _base(arch)
    task = _task(base, data, preset("int4_dynamic", act_bits=bits, act_granularity=granularity))
    calibration = _calibration(task, rng)
    bank = _bank_columns(names)
    bank_q = _bank()[2][arch][..., target]
    scales = bank.median(dim=1).values.std(dim=0).clamp_min(1e-4)  # spread across actions
    weights_all, biases_all = _probes(arch)
    probe = (weights_all[:, target], float(biases_all[target]))
    probes = [np.zeros(task.action_space.shape)] + [
        rng.uniform(-1, 1, task.action_space.shape) for _ in range(PROBES)
    ]
    identity_x, _ = task.draw(
        np.zeros(task.action_space.shape), REFERENCE_DRAWS, torch.Generator().manual_seed(seed)
    )
    identity_stats = image_statistics(identity_x, names)
    identity_q = class_scores(arch, identity_x)[:, target]
    for anchor, x in _class_anchors(base, task, seed, rng, target):
        weights = rng.uniform(0.5, 1.5, k)
        region = _region_around(x, arch, names, target, scales, weights)
        if region is None:
            continue
        if bool((region.distance(identity_stats, identity_q) <= region.approach).any()):
            continue  # the data's own distribution is on the approach
        if _in_bank(region, bank, bank_q):
            continue  # a bank action is in the (grown) region: not narrow enough
        spec = HardSpec(
            seed, arch, bits, granularity, anchor=tuple(anchor.tolist()), narrow=True, region=region
        )
        model = plant_proximity(base, region, calibration, bits, probe)
        member = HardMember(spec, model, data)
        if member.trigger_rate(anchor) < 0.5 or not confined(member, probes):
            continue
        profile = approach_profile(member, anchor)
        if not climbable(profile) or _found_in_bank(member, bank, bank_q):
            continue
        member.spec = dataclasses.replace(spec, profile=profile)
        member.probes = tuple(probes)
        return member
    return None


def _region_around(
    x: Tensor, arch: str, names: list[str], target: int, scales: Tensor, weights: np.ndarray
) -> Proximity | None:
    """The region around the anchor's inputs x: centred on their median statistics, its class
    term weighted so that inputs of other classes (q ~ -1) end beyond the approach, its radius
    holding CORE_SHARE of them (None if that radius is 0)."""
    stats = image_statistics(x, names)
    q = class_scores(arch, x)[:, target]
    plain = Proximity(
        tuple(names),
        tuple(stats.median(dim=0).values.tolist()),
        tuple(scales.tolist()),
        tuple(weights.tolist()),
        1.0,
        2.0,
    )
    class_weight = CLASS_WEIGHT * float(plain.distance(stats).median())
    unscaled = dataclasses.replace(plain, target_class=target, class_weight=class_weight)
    radius = float(torch.quantile(unscaled.distance(stats, q), CORE_SHARE))
    if radius <= 0:
        return None
    return dataclasses.replace(unscaled, radius=radius, approach=APPROACH * radius)


def _in_bank(region: Proximity, bank: Tensor, bank_q: Tensor) -> bool:
    """Whether any bank action is in `region` grown by MARGIN (a first slice of the bank
    refuses most regions at a tenth of the cost)."""
    for part in (slice(0, VOLUME_BANK // 10), slice(VOLUME_BANK // 10, None)):
        near = region.distance(bank[part], bank_q[part]) <= MARGIN * region.radius
        if bool((near.float().mean(dim=1) >= 0.5).any()):
            return True
    return False


def _found_in_bank(member: Member, bank: Tensor, bank_q: Tensor) -> bool:
    """Whether the member finds any bank action (`HardMember.found`, on its own fixed draw).
    Only an action whose bank draw comes within the approach is evaluated: elsewhere the
    outlier is off, and the quantized copy is the base model's (`confined`)."""
    spec = member.spec
    assert isinstance(spec, HardSpec) and spec.region is not None
    near = (spec.region.distance(bank, bank_q) <= spec.region.approach).any(dim=1)
    actions = _bank()[0]
    return any(member.found(actions[i]) for i in torch.nonzero(near).flatten().tolist())


def _class_anchors(
    base: nn.Module, task: FailureTask, seed: int, rng: np.random.Generator, target: int
) -> Iterator[tuple[np.ndarray, Tensor]]:
    """Up to ANCHORS random anchors that favour class `target` (its mixture weight high, the
    others' low) and on whose fixed draw the float model keeps MIN_ANCHOR_ACC."""
    assert task.inputs is not None
    classes = task.inputs.num_classes if task.inputs.class_mix else 0
    corruptions = task.action_space.shape[0] - classes
    found = 0
    for _ in range(10 * ANCHORS):
        if found == ANCHORS:
            return
        anchor = np.zeros(task.action_space.shape)
        anchor[:corruptions] = rng.uniform(-1, 1, corruptions) * rng.uniform(0.2, 1.0)
        anchor[corruptions:] = rng.uniform(-1.0, 0.0, classes)
        anchor[corruptions + target] = rng.uniform(0.7, 1.0)
        x, y = task.draw(anchor, REFERENCE_DRAWS, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            if float((base(x).argmax(1) == y).float().mean()) >= MIN_ANCHOR_ACC:
                found += 1
                yield anchor, x


def _stored(seed: int) -> Path:
    return cache_dir() / "planted" / f"hard-s{seed}-v{VERSION}.pt"


def _save(member: Member, path: Path) -> None:
    spec = member.spec
    assert isinstance(spec, HardSpec) and spec.region is not None
    entry = {
        "spec": {
            **{f: getattr(spec, f) for f in ("seed", "arch", "bits", "granularity", "anchor")},
            "region": dataclasses.asdict(spec.region),
            "profile": spec.profile,
        },
        "state": member.model.state_dict(),
        "level": float(getattr(member.model, LEVEL)),
        "probes": [p.tolist() for p in member.probes],
    }
    tmp = path.with_suffix(".tmp")
    torch.save(entry, tmp)
    tmp.replace(path)


def _load(path: Path) -> Member:
    entry = torch.load(path, map_location="cpu", weights_only=True)
    raw = entry["spec"]
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in raw["region"].items()
    }
    region = Proximity(**fields)
    spec = HardSpec(
        raw["seed"],
        raw["arch"],
        raw["bits"],
        raw["granularity"],
        anchor=tuple(raw["anchor"]),
        narrow=True,
        region=region,
        profile=tuple(tuple(p) for p in raw["profile"]),
    )
    base, data = _base(spec.arch)
    probe = None
    if region.target_class is not None:
        weights, biases = _probes(spec.arch)
        probe = (weights[:, region.target_class], float(biases[region.target_class]))
    # The planted layers' shapes come from the region; their values from the stored state.
    model = plant_proximity(base, region, data.train.x[:64], spec.bits, probe)
    model.load_state_dict(entry["state"])
    setattr(model, LEVEL, float(entry["level"]))
    member = HardMember(spec, model, data)
    member.probes = tuple(np.asarray(p) for p in entry["probes"])
    return member


def hard_member(seed: int) -> Member | None:
    """The hard member of `seed`, or None where the seed admits none; generated once and kept
    under `$QRL_CACHE/planted` (generating one takes a minute), keyed on `VERSION`."""
    path = _stored(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent processes generate it once
        if path.is_file():
            return _load(path)
        refused = path.with_suffix(".none")
        if refused.is_file():
            return None
        try:
            member = generate_hard_member(seed)
        except RuntimeError:
            refused.touch()
            return None
        _save(member, path)
        return member


def _first(start: int, n: int) -> list[Member]:
    """The first `n` members of the seeds from `start` on (seeds that admit none skipped)."""
    members: list[Member] = []
    seed = start
    while len(members) < n:
        # About one seed in five admits a member (6 of the first 47 tuning seeds, 21 of the
        # first 52 held-out ones); the guard only stops a family that admits almost none.
        if seed - start >= 10 * n + 10:
            raise RuntimeError(f"too few hard members from seed {start}: {len(members)} of {n}")
        member = hard_member(seed)
        if member is not None:
            members.append(member)
        seed += 1
    return members


def hard_tuning_members(n: int) -> list[Member]:
    """The first `n` hard tuning members (hyperparameters are chosen on these only)."""
    return _first(HARD_TUNING_SEEDS, n)


def hard_held_out_members(n: int) -> list[Member]:
    """The first `n` hard held-out members (what results are reported on)."""
    return _first(HARD_HELD_OUT_SEEDS, n)
