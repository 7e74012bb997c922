"""Model checkpoints that carry what is needed to rebuild the model: its spec and data shape."""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import qrl
from qrl import models
from qrl.errors import CheckpointError, ConfigError
from qrl.runs import atomic_torch_save
from qrl.specs import build

FORMAT = "qrl-model-v1"
# What to do about a missing, corrupt or foreign checkpoint, where the caller knows no better.
REWRITE = "point to an intact copy, or rerun the task that wrote it"


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


def data_keywords(inputs: InputSpec) -> dict[str, Any]:
    """The data keywords qrl offers a model's constructor: `in_channels`, `num_classes`,
    `image_size`, `mean`, `std` (sequences as lists, as a YAML spec would give them)."""
    values = asdict(inputs)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def accepted_keywords(target: str, offered: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `offered` that the constructor (or function) `target` takes by keyword.

    A target with `**kwargs` takes everything; one that cannot be imported or inspected gets
    everything too, and building it then says what is wrong.
    """
    module_name, _, attr = target.rpartition(".")
    try:
        signature = inspect.signature(getattr(importlib.import_module(module_name), attr))
    except (ImportError, AttributeError, ValueError, TypeError):
        return dict(offered)
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(offered)
    by_keyword = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {k: v for k, v in offered.items() if k in by_keyword}


def build_own_model(spec: Mapping[str, Any], inputs: InputSpec) -> tuple[nn.Module, list[str]]:
    """Build a user's model class from its spec (`_target_` plus its own options), passing only
    the data keywords (`data_keywords`) that its constructor accepts and the spec does not set.

    Returns:
        (the model, the names of the data keywords passed).

    Raises:
        ConfigError: the class cannot be imported or built, or builds no `nn.Module`.
    """
    options = dict(spec)
    options.pop("_partial_", None)
    target = options.get("_target_")
    offered = {k: v for k, v in data_keywords(inputs).items() if k not in options}
    passed = accepted_keywords(target, offered) if isinstance(target, str) else offered
    model = build(options, what="model", **passed)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model _target_ {target} did not build an nn.Module")
    return model, list(passed)


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


def load_file(path: str | os.PathLike[str], advice: str | None = None) -> Any:
    """`torch.load` (weights only) that turns every way a file can be broken into one error.

    The message names the file and never repeats torch's advice to load with
    `weights_only=False` (that runs arbitrary code from the file). `advice` replaces the
    general advice after a missing or corrupt file (`REWRITE`) where the caller knows better.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist" + (f"; {advice}" if advice else "")
        )
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zips raise OSError, broken pickles many kinds
        refused = _refused_message(path) if isinstance(exc, pickle.UnpicklingError) else None
        if refused is not None:  # an intact file of Python objects that qrl does not unpickle
            raise CheckpointError(refused) from exc
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch file (truncated, or not saved by "
            f"torch.save: {type(exc).__name__}); {advice or REWRITE}"
        ) from exc
    return record


def pickled_classes(path: str | os.PathLike[str]) -> tuple[list[str], bool]:
    """The classes and functions a `torch.save` file's pickle names, in order, and whether its
    objects carry an `nn.Module`'s attributes (`_parameters`, `_modules`).

    Read from the pickle's opcodes (`pickletools`): nothing in the file is unpickled or run.
    `([], False)` for a file that is not a torch zip archive.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.rpartition("/")[2] == "data.pkl"]
            data = archive.read(names[0]) if names else b""
    except (OSError, zipfile.BadZipFile, KeyError):
        return [], False
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL" and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(".".join(strings[-2:]))
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a damaged pickle: what was read so far
        pass
    return found, {"_parameters", "_modules"} <= set(strings)


def _refused_message(path: Path) -> str | None:
    """Why weights-only loading refused an intact `path`, and how to save it so that qrl can
    load it; None when the file names no object that explains it (then it is corrupt)."""
    classes, is_module = pickled_classes(path)
    if is_module:
        cls = classes[0] if classes else "<your class>"
        return (
            f"checkpoint {path} is a whole module pickled with torch.save(model) (class {cls}); "
            "qrl never unpickles one (that would run code from the file): save its weights "
            f"instead with torch.save(model.state_dict(), path) and name its class with "
            f"+model.spec._target_={cls} (or save it as TorchScript)"
        )
    own = [c for c in classes if not c.startswith(("torch.", "collections.", "__builtin__."))]
    if not own:
        return None
    return (
        f"checkpoint {path} holds pickled Python objects ({', '.join(dict.fromkeys(own[:3]))}) "
        "that qrl never unpickles (that would run code from the file): save tensors and plain "
        "values, e.g. torch.save(model.state_dict(), path)"
    )


def load_record(path: str | os.PathLike[str], advice: str | None = None) -> dict[str, Any]:
    """Load a qrl checkpoint file (a dict holding a `state_dict`)."""
    record = load_file(path, advice)
    if not isinstance(record, dict) or "state_dict" not in record:
        raise CheckpointError(f"checkpoint {path} holds no state_dict; {advice or REWRITE}")
    return record


def load_model(
    path: str | os.PathLike[str], advice: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by `save_model`; returns (model in eval mode, record).

    `advice` replaces the general advice (`REWRITE`) after a missing, corrupt or foreign file.
    """
    record = load_record(path, advice)
    if record.get("format") != FORMAT:
        found = f"format {record['format']!r}" if "format" in record else "no format key"
        raise CheckpointError(
            f"checkpoint {path} is not a qrl model checkpoint: it has {found}, this qrl reads "
            f"{FORMAT}; {advice or REWRITE}"
        )
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
            f"checkpoint {path} has a damaged header ({type(exc).__name__}: {exc}); "
            f"{advice or REWRITE}"
        ) from exc
    try:
        model.load_state_dict(record["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not match its model spec: {exc}") from exc
    record["input_spec"] = inputs
    return model.eval(), record
