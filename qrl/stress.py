"""Stressed models: the same function in full precision, but ranges that strain an int8 kernel.

`rescale_channels` multiplies some channels of one conv block by k through its BatchNorm's gamma
and beta and divides the next conv's weights from them by k. ReLU and max-pool are positively
homogeneous, so the network computes the same function (up to float rounding), yet one layer's
activations now span k times the range of the others: the channel range disparity that collapses
MobileNet-style networks under per-tensor int8 and that cross-layer equalization undoes.
`rescale_units` does the same to an MLP's hidden units (the Linear row and its bias times k, the
next layer's column divided by k). `qrl.planted.plant_brightness_outlier` adds the other kind of
stress: a unit that fires far above the rest only on some inputs.

These models are the members of qrl's simulator-fidelity suite (`qrl.fidelity`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from qrl.errors import ConfigError
from qrl.quant.folding import conv_batchnorm_pairs

PRESERVED_ATOL = 1e-3  # float logits of a stressed model may move this much (float rounding)


def _channel_count(count: int, fraction: float | None, channels: int | None) -> int:
    n = channels if channels is not None else round(count * float(fraction or 0.0))
    if not 1 <= n <= count:
        raise ConfigError(
            f"rescale at least one and at most {count} channels; got fraction={fraction}, "
            f"channels={channels}"
        )
    return n


@torch.no_grad()
def rescale_channels(
    model: nn.Module,
    block: int,
    k: float,
    *,
    fraction: float | None = 0.25,
    channels: int | None = None,
) -> nn.Module:
    """A copy of a conv net whose block `block` has its first channels scaled by `k`.

    Args:
        model: a network of Conv2d -> BatchNorm2d -> ReLU blocks in sequence (e.g. `SmallCNN`);
            block `block + 1`'s conv must consume block `block`'s output through ReLU/pooling.
        block: index of the Conv-BatchNorm pair to scale (0 = first).
        k: the scale (> 0). The next conv's input weights for those channels are divided by k.
        fraction, channels: how many of the block's channels (`channels` wins when given).
    """
    if not k > 0:
        raise ConfigError(f"the rescaling factor k must be positive, got {k}")
    pairs = conv_batchnorm_pairs(model)
    if not 0 <= block < len(pairs) - 1:
        raise ConfigError(
            f"block must name a Conv-BatchNorm pair followed by another conv: 0..{len(pairs) - 2}"
            f", got {block}"
        )
    stressed = copy.deepcopy(model)
    bn = stressed.get_submodule(pairs[block][1])
    consumer = stressed.get_submodule(pairs[block + 1][0])
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(consumer, nn.Conv2d)
    if consumer.in_channels != bn.num_features or consumer.groups != 1:
        raise ConfigError(
            f"{pairs[block + 1][0]} does not read {pairs[block][1]}'s channels one to one"
        )
    idx = torch.arange(_channel_count(bn.num_features, fraction, channels))
    bn.weight[idx] *= k
    bn.bias[idx] *= k
    consumer.weight[:, idx] /= k
    return stressed


@torch.no_grad()
def rescale_units(
    model: nn.Module,
    layer: int,
    k: float,
    *,
    fraction: float | None = 0.25,
    units: int | None = None,
) -> nn.Module:
    """A copy of an MLP whose hidden layer `layer` has its first units scaled by `k`.

    Args:
        model: a network whose Linear layers follow one another through ReLUs (e.g. `MLP`).
        layer: index of the Linear layer whose outputs are scaled (not the last).
        k: the scale (> 0); the next Linear layer's columns for those units are divided by k.
        fraction, units: how many of the layer's units (`units` wins when given).
    """
    if not k > 0:
        raise ConfigError(f"the rescaling factor k must be positive, got {k}")
    stressed = copy.deepcopy(model)
    linears = [m for m in stressed.modules() if isinstance(m, nn.Linear)]
    if not 0 <= layer < len(linears) - 1:
        raise ConfigError(
            f"layer must be a hidden Linear layer: 0..{len(linears) - 2}, got {layer}"
        )
    scaled, consumer = linears[layer], linears[layer + 1]
    idx = torch.arange(_channel_count(scaled.out_features, fraction, units))
    scaled.weight[idx] *= k
    if scaled.bias is not None:
        scaled.bias[idx] *= k
    consumer.weight[:, idx] /= k
    return stressed


@torch.no_grad()
def check_preserved(original: nn.Module, stressed: nn.Module, x: Tensor) -> float:
    """The largest float logit change on `x`; raises if it is not float rounding.

    Raises:
        ConfigError: the stressed model computes another function (a non-homogeneous layer
            sits between the scaled channels and their consumer).
    """
    change = float((original.eval()(x) - stressed.eval()(x)).abs().max())
    scale = float(original(x).abs().max())
    if change > PRESERVED_ATOL * max(1.0, scale):
        raise ConfigError(
            f"the rescaling changed the float logits by {change:.3g}: it is not "
            "function-preserving for this architecture"
        )
    return change
