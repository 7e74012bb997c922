"""A planted vulnerability: a model that is exact in float but whose dynamic-quantized copy
collapses in one known region of input space. It calibrates searches: a search that cannot
find a planted failure will not find a subtle one.

`plant_brightness_outlier` adds one hidden unit to an MLP's first layer that computes
magnitude * relu(mean pixel - threshold) and feeds nothing forward (zero outgoing weights). In
float the outputs are unchanged, exactly. But the unit is part of the next layer's input, which
the quantizer scales by its range: once an input is bright enough for the unit to fire, its
huge value stretches the quantization grid until every ordinary activation rounds to zero.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qrl.data import ImageData, load_data
from qrl.errors import ConfigError
from qrl.models import MLP
from qrl.training import TrainSettings, fit


@torch.no_grad()
def plant_brightness_outlier(model: MLP, threshold: float, magnitude: float = 1000.0) -> MLP:
    """A copy of `model` with an outlier unit that fires when the mean pixel exceeds `threshold`.

    Args:
        model: an `MLP` (its first two Linear layers are widened by one unit).
        threshold: mean pixel intensity (in [0, 1]) above which the unit fires.
        magnitude: the unit's gain; its activation is magnitude * (mean pixel - threshold).
    """
    if not isinstance(model, MLP):
        raise ConfigError("plant_brightness_outlier takes a qrl.models.MLP")
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ConfigError("the MLP needs at least one hidden layer to carry the outlier unit")
    planted = copy.deepcopy(model)
    first, second = [m for m in planted.net if isinstance(m, nn.Linear)][:2]
    d_in = first.in_features
    # The model sees z = (x - mean) / std per channel: mean pixel = mean_i (z_i std_i + mean_i).
    std = planted.normalize.std.flatten().repeat_interleave(d_in // planted.normalize.std.numel())
    mean = planted.normalize.mean.flatten().repeat_interleave(
        d_in // planted.normalize.mean.numel()
    )
    row = magnitude * std / d_in
    bias = magnitude * (float(mean.mean()) - threshold)
    new_first = nn.Linear(d_in, first.out_features + 1)
    new_first.weight.copy_(torch.cat([first.weight, row[None]]))
    new_first.bias.copy_(torch.cat([first.bias, torch.tensor([bias])]))
    new_second = nn.Linear(second.in_features + 1, second.out_features)
    new_second.weight.copy_(torch.cat([second.weight, torch.zeros(second.out_features, 1)], dim=1))
    new_second.bias.copy_(second.bias)
    layers = list(planted.net)
    layers[layers.index(first)] = new_first
    layers[layers.index(second)] = new_second
    planted.net = nn.Sequential(*layers)
    return planted


def planted_digits_mlp(
    seed: int = 0, threshold: float = 0.55, magnitude: float = 1000.0, epochs: int = 30
) -> tuple[MLP, ImageData]:
    """An MLP trained on digits (robust to brightness shifts), with the outlier unit planted.

    Training adds a random brightness shift in [0, 0.5] to half the examples, so the float model
    stays accurate on bright images: the only thing that breaks there is its quantized copy.

    Returns:
        (planted model in eval mode, the digits data it was trained on).
    """
    data = load_data("digits", seed=seed)
    torch.manual_seed(seed)
    base = MLP(1, 10, data.image_size, hidden=(128, 64), mean=data.mean, std=data.std)

    def loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        shift = torch.rand(len(x), 1, 1, 1) * 0.5 * (torch.rand(len(x), 1, 1, 1) < 0.5)
        return F.cross_entropy(m((x + shift).clamp(0, 1)), y)

    fit(base, data.train, loss, TrainSettings(epochs=epochs, lr=3e-3), seed=seed, progress=False)
    return plant_brightness_outlier(base, threshold, magnitude).eval(), data
