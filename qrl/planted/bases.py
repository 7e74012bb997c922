"""The trained digits models that planted members are edited from: trained once, cached.

Members are weight edits of these (`qrl.planted.plant`), so a family of any size costs one
training per architecture. Training mixes in random distributions of the input family
(`qrl.policies.input`), so the float models stay accurate over much of the space a search
explores: there, the only thing that can break is the quantized copy.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qrl.data import ImageData, load_data
from qrl.errors import ConfigError
from qrl.models import MLP, SmallCNN
from qrl.policies import DEFAULT_CORRUPTIONS
from qrl.policies.input import InputDistribution
from qrl.training import TrainSettings, fit
from qrl.victim import cache_dir

ARCHITECTURES = ("mlp", "cnn")
VERSION = 2  # bump when the architectures or training change: the cache is keyed on it
EPOCHS = {"mlp": 60, "cnn": 20}


def make_base(arch: str, data: ImageData) -> nn.Module:
    """An untrained base model: an MLP with hidden layers (256, 128), or a width-16 SmallCNN."""
    if arch == "mlp":
        return MLP(
            data.channels, data.num_classes, data.image_size, (256, 128), data.mean, data.std
        )
    if arch == "cnn":
        return SmallCNN(data.channels, data.num_classes, data.image_size, 16, data.mean, data.std)
    raise ConfigError(f"planted architectures are {list(ARCHITECTURES)}, got {arch!r}")


def _augmented_loss(
    family: InputDistribution, seed: int
) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        # Half of each batch under one random distribution of the family, at a random strength.
        half = len(x) // 2
        action = rng.uniform(-1, 1, family.dim) * rng.uniform(0.0, 1.0)
        shifted = family.transform(x[:half], action, gen)
        return F.cross_entropy(model(torch.cat([shifted, x[half:]])), y)

    return loss


def base_model(arch: str, seed: int = 0, progress: bool = False) -> tuple[nn.Module, ImageData]:
    """The trained base model of `arch` on digits (cached under `$QRL_CACHE/planted`).

    Returns:
        (the model in eval mode, the digits data it was trained on).
    """
    data = load_data("digits", seed=seed)
    torch.manual_seed(seed)  # the initial weights too: a base is a function of its seed
    model = make_base(arch, data)
    path = cache_dir() / "planted" / f"digits-{arch}-s{seed}-v{VERSION}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent processes train it once
        if not path.is_file():
            torch.manual_seed(seed)
            family = InputDistribution(data.num_classes, data.channels, DEFAULT_CORRUPTIONS)
            settings = TrainSettings(epochs=EPOCHS[arch], lr=3e-3)
            fit(
                model,
                data.train,
                _augmented_loss(family, seed),
                settings,
                seed=seed,
                progress=progress,
            )
            tmp = path.with_suffix(".tmp")
            torch.save(model.state_dict(), tmp)
            tmp.replace(path)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval(), data
