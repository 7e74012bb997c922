"""A family of planted failures, generated from seeds, split into tuning and held-out members.

Each member is a trained digits model (MLP or CNN, `qrl.planted.bases`) with a band detector
planted into it (`qrl.planted.plant`), a quantizer (4 or 8 activation bits, per-sample or
per-tensor ranges) and a region: an AND of 1-3 bands on image statistics, placed around the
statistics of a random "anchor" distribution of the default input family (7 corruptions and
the class mixture, 20 action dims), with random widths. So regions differ in size and
location, and those of 2-3 narrow bands are narrow corners of the action space. Regions are
bands on image statistics linear in the pixels (brightness, horizontal / vertical mass
balance, border and centre mass) at 8 bits, and half-spaces of a signed mix of them at 4 bits
(where a band's detector would drown in the rounding; see `qrl.planted.plant`).

Whether an action is in the region is a fact: `Member.trigger_rate(action)` is the fraction of
a fixed draw of 256 inputs from the action's distribution (train split, the member's own
seed) on which the planted unit fires in float, and `Member.found(action)` is that fraction
reaching one half. A generated member is accepted only if its anchor is found (the region is
reachable), the identity action is not (the failure is hidden from the data's own
distribution), the float model keeps >= 90% accuracy at the anchor (the failure is on valid
inputs, which the environment's validity floor asks for), and on the identity and 32 random
actions whose draws never trigger the quantized copy loses at most 5 points (the failure does
not leak outside the region). Half the members (`NARROW_SHARE`) must also be narrow: none of
200 uniform random actions may be in the region (its volume is then below ~1.5% of the action
cube, at 95% confidence): corners that random search rarely hits.

Members of the tuning set use seeds `TUNING_SEEDS + i`, held-out members `HELD_OUT_SEEDS + i`:
tuning never sees a held-out member.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import Tensor, nn

from qrl.data import ImageData
from qrl.envs.failure_task import FailureTask
from qrl.planted.bases import ARCHITECTURES, base_model
from qrl.planted.plant import (
    STATISTICS,
    Band,
    image_statistics,
    outlier_value,
    plant_bands,
    plant_halfspace,
    triggered,
)
from qrl.quant import QuantConfig, preset
from qrl.victim import Victim

TUNING_SEEDS = 1_000
HELD_OUT_SEEDS = 2_000
REFERENCE_DRAWS = 256  # inputs per trigger-rate estimate
FOUND_RATE = 0.5  # an action is in the region when the unit fires on half its inputs or more
MIN_ANCHOR_ACC = 0.9  # the float model's accuracy at the anchor (the environment's floor)
MAX_IDENTITY_RATE = 0.02  # the data's own distribution must (all but) never trigger
NARROW_SHARE = 0.5  # members whose region must be narrow (a corner random search rarely hits)
VOLUME_PROBES = 200  # uniform random actions none of which may be in a narrow region (< ~1.5%)
PROBES = 32  # random actions on which a new member's failure is checked to stay inside
MAX_OUTSIDE_DROP = 0.05  # the quantized copy's largest accuracy drop where nothing triggers


@dataclass(frozen=True)
class HalfSpace:
    """The region d . s(x) > threshold over the named statistics (4-bit MLP members)."""

    statistics: tuple[str, ...]
    direction: tuple[float, ...]
    threshold: float
    width: float


@dataclass(frozen=True)
class MemberSpec:
    """What a member is, in words and numbers (JSON-able through `describe`).

    Its region is `bands` (an AND of bands, 8-bit members) or `halfspace` (4-bit members).
    """

    seed: int
    arch: str
    bits: int
    granularity: str
    bands: tuple[Band, ...] = ()
    halfspace: HalfSpace | None = None
    anchor: tuple[float, ...] = field(default=(), repr=False)
    narrow: bool = False  # none of VOLUME_PROBES uniform random actions is in the region

    @property
    def kind(self) -> str:
        return "halfspace" if self.halfspace is not None else "bands"

    @property
    def name(self) -> str:
        k = len(self.halfspace.statistics) if self.halfspace else len(self.bands)
        size = "narrow" if self.narrow else "wide"
        return f"{self.arch}-{self.granularity}-int{self.bits}-{self.kind}{k}-{size}-s{self.seed}"

    def describe(self) -> dict[str, object]:
        region: object
        if self.halfspace is not None:
            region = dataclasses.asdict(self.halfspace)
        else:
            region = [dataclasses.asdict(b) for b in self.bands]
        return {
            "name": self.name,
            "seed": self.seed,
            "arch": self.arch,
            "bits": self.bits,
            "granularity": self.granularity,
            "kind": self.kind,
            "narrow": self.narrow,
            "region": region,
        }


class Member:
    """A planted model, its quantizer, and the region its quantized copy fails in.

    Attributes:
        spec: architecture, quantizer, bands, seed.
        model: the planted float model (exactly the base model's outputs).
        data: the digits data.
        quant: the member's dynamic quantizer.
        task: the default input-distribution task on the train split (reference: the model in
            full precision), which draws the reference inputs of `trigger_rate`.
        probes: the actions the generator accepted the member on: the identity and `PROBES`
            random ones, on each of which the reference draw either triggers the planted unit
            or the quantized copy loses at most MAX_OUTSIDE_DROP (`confined`). Empty for a
            member not made by `generate_member`.
        volume_probes: for a narrow member, the `VOLUME_PROBES` uniform random actions none of
            which is in its region; empty otherwise.
    """

    def __init__(self, spec: MemberSpec, model: nn.Module, data: ImageData) -> None:
        self.spec, self.model, self.data = spec, model, data
        self.probes: tuple[np.ndarray, ...] = ()
        self.volume_probes: tuple[np.ndarray, ...] = ()
        self.quant: QuantConfig = preset(
            "int4_dynamic", act_bits=spec.bits, act_granularity=spec.granularity
        )
        self.task = FailureTask(self.victim, mode="input", split="train", reference="student")

    @cached_property
    def victim(self) -> Victim:
        """The model as its own teacher: a gap is then exactly the drop quantization causes."""
        return Victim.from_models(self.model, self.model, self.data, self.quant)

    def reference_inputs(self, action: np.ndarray) -> tuple[Tensor, Tensor]:
        """The fixed draw (the member's seed) from the action's distribution."""
        gen = torch.Generator().manual_seed(self.spec.seed)
        return self.task.draw(np.asarray(action, dtype=np.float64), REFERENCE_DRAWS, gen)

    def trigger_rate(self, action: np.ndarray) -> float:
        """Fraction of the fixed draw on which the planted unit fires in float."""
        x, _ = self.reference_inputs(action)
        return float(triggered(self.model, x).float().mean())

    def found(self, action: np.ndarray) -> bool:
        """Whether `action` is in the member's failure region (a fact, not a gap threshold)."""
        return self.trigger_rate(action) >= FOUND_RATE

    def drop(self, action: np.ndarray) -> float:
        """The quantized copy's accuracy drop on the fixed draw of `action` (the reward)."""
        return self._drop_on(*self.reference_inputs(action))

    def outside_drop(self, action: np.ndarray) -> float | None:
        """The quantized copy's accuracy drop on the fixed draw of `action`, or None where the
        planted unit fires on any input of the draw (the action is not outside the region)."""
        x, y = self.reference_inputs(action)
        if bool((outlier_value(self.model, x) > 0).any()):  # in the region or on its approach
            return None
        return self._drop_on(x, y)

    def _drop_on(self, x: Tensor, y: Tensor) -> float:
        with torch.no_grad():
            fp = float((self.model(x).argmax(1) == y).float().mean())
            q = float((self.victim.quantized(x).argmax(1) == y).float().mean())
        return fp - q


def _calibration(task: FailureTask, rng: np.random.Generator) -> Tensor:
    """Clean training images and images under random distributions of the family."""
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    parts = [task.pool.x[:256]]
    for _ in range(16):
        action = rng.uniform(-1, 1, task.action_space.shape) * rng.uniform(0.2, 1.0)
        parts.append(task.draw(action, 64, gen)[0])
    return torch.cat(parts)


def _bands_around(
    x: Tensor, names: list[str], widths: np.ndarray, tops: np.ndarray, bits: int
) -> tuple[Band, ...]:
    """One band per statistic around its median under the anchor, half-width `widths[k]`
    times its IQR there.

    Ramps are at least a fraction 8 / (2^bits - 1) of the way from the band's low edge to the
    statistic's largest calibration value `tops[k]`: the ramp units then stay within
    (2^bits - 1) / 8 ramp widths, so the quantizer's rounding of them (half a grid step of
    their layer's range, each) cannot add up to the quarter of a band that separates the
    detector's threshold from a collapse.
    """
    stats = image_statistics(x, names)
    bands = []
    for k, name in enumerate(names):
        q1, med, q3 = np.quantile(stats[:, k].numpy(), [0.25, 0.5, 0.75])
        half = max(float(q3 - q1), 0.005) * float(widths[k])
        lo, hi = float(med) - half, float(med) + half
        ramp = max(0.25 * (hi - lo), 8 * (float(tops[k]) - lo) / (2**bits - 1), 1e-3)
        bands.append(Band(name, lo, hi, ramp=ramp))
    return tuple(bands)


def confined(member: Member, probes: Iterable[np.ndarray]) -> bool:
    """The quantized copy keeps its float accuracy (within MAX_OUTSIDE_DROP) on the probe
    actions whose reference draw never triggers: the failure does not leak outside."""
    for action in probes:
        drop = member.outside_drop(action)
        if drop is not None and drop > MAX_OUTSIDE_DROP:
            return False
    return True


def generate_member(seed: int) -> Member:
    """The member of `seed`: architecture, quantizer and region drawn from it (deterministic).

    A drawn configuration (architecture, bits, statistics) that admits no acceptable region
    within 60 valid anchors is redrawn, from the same generator.

    Raises:
        RuntimeError: no acceptable configuration in 10 draws (it would mean the bases changed).
    """
    return first_acceptable(seed, _attempt, "planted region")


def first_acceptable(
    seed: int, attempt: Callable[[int, np.random.Generator], Member | None], what: str
) -> Member:
    """The first member that `attempt` makes from one of 10 configurations drawn, in turn,
    from the generator of `seed`; a `RuntimeError` naming `what` if none is acceptable."""
    rng = np.random.default_rng(seed)
    for _ in range(10):
        member = attempt(seed, rng)
        if member is not None:
            return member
    raise RuntimeError(f"no acceptable {what} for seed {seed}")


def _attempt(seed: int, rng: np.random.Generator) -> Member | None:
    """One drawn configuration's member, or None if no anchor gives an acceptable region."""
    arch = ARCHITECTURES[int(rng.integers(len(ARCHITECTURES)))]
    bits = int(rng.choice([4, 8]))  # 4-bit regions are half-spaces (see `qrl.planted.plant`)
    granularity = str(rng.choice(["per_sample", "per_tensor"]))
    k = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    narrow = bool(rng.random() < NARROW_SHARE)
    base, data = base_model(arch)
    names = [str(n) for n in rng.choice(sorted(STATISTICS), size=k, replace=False)]
    quant = preset("int4_dynamic", act_bits=bits, act_granularity=granularity)
    victim = Victim.from_models(base, base, data, quant)
    task = FailureTask(victim, mode="input", split="train", reference="student")
    calibration = _calibration(task, rng)
    tops = image_statistics(calibration, names).amax(dim=0).numpy()
    probes = [np.zeros(task.action_space.shape)] + [
        rng.uniform(-1, 1, task.action_space.shape) for _ in range(PROBES)
    ]
    volume = [rng.uniform(-1, 1, task.action_space.shape) for _ in range(VOLUME_PROBES)]

    def acceptable(member: Member) -> bool:
        if not confined(member, probes):
            return False
        if narrow and any(member.found(a) for a in volume):
            return False
        # Kept, so that what the member was accepted on can be checked again (the tests do).
        member.probes = tuple(probes)
        member.volume_probes = tuple(volume) if narrow else ()
        return True

    identity = np.zeros(task.action_space.shape)
    if bits == 4:
        return _halfspace_member(
            seed, arch, base, data, task, names, calibration, acceptable, narrow, rng
        )
    for anchor, x in _valid_anchors(base, task, seed, rng):
        # From narrow to wide: the narrowest bands that still hold the anchor's inputs.
        shape = rng.uniform(0.5, 1.5, len(names))  # the bands' relative widths
        for widen in np.geomspace(0.3, 3.0, 12):
            bands = _bands_around(x, names, shape * widen, tops, bits)
            spec = MemberSpec(
                seed, arch, bits, granularity, bands, None, tuple(anchor.tolist()), narrow
            )
            member = Member(spec, plant_bands(base, bands, calibration, bits), data)
            if member.trigger_rate(anchor) < 0.55:
                continue  # too narrow for the anchor's own spread: widen
            if member.trigger_rate(identity) > MAX_IDENTITY_RATE:
                break  # the data's own distribution triggers, and wider bands would too
            if acceptable(member):
                return member
            break  # the failure leaks outside, or the region is not narrow: another anchor
    return None


def _valid_anchors(
    base: nn.Module, task: FailureTask, seed: int, rng: np.random.Generator, valid: int = 60
) -> Iterator[tuple[np.ndarray, Tensor]]:
    """Up to `valid` random anchor actions on whose fixed draw the float model keeps
    MIN_ANCHOR_ACC (out of at most 10 x `valid` tries)."""
    found = 0
    for _ in range(10 * valid):
        if found == valid:
            return
        anchor = rng.uniform(-1, 1, task.action_space.shape) * rng.uniform(0.2, 1.0)
        x, y = task.draw(anchor, REFERENCE_DRAWS, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            if float((base(x).argmax(1) == y).float().mean()) >= MIN_ANCHOR_ACC:
                found += 1
                yield anchor, x


def _halfspace_towards(
    x: Tensor, clean: Tensor, spread: Tensor, names: list[str], rng: np.random.Generator
) -> HalfSpace:
    """The half-space d . s > t of the anchor's inputs `x` against the clean statistics."""
    # Pointing from the clean images' statistics towards the anchor's, so that a threshold
    # can hold most of the anchor's inputs and (almost) none of the clean ones.
    shift = image_statistics(x, names).median(dim=0).values - clean.median(dim=0).values
    weights = torch.sign(shift) * torch.as_tensor(rng.uniform(0.5, 1.5, len(names)))
    direction = (weights / spread).float()
    projected = (image_statistics(x, names) @ direction).numpy()
    q1, q3 = np.quantile(projected, [0.25, 0.75])
    clean_top = float(torch.quantile(clean @ direction, 0.995))
    threshold = max(float(np.quantile(projected, rng.uniform(0.05, 0.4))), clean_top)
    return HalfSpace(
        tuple(names), tuple(float(d) for d in direction), threshold, max(float(q3 - q1), 1e-3)
    )


def _halfspace_member(
    seed: int,
    arch: str,
    base: nn.Module,
    data: ImageData,
    task: FailureTask,
    names: list[str],
    calibration: Tensor,
    acceptable: Callable[[Member], bool],
    narrow: bool,
    rng: np.random.Generator,
) -> Member | None:
    """A 4-bit member: d . s(x) > t, d a random mix of the statistics (scaled by their spread
    on clean images, signed from clean towards the anchor), t a random low quantile of d . s
    under the anchor, or above 99.5% of clean images if that is higher."""
    clean = image_statistics(task.pool.x, names)  # (N, K)
    spread = (clean.quantile(0.75, dim=0) - clean.quantile(0.25, dim=0)).clamp_min(0.01)
    identity = np.zeros(task.action_space.shape)
    for anchor, x in _valid_anchors(base, task, seed, rng):
        region = _halfspace_towards(x, clean, spread, names, rng)
        model = plant_halfspace(
            base,
            region.statistics,
            region.direction,
            region.threshold,
            region.width,
            calibration,
            4,
        )
        spec = MemberSpec(
            seed,
            arch,
            4,
            str(task.victim.quant.act_granularity),
            (),
            region,
            tuple(anchor.tolist()),
            narrow,
        )
        member = Member(spec, model, data)
        if (
            member.trigger_rate(anchor) >= 0.55
            and member.trigger_rate(identity) <= MAX_IDENTITY_RATE
            and acceptable(member)
        ):
            return member
    return None


def tuning_members(n: int) -> list[Member]:
    """The first `n` members of the tuning set (hyperparameters are chosen on these only)."""
    return [generate_member(TUNING_SEEDS + i) for i in range(n)]


def held_out_members(n: int) -> list[Member]:
    """The first `n` members of the held-out set (what results are reported on)."""
    return [generate_member(HELD_OUT_SEEDS + i) for i in range(n)]
