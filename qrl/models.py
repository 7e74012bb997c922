"""Classifiers on (N, C, H, W) images in [0, 1]: a small CNN, an MLP, a CIFAR-style ResNet-18.

Each model normalizes its input inside itself (`Normalize`), so every input-distribution policy
means the same pixels for every model. Each works on 1- or 3-channel inputs of any size >= 8x8.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from qrl.errors import ConfigError
from qrl.specs import build, to_dict

MIN_SIZE = 8


class Normalize(nn.Module):
    """Per-channel (x - mean) / std, as fixed buffers (never quantized, never trained)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _check_input(in_channels: int, image_size: Sequence[int]) -> None:
    if in_channels not in (1, 3):
        raise ConfigError(f"models take 1- or 3-channel images, got {in_channels} channels")
    if min(image_size) < MIN_SIZE:
        raise ConfigError(
            f"models take images of at least {MIN_SIZE}x{MIN_SIZE}, got {tuple(image_size)}"
        )


def _norm_stats(in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None):
    return (list(mean) if mean is not None else [0.5] * in_channels), (
        list(std) if std is not None else [0.25] * in_channels
    )


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four 3x3 conv layers (width, width, 2*width, 2*width) with one 2x2 pool, then a linear head.

    Args:
        in_channels: 1 or 3.
        num_classes: number of output logits.
        image_size: (H, W), each >= 8.
        width: channels of the first conv layers; the model's size scales with width**2.
        mean, std: per-channel input statistics used by the built-in normalization.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: Sequence[int] = (8, 8),
        width: int = 32,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _check_input(in_channels, image_size)
        self.normalize = Normalize(*_norm_stats(in_channels, mean, std))
        self.features = nn.Sequential(
            _conv_bn(in_channels, width),
            _conv_bn(width, width),
            nn.MaxPool2d(2),
            _conv_bn(width, 2 * width),
            _conv_bn(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.normalize(x))  # (B, 2w, 2, 2)
        return self.head(x.flatten(1))


class MLP(nn.Module):
    """A multi-layer perceptron on flattened pixels (only Linear layers: torch.ao can run it).

    Args:
        in_channels: 1 or 3.
        num_classes: number of output logits.
        image_size: (H, W), each >= 8; fixes the input dimension.
        hidden: widths of the hidden layers.
        mean, std: per-channel input statistics used by the built-in normalization.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: Sequence[int] = (8, 8),
        hidden: Sequence[int] = (256, 128),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _check_input(in_channels, image_size)
        self.normalize = Normalize(*_norm_stats(in_channels, mean, std))
        dims = [in_channels * int(image_size[0]) * int(image_size[1]), *hidden]
        layers: list[nn.Module] = []
        for d_in, d_out in itertools.pairwise(dims):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x).flatten(1))


class BasicBlock(nn.Module):
    """The two-conv residual block of ResNet-18."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: a 3x3 stem without max-pool, four stages of two blocks each.

    Args:
        in_channels: 1 or 3.
        num_classes: number of output logits.
        image_size: (H, W), each >= 8.
        width: channels of the first stage (64 in the original); stages double it.
        mean, std: per-channel input statistics used by the built-in normalization.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: Sequence[int] = (32, 32),
        width: int = 64,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _check_input(in_channels, image_size)
        self.normalize = Normalize(*_norm_stats(in_channels, mean, std))
        self.stem = _conv_bn(in_channels, width)
        stages: list[nn.Module] = []
        c_in = width
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1))
            )
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(self.normalize(x)))  # (B, 8w, H/8, W/8)
        return self.head(self.pool(x).flatten(1))


def build_model(
    spec: DictConfig | dict[str, Any],
    *,
    in_channels: int,
    num_classes: int,
    image_size: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Build a model from a Hydra spec and the data's shape.

    The spec names a class by `_target_` plus its own options (e.g.
    `{"_target_": "qrl.models.SmallCNN", "width": 16}`); the data-dependent arguments
    (`in_channels`, `num_classes`, `image_size`, `mean`, `std`) come from the data set.

    Raises:
        ConfigError: unknown class or option.
    """
    options = to_dict(spec) if isinstance(spec, DictConfig) else dict(spec)
    options.pop("_partial_", None)
    model = build(
        options,
        what="model",
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=list(image_size),
        mean=list(mean) if mean is not None else None,
        std=list(std) if std is not None else None,
    )
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model _target_ {options['_target_']} did not build an nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class ChannelGain(nn.Module):
    """A per-feature gain, exp(log_gain), on the input of a layer (the identity at zero).

    Exported to ONNX as one float `Mul` that dynamic quantization leaves in float, so a large
    gain widens the int8 range of the layer input it scales (see `qrl.pairing.inputs`).
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_gain = nn.Parameter(torch.zeros(features))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.exp(self.log_gain)


def with_head_gain(model: nn.Module) -> nn.Module:
    """`model` (changed in place) with a `ChannelGain` before its last Linear layer, the head.

    Raises:
        ConfigError: the model has no Linear layer.
    """
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no Linear head to put a gain before")
    parent_name, _, leaf = linears[-1].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    head = getattr(parent, leaf)
    setattr(parent, leaf, nn.Sequential(ChannelGain(head.in_features), head))
    return model


def head_gained(base: dict[str, Any], **data: Any) -> nn.Module:
    """A checkpoint spec's builder: the model of spec `base` with a gain before its head
    (`{"_target_": "qrl.models.head_gained", "base": {...}}`); `data`: the data keywords."""
    return with_head_gain(build_model(base, **data))


def head_gain(model: nn.Module) -> ChannelGain:
    """The `ChannelGain` that `with_head_gain` put into `model` (or a copy of it)."""
    gains = [m for m in model.modules() if isinstance(m, ChannelGain)]
    if len(gains) != 1:
        raise ConfigError(f"expected one head gain in {type(model).__name__}, found {len(gains)}")
    return gains[0]
