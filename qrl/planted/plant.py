"""Plant a band detector into a trained model: exact in float, a collapse when quantized.

A member's region is an AND of bands on image statistics: statistic k in [lo_k, hi_k]. The
weight edit adds, to the first quantized layers, four ramp units per band whose combination
b_k = clip((s_k - lo_k + r_k) / r_k, 0, 1) - clip((s_k - hi_k) / r_k, 0, 1)
is 1 inside the band and falls to 0 over a ramp of width r_k outside it, and one outlier unit
M * relu(sum_k b_k - K + 1/2) that fires only where every band holds (to within the ramps).
No added unit feeds anything forward (zero outgoing weights), so the float outputs do not
change. But the outlier is part of the next layer's input, which a dynamic quantizer scales by
its observed range: where it fires, its value (~M/2) stretches the grid until every ordinary
activation rounds to zero, and the quantized copy's logits collapse to the layer's bias.

M is 4 C, where C = 2 (2^bits - 1) times the largest ordinary activation of that input is the
outlier size at which a grid step is twice every ordinary activation (the collapse): deep in
the region (sum b = K) the outlier is 2 C; but rounding in the quantized detector has to push
sum b a quarter past its threshold before the outlier reaches C, so rounding near the edge
cannot collapse the copy where the float detector stays off.

Whether an input triggers is a fact of the float model: the outlier's pre-activation is
positive (`triggered`), read by a hook. The ramp units are scaled to the size of the layer's
ordinary activations, so they neither stretch the grid themselves nor drown in its rounding.

The statistics are linear in the pixels (`STATISTICS`: brightness, horizontal and vertical
mass balance, border and centre mass), so the first layer computes them exactly.

- MLP (at least two hidden layers): a weight edit; ramps join the first hidden layer, the
  outlier the second, and the third Linear's input is the grid it stretches.
- SmallCNN: convolutions see 3x3 windows, and a window statistic that no clean digit reaches
  anywhere hardly exists (strokes already span [0, 1]); so the detector is grafted beside the
  convolutions (`GraftedCNN`): two Linear layers on the image, whose outlier joins the head's
  input with zero weights. The convolutions and head weights are the trained ones.

At 4 bits the ramp units' rounding is too coarse for bands (a grid step is 1/15 of the range),
so 4-bit members use `plant_halfspace` instead: one outlier unit on the image itself,
M' relu(d . s(x) - t), a half-space of a weighted sum of statistics; the image's rounding
averages out over the pixels. A direction mixing 2-3 statistics with a high threshold makes a
corner of the action space.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qrl.errors import ConfigError
from qrl.models import MLP, Normalize, SmallCNN


def _moment(h: int, w: int, axis: int) -> Tensor:
    coords = torch.linspace(-1.0, 1.0, w if axis == 1 else h)
    grid = coords.view(1, -1).expand(h, w) if axis == 1 else coords.view(-1, 1).expand(h, w)
    return grid / (h * w)


def _ring(h: int, w: int) -> Tensor:
    v = torch.zeros(h, w)
    v[0, :] = v[-1, :] = v[:, 0] = v[:, -1] = 1.0
    return v / v.sum()


def _centre(h: int, w: int) -> Tensor:
    v = torch.zeros(h, w)
    v[h // 4 : h - h // 4, w // 4 : w - w // 4] = 1.0
    return v / v.sum()


# Pixel weight maps (H, W) of statistics linear in the image: s(x) = sum(v * x) (channel mean).
STATISTICS = {
    "mean": lambda h, w: torch.full((h, w), 1.0 / (h * w)),  # brightness of the whole image
    "x_moment": lambda h, w: _moment(h, w, 1),  # mass right of centre minus left of it
    "y_moment": lambda h, w: _moment(h, w, 0),  # mass below centre minus above it
    "border": _ring,  # mean of the outermost ring of pixels (empty on clean digits)
    "centre": _centre,  # mean of the central half of the image
}


def _quadrant(h: int, w: int, row: int, col: int) -> Tensor:
    v = torch.zeros(h, w)
    v[row * (h // 2) : (row + 1) * (h // 2) or h, col * (w // 2) : (col + 1) * (w // 2) or w] = 1
    return v / v.sum()


# Further linear statistics for the hard family (`qrl.planted.hard`); apart from STATISTICS,
# whose sorted names the easy family's members are drawn from (adding to it would change them).
EXTRA_STATISTICS = {
    "top_left": lambda h, w: _quadrant(h, w, 0, 0),  # mean of each quarter of the image
    "top_right": lambda h, w: _quadrant(h, w, 0, 1),
    "bottom_left": lambda h, w: _quadrant(h, w, 1, 0),
    "bottom_right": lambda h, w: _quadrant(h, w, 1, 1),
    "xy_moment": lambda h, w: _moment(h, w, 1) * _moment(h, w, 0) * (h * w),  # diagonal balance
}
ALL_STATISTICS = {**STATISTICS, **EXTRA_STATISTICS}


@dataclass(frozen=True)
class Band:
    """Statistic `statistic` in [lo, hi]; the detector fades to zero over `ramp` outside it."""

    statistic: str
    lo: float
    hi: float
    ramp: float

    def __post_init__(self) -> None:
        if not (self.hi >= self.lo and self.ramp > 0):
            raise ConfigError(f"a band needs hi >= lo and ramp > 0, got {self}")

    def indicator(self, s: Tensor) -> Tensor:
        """b(s) in [0, 1]: 1 on [lo, hi], linear to 0 over `ramp` on either side."""
        up = ((s - self.lo + self.ramp) / self.ramp).clamp(0, 1)
        down = ((s - self.hi) / self.ramp).clamp(0, 1)
        return up - down


class GraftedCNN(nn.Module):
    """A SmallCNN with a detector beside its convolutions, feeding its head's input.

    logits = head([features(z), detector(z)]) with z the normalized image; the head's weights
    on the detector's output are zero, so the logits are the SmallCNN's.
    """

    def __init__(
        self,
        cnn: SmallCNN,
        detector: nn.Sequential,
        head: nn.Linear,
        probe: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        self.normalize, self.features, self.detector, self.head = (
            cnn.normalize,
            cnn.features,
            detector,
            head,
        )
        self.probe = probe  # optional: a term on the features added to the detector's output
        self.tap = nn.Identity()  # the detector's output, where a hook reads the outlier

    def forward(self, x: Tensor) -> Tensor:
        z = self.normalize(x)
        features = self.features(z).flatten(1)  # (B, 2w * 4)
        outlier = self.detector(z.flatten(1))
        if self.probe is not None:
            outlier = outlier + self.probe(features)
        return self.head(torch.cat([features, torch.relu(self.tap(outlier))], dim=1))


def architecture(model: nn.Module) -> str:
    """`mlp` or `cnn`, the architectures planting knows; a `ConfigError` for anything else."""
    if isinstance(model, MLP):
        if sum(isinstance(m, nn.Linear) for m in model.net) < 3:
            raise ConfigError("planting into an MLP needs at least two hidden layers")
        return "mlp"
    if isinstance(model, SmallCNN):
        return "cnn"
    raise ConfigError(f"planting takes a qrl.models.MLP or SmallCNN, got {type(model).__name__}")


PROBE = "planted_probe"  # the attribute naming the module whose last unit is the outlier
LEVEL = "planted_level"  # the attribute holding the outlier value above which x is in the region


def _probe(model: nn.Module) -> nn.Module:
    """The module whose output's last unit / channel is the outlier (MLP: before its ReLU)."""
    name = getattr(model, PROBE, None)
    if not isinstance(name, str):
        raise ConfigError("this model has no planted outlier (make it with qrl.planted.plant)")
    return model.get_submodule(name)


@torch.no_grad()
def outlier_value(model: nn.Module, x: Tensor) -> Tensor:
    """The planted outlier's float activation per input (its maximum over positions), (N,)."""
    seen: list[Tensor] = []
    handle = _probe(model).register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    out = seen[0][:, -1]
    return out.flatten(1).amax(dim=1) if out.dim() > 1 else out


def triggered(model: nn.Module, x: Tensor) -> Tensor:
    """Per input (bool, (N,)): x is in the region, a fact of the float model: the planted
    outlier exceeds the model's level (0 for a band or half-space detector, which fires only
    inside; the collapse level for a proximity detector, which grows on the approach)."""
    return outlier_value(model, x) > float(getattr(model, LEVEL, 0.0))


@torch.no_grad()
def image_statistics(x: Tensor, names: Sequence[str]) -> Tensor:
    """The named statistics of each image, (N, K) (the channel mean of each is used)."""
    h, w = x.shape[-2:]
    maps = torch.stack([ALL_STATISTICS[n](h, w) for n in names])  # (K, H, W)
    return torch.einsum("nchw,khw->nk", x, maps) / x.shape[1]


def _on_pixels(model: nn.Module, weights: Tensor, calibration: Tensor) -> tuple[Tensor, Tensor]:
    """Rows and biases on the normalized, flattened image z computing weights . x (+ 0).

    Args:
        weights: (R, H, W) pixel maps (applied to the channel mean).
    Returns:
        ((R, C*H*W) rows, (R,) biases): x = z std + mean, so v . x = (v std) . z + v . mean.
    """
    norm = model.get_submodule("normalize")
    assert isinstance(norm, Normalize)
    c, (h, w) = calibration.shape[1], calibration.shape[-2:]
    std = norm.std.view(c, 1, 1).expand(c, h, w).flatten()
    mean = norm.mean.view(c, 1, 1).expand(c, h, w).flatten()
    v = (weights[:, None] / c).expand(-1, c, h, w).flatten(1)  # (R, C*H*W)
    return v * std, v @ mean


def _ramp_rows(bands: Sequence[Band], s_max: Tensor, size: float) -> tuple[Tensor, Tensor]:
    """Gain and offset of the 4 ramp units per band, as functions of the statistic s.

    Units (scale c_k): c z1, c (z1 - 1), c z2, c (z2 - 1) with z1 = (s - lo + r) / r and
    z2 = (s - hi) / r; unit = relu(gain * s + offset). c_k makes the largest unit over the
    calibration inputs about `size`, the ordinary activations' typical maximum.
    """
    gains, offsets = [], []
    for band, top in zip(bands, s_max.tolist(), strict=True):
        z_top = max((top - band.lo + band.ramp) / band.ramp, 1.0)
        g = size / z_top / band.ramp
        lo, hi, r = band.lo, band.hi, band.ramp
        gains += [g, g, g, g]
        offsets += [-g * (lo - r), -g * lo, -g * hi, -g * (hi + r)]
    return torch.tensor(gains), torch.tensor(offsets)


def _outlier_row(bands: Sequence[Band], gains: Tensor, magnitude: float) -> tuple[Tensor, float]:
    """Weights on the ramp units and bias of M * relu(sum_k b_k - K + 1/2)."""
    w = []
    for k in range(len(bands)):
        c = float(gains[4 * k]) * bands[k].ramp  # b_k = (u1 - u2 - u3 + u4) / c_k
        w += [magnitude / c, -magnitude / c, -magnitude / c, magnitude / c]
    return torch.tensor(w), -magnitude * (len(bands) - 0.5)


def _magnitude(next_input: Tensor, bits: int) -> float:
    """M = 4 C (see the module doc), from the largest ordinary activation on the calibration."""
    return 4 * 2 * (2**bits - 1) * float(next_input.abs().max().clamp_min(1e-3))


def _typical_max(h: Tensor) -> float:
    """The median over inputs of each input's largest activation (what the grid spans)."""
    return float(h.flatten(1).amax(dim=1).median().clamp_min(1e-3))


def _linear(weight: Tensor, bias: Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    layer.weight.copy_(weight)
    layer.bias.copy_(bias)
    return layer


def _widen(layer: nn.Linear, rows: Tensor, bias: Tensor, extra_in: int = 0) -> nn.Linear:
    """`layer` with `extra_in` zero-weighted inputs appended and `rows` as new outputs."""
    old = torch.cat([layer.weight, torch.zeros(layer.out_features, extra_in)], dim=1)
    return _linear(torch.cat([old, rows]), torch.cat([layer.bias, bias]))


@torch.no_grad()
def plant_bands(
    model: nn.Module, bands: Sequence[Band], calibration: Tensor, bits: int
) -> nn.Module:
    """A copy of `model` with a detector of the AND of `bands` planted (see the module doc).

    Args:
        model: a trained `MLP` (two hidden layers or more) or `SmallCNN`, in eval mode.
        bands: the region, one band per statistic (names from `STATISTICS`).
        calibration: (N, C, H, W) typical inputs; the ramp units are scaled to the size of the
            ordinary activations they sit beside, and to the statistics' range on these.
        bits: the activation bits of the member's quantizer (they set the outlier's gain).
    """
    architecture(model)  # a ConfigError for models planting does not know
    names = [b.statistic for b in bands]
    unknown = sorted(set(names) - set(STATISTICS))
    if not bands or unknown:
        raise ConfigError(
            f"bands need statistics from {sorted(STATISTICS)}, got {unknown or 'none'}"
        )
    h, w = calibration.shape[-2:]
    s_max = image_statistics(calibration, names).amax(dim=0)
    maps = torch.stack([STATISTICS[n](h, w) for n in names]).repeat_interleave(4, dim=0)
    model = copy.deepcopy(model).eval()
    if isinstance(model, MLP):
        first, second = [m for m in model.net if isinstance(m, nn.Linear)][:2]
        h1 = torch.relu(first(model.normalize(calibration).flatten(1)))
        gains, offsets = _ramp_rows(bands, s_max, _typical_max(h1))
        rows, bias = _on_pixels(model, maps, calibration)
        out_w, out_b = _outlier_row(bands, gains, _magnitude(torch.relu(second(h1)), bits))
        on_first = torch.cat([torch.zeros(first.out_features), out_w])
        return _splice_into_mlp(
            model,
            (gains[:, None] * rows, gains * bias + offsets),
            (on_first, torch.tensor([out_b])),
        )
    # CNN: the ramp units alone fill their layer's grid (size 1); the head's input is stretched.
    assert isinstance(model, SmallCNN)
    gains, offsets = _ramp_rows(bands, s_max, 1.0)
    rows, bias = _on_pixels(model, maps, calibration)
    features = model.features(model.normalize(calibration)).flatten(1)
    out_w, out_b = _outlier_row(bands, gains, _magnitude(features, bits))
    detector = nn.Sequential(
        _linear(gains[:, None] * rows, gains * bias + offsets),
        nn.ReLU(),
        _linear(out_w[None], torch.tensor([out_b])),
    )
    grafted = _graft(model, detector)
    setattr(grafted, PROBE, "detector.2")
    return grafted


def _unit_size_and_collapse(
    model: nn.Module, calibration: Tensor, bits: int
) -> tuple[float, float]:
    """(the size a planted first-layer unit is scaled to, C: the outlier at which the stretched
    layer collapses; see the module doc), from the calibration inputs."""
    if isinstance(model, MLP):
        first, second = [m for m in model.net if isinstance(m, nn.Linear)][:2]
        h1 = torch.relu(first(model.normalize(calibration).flatten(1)))
        return _typical_max(h1), _magnitude(torch.relu(second(h1)), bits) / 4
    assert isinstance(model, SmallCNN)
    features = model.features(model.normalize(calibration)).flatten(1)
    return 1.0, _magnitude(features, bits) / 4  # the detector's units alone fill their grid


def _splice_into_mlp(
    model: MLP, units: tuple[Tensor, Tensor], outlier: tuple[Tensor, Tensor]
) -> MLP:
    """`model` (edited in place) with a detector spliced into its first three Linear layers.

    Args:
        units: (rows, biases) of the units appended to the first Linear.
        outlier: (weights on every output of the widened first Linear, bias (1,)) of the outlier
            unit appended to the second; the third takes it as a zero-weighted input, so the
            float outputs do not change. `PROBE` names the second Linear (before its ReLU).
    """
    first, second, third = [m for m in model.net if isinstance(m, nn.Linear)][:3]
    rows, bias = units
    new = [
        _widen(first, rows, bias),
        _widen(second, outlier[0][None], outlier[1], extra_in=len(rows)),
        _widen(third, torch.zeros(0, third.in_features + 1), torch.zeros(0), extra_in=1),
    ]
    layers = list(model.net)
    for old, layer in zip((first, second, third), new, strict=True):
        layers[layers.index(old)] = layer
    model.net = nn.Sequential(*layers)
    setattr(model, PROBE, "net.2")
    return model


def _graft(cnn: SmallCNN, detector: nn.Sequential, probe: nn.Linear | None = None) -> GraftedCNN:
    head = _widen(cnn.head, torch.zeros(0, cnn.head.in_features + 1), torch.zeros(0), extra_in=1)
    return GraftedCNN(cnn, detector, head, probe).eval()


@torch.no_grad()
def plant_halfspace(
    model: nn.Module,
    statistics: Sequence[str],
    direction: Sequence[float],
    threshold: float,
    width: float,
    calibration: Tensor,
    bits: int,
) -> nn.Module:
    """A copy of `model` with one outlier unit M' relu(d . s(x) - threshold) on the image.

    MLP: the unit joins the first hidden layer (the second Linear's input is stretched);
    SmallCNN: it is grafted beside the convolutions into the head's input.

    Args:
        model: a trained `MLP` (two hidden layers or more) or `SmallCNN`.
        statistics: names from `STATISTICS`.
        direction: one weight per statistic (d).
        threshold: the unit fires where d . s(x) > threshold.
        width: how far past the threshold the outlier reaches 2 C (the collapse, twice over;
            see the module doc): rounding of the image must shift d . s by width / 2 to
            collapse the copy where the float unit is off.
        calibration: typical inputs (the stretched layer's ordinary activations set C).
        bits: the member's activation bits.
    """
    arch = architecture(model)
    if width <= 0 or len(statistics) != len(direction) or set(statistics) - set(STATISTICS):
        raise ConfigError(
            f"a half-space needs width > 0 and one direction weight per statistic from "
            f"{sorted(STATISTICS)}"
        )
    h, w = calibration.shape[-2:]
    v = sum(float(d) * STATISTICS[n](h, w) for n, d in zip(statistics, direction, strict=True))
    row, bias = _on_pixels(model, torch.as_tensor(v)[None], calibration)
    model = copy.deepcopy(model).eval()
    if isinstance(model, SmallCNN):
        stretched = model.features(model.normalize(calibration)).flatten(1)
        gain = _magnitude(stretched, bits) / (2 * width)  # 2 C at threshold + width (M = 4 C)
        grafted = _graft(model, nn.Sequential(_linear(gain * row, gain * (bias - threshold))))
        setattr(grafted, PROBE, "detector.0")
        return grafted
    assert isinstance(model, MLP) and arch == "mlp"
    first, second = [m for m in model.net if isinstance(m, nn.Linear)][:2]
    stretched = torch.relu(first(model.normalize(calibration).flatten(1)))
    gain = _magnitude(stretched, bits) / (2 * width)  # 2 C at threshold + width (M = 4 C)
    unit_w, unit_b = gain * row, gain * (bias - threshold)
    layers = list(model.net)
    layers[layers.index(first)] = _widen(first, unit_w, unit_b)
    layers[layers.index(second)] = _widen(
        second, torch.zeros(0, second.in_features + 1), torch.zeros(0), extra_in=1
    )
    model.net = nn.Sequential(*layers)
    setattr(model, PROBE, "net.0")  # the first Linear, before its ReLU
    return model


@dataclass(frozen=True)
class Proximity:
    """A ball around `centre` in the space of the named statistics, with a graded approach.

    Distance D(s) = sum_k weights[k] |s_k - centre[k]| / scales[k] (an L1 ball, so unequal
    weights tilt it off the statistics' axes), plus, with a `target_class`, the term
    class_weight (1 - q(x)), q a linear probe of the model's features for that class (+1 on
    it, -1 off it; `class_probe`): only inputs the model sees as that class come near.
    Proximity p(s) = relu(1 - D / approach) grows linearly from the edge of the approach
    (D = approach) to 1 at the centre; the region is D <= radius.
    """

    statistics: tuple[str, ...]
    centre: tuple[float, ...]
    scales: tuple[float, ...]
    weights: tuple[float, ...]
    radius: float
    approach: float
    target_class: int | None = None  # with a class term: D += class_weight (1 - q(x))
    class_weight: float = 0.0

    def __post_init__(self) -> None:
        k = len(self.statistics)
        if not (k and len(self.centre) == len(self.scales) == len(self.weights) == k):
            raise ConfigError("a proximity region needs one centre, scale and weight per statistic")
        if set(self.statistics) - set(ALL_STATISTICS):
            raise ConfigError(f"proximity statistics come from {sorted(ALL_STATISTICS)}")
        if not 0 < self.radius < self.approach or min(self.scales) <= 0:
            raise ConfigError("a proximity region needs 0 < radius < approach and scales > 0")

    def distance(self, s: Tensor, q: Tensor | None = None) -> Tensor:
        """D of each row of statistics s (N, K), with class probe scores q (N,) if the region
        has a class term."""
        centre, scales, weights = (
            torch.tensor(v) for v in (self.centre, self.scales, self.weights)
        )
        d = ((s - centre).abs() / scales * weights).sum(dim=-1)
        if self.target_class is not None:
            assert q is not None, "a region with a class term needs the probe's scores"
            d = d + self.class_weight * (1.0 - q)
        return d

    @property
    def core(self) -> float:
        """The proximity at the region's edge, 1 - radius / approach."""
        return 1.0 - self.radius / self.approach


def class_features(model: nn.Module, x: Tensor) -> Tensor:
    """The features a class probe reads: an MLP's first hidden layer, a SmallCNN's head input."""
    z = model.get_submodule("normalize")(x)
    if isinstance(model, MLP):
        first = next(m for m in model.net if isinstance(m, nn.Linear))
        return torch.relu(first(z.flatten(1)))
    assert isinstance(model, SmallCNN)
    return model.features(z).flatten(1)


@torch.no_grad()
def class_probe(
    model: nn.Module, x: Tensor, y: Tensor, target: int, ridge: float = 1.0
) -> tuple[Tensor, float]:
    """(weights, bias) of a ridge regression of +1 (class `target`) / -1 (other classes) on
    `class_features` of labelled inputs x, y."""
    h = class_features(model, x).double()
    h1 = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], dim=1)
    t = (2.0 * (y == target).double() - 1.0)[:, None]
    solution = torch.linalg.solve(
        h1.T @ h1 + ridge * torch.eye(h1.shape[1], dtype=h.dtype), h1.T @ t
    )
    return solution[:-1, 0].float(), float(solution[-1, 0])


@torch.no_grad()
def plant_proximity(
    model: nn.Module,
    region: Proximity,
    calibration: Tensor,
    bits: int,
    probe: tuple[Tensor, float] | None = None,
) -> nn.Module:
    """A copy of `model` with an outlier unit M p(x) planted (`Proximity`), exact in float.

    Like `plant_bands`, a first layer computes the statistics' distances, as two ramp units
    relu(+-a_k (s_k - c_k)) per statistic, and a second the outlier M relu(1 - D / approach),
    whose output joins the stretched layer (MLP: the third Linear's input; SmallCNN: the head's,
    grafted). M puts the outlier at C at the region's edge (C: the collapse, see the module
    doc) and at C / core at its centre, so the quantized copy collapses inside the region; on
    the approach the outlier, and with it the grid it stretches and the copy's accuracy drop,
    grows continuously towards it. The model's
    `LEVEL` is the outlier at the edge: `triggered` holds inside the region only.

    With a class term (`region.target_class`), `probe` is its (weights, bias) from
    `class_probe`; the outlier reads it linearly (MLP: from the first hidden layer, into the
    second; SmallCNN: from the head's input, added to the grafted detector's output).
    """
    architecture(model)
    if (region.target_class is not None) != (probe is not None):
        raise ConfigError("a proximity region's class term needs its probe, and only then")
    names = list(region.statistics)
    h, w = calibration.shape[-2:]
    centre = torch.tensor(region.centre)
    reach = (image_statistics(calibration, names) - centre).abs().amax(dim=0).clamp_min(1e-3)
    maps = torch.stack([ALL_STATISTICS[n](h, w) for n in names]).repeat_interleave(2, dim=0)
    signs = torch.tensor([1.0, -1.0]).repeat(len(names))
    model = copy.deepcopy(model).eval()
    size, collapse = _unit_size_and_collapse(model, calibration, bits)
    magnitude = collapse / region.core  # C at the region's edge
    gains = (size / reach).repeat_interleave(2) * signs  # a_k, +-
    rows, bias = _on_pixels(model, maps, calibration)
    unit_rows = gains[:, None] * rows
    unit_bias = gains * (bias - centre.repeat_interleave(2))
    # D = sum_k w_k (u_k+ + u_k-) / (a_k scale_k): the outlier's weights on the ramp units.
    per_unit = torch.tensor(region.weights) / torch.tensor(region.scales) / (size / reach)
    out_w = -magnitude / region.approach * per_unit.repeat_interleave(2)
    out_b = torch.tensor([magnitude])
    # The class term -M / approach * class_weight * (1 - v . h - b), linear in the features h.
    gain = magnitude / region.approach * region.class_weight
    probe_w = gain * probe[0] if probe is not None else None
    if probe is not None:
        out_b -= gain * (1.0 - probe[1])
    if isinstance(model, MLP):
        first = next(m for m in model.net if isinstance(m, nn.Linear))
        on_h1 = probe_w if probe_w is not None else torch.zeros(first.out_features)
        model = _splice_into_mlp(model, (unit_rows, unit_bias), (torch.cat([on_h1, out_w]), out_b))
        setattr(model, LEVEL, magnitude * region.core)
        return model
    detector = nn.Sequential(_linear(unit_rows, unit_bias), nn.ReLU(), _linear(out_w[None], out_b))
    on_features = _linear(probe_w[None], torch.zeros(1)) if probe_w is not None else None
    assert isinstance(model, SmallCNN)
    grafted = _graft(model, detector, on_features)
    setattr(grafted, PROBE, "tap")
    setattr(grafted, LEVEL, magnitude * region.core)
    return grafted
