"""Model checkpoints that carry what is needed to rebuild the model: its spec and data shape."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import qrl
from qrl import models
from qrl.errors import CheckpointError
from qrl.runs import atomic_torch_save

FORMAT = "qrl-model-v1"


@dataclass(frozen=True)
class InputSpec:
    """What a model needs to know about its data: shape, classes, normalization statistics."""

    in_channels: int
    num_classes: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, data: Any) -> InputSpec:
        """The spec of an `ImageData`."""
        return cls(data.channels, data.num_classes, data.image_size, data.mean, data.std)


def build_model(spec: Mapping[str, Any], inputs: InputSpec) -> nn.Module:
    """Build a fresh model from its spec for the given inputs."""
    return models.build_model(dict(spec), **asdict(inputs))


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    spec: Mapping[str, Any],
    inputs: InputSpec,
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Save weights plus spec atomically (weights-only loadable: tensors and plain values)."""
    record = {
        "format": FORMAT,
        "qrl_version": qrl.__version__,
        "spec": dict(spec),
        "inputs": {**asdict(inputs), "image_size": list(inputs.image_size)},
        "metrics": dict(metrics or {}),
        "state_dict": model.state_dict(),
    }
    return atomic_torch_save(record, path)


def load_file(path: str | os.PathLike[str]) -> Any:
    """`torch.load` (weights only) that turns every way a file can be broken into one error.

    The message names the file and never repeats torch's advice to load with
    `weights_only=False` (that runs arbitrary code from the file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zips raise OSError, broken pickles many kinds
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch file (truncated, or not saved by "
            f"torch.save: {type(exc).__name__}); point to an intact copy, or rerun the task "
            "that wrote it"
        ) from exc
    return record


def load_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a qrl checkpoint file (a dict holding a `state_dict`)."""
    record = load_file(path)
    if not isinstance(record, dict) or "state_dict" not in record:
        raise CheckpointError(f"checkpoint {path} holds no state_dict")
    return record


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by `save_model`; returns (model in eval mode, record)."""
    record = load_record(path)
    if record.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a qrl model checkpoint ({FORMAT})")
    try:
        raw = record["inputs"]
        inputs = InputSpec(
            int(raw["in_channels"]),
            int(raw["num_classes"]),
            (int(raw["image_size"][0]), int(raw["image_size"][1])),
            tuple(raw["mean"]),
            tuple(raw["std"]),
        )
        model = build_model(record["spec"], inputs)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(
            f"checkpoint {path} has a damaged header ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        model.load_state_dict(record["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not match its model spec: {exc}") from exc
    record["input_spec"] = inputs
    return model.eval(), record
