"""Models: every architecture on 1 or 3 channels and any size >= 8x8, built from specs."""

from __future__ import annotations

import pytest
import torch

from qrl.errors import ConfigError
from qrl.models import MLP, ResNet18, SmallCNN, build_model


@pytest.mark.parametrize("cls", [SmallCNN, MLP, ResNet18])
@pytest.mark.parametrize("channels,size", [(1, (8, 8)), (3, (11, 9)), (3, (32, 32))])
def test_models_take_any_channels_and_size(cls, channels: int, size: tuple[int, int]) -> None:
    kwargs = {"width": 4} if cls is not MLP else {"hidden": (16,)}
    model = cls(in_channels=channels, num_classes=7, image_size=size, **kwargs)
    out = model(torch.rand(2, channels, *size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("cls", [SmallCNN, MLP, ResNet18])
def test_models_refuse_inputs_they_cannot_take(cls) -> None:
    with pytest.raises(ConfigError, match="at least 8x8"):
        cls(in_channels=1, num_classes=3, image_size=(7, 8))
    with pytest.raises(ConfigError, match="1- or 3-channel"):
        cls(in_channels=2, num_classes=3, image_size=(8, 8))


def test_normalization_lives_inside_the_model() -> None:
    model = SmallCNN(width=4, mean=[0.3], std=[0.2]).eval()
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(model.normalize(x), (x - 0.3) / 0.2)


def test_build_model_from_spec() -> None:
    spec = {"_target_": "qrl.models.SmallCNN", "width": 6}
    model = build_model(spec, in_channels=3, num_classes=5, image_size=(16, 16))
    assert isinstance(model, SmallCNN) and model.head.out_features == 5
    with pytest.raises(ConfigError, match="cannot build model"):
        build_model(
            {"_target_": "qrl.models.Nope"}, in_channels=1, num_classes=2, image_size=(8, 8)
        )
    with pytest.raises(ConfigError, match="cannot build model"):
        build_model(
            {"_target_": "qrl.models.SmallCNN", "depth": 3},
            in_channels=1,
            num_classes=2,
            image_size=(8, 8),
        )
    with pytest.raises(ConfigError, match="needs a _target_"):
        build_model({"width": 3}, in_channels=1, num_classes=2, image_size=(8, 8))
