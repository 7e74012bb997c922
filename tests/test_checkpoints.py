"""Checkpoint files: what a message says about each wrong kind, and building a user's own class."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from qrl.checkpoints import (
    FORMAT,
    REWRITE,
    InputSpec,
    build_own_model,
    load_file,
    load_model,
    pickled_classes,
)
from qrl.errors import CheckpointError, ConfigError

INPUTS = InputSpec(1, 4, (8, 8), (0.5,), (0.25,))
UNPICKLED: list[str] = []  # what `Tracked.__setstate__` saw: it must stay empty


class Tracked(nn.Module):
    """A user's module; unpickling it would call `__setstate__`, which records the call."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))

    def __setstate__(self, state: dict[str, Any]) -> None:
        UNPICKLED.append("Tracked")
        super().__setstate__(state)


def test_a_pickled_whole_module_is_named_never_unpickled_and_the_fix_is_given(
    tmp_path: Path,
) -> None:
    path = tmp_path / "whole.pt"
    torch.save(Tracked(), path)
    name = f"{Tracked.__module__}.Tracked"
    classes, is_module = pickled_classes(path)
    assert is_module and classes[0] == name
    with pytest.raises(CheckpointError) as info:
        load_file(path)
    message = str(info.value)
    assert f"{path} is a whole module pickled with torch.save(model) (class {name})" in message
    assert "torch.save(model.state_dict(), path)" in message
    assert f"+model.spec._target_={name}" in message
    assert "corrupt" not in message and "weights_only" not in message and "\n" not in message
    assert UNPICKLED == []  # the file's objects were never rebuilt
    with pytest.raises(pickle.UnpicklingError):  # what qrl's loading refuses, checked directly
        torch.load(path, weights_only=True)
    torch.save(Tracked().state_dict(), tmp_path / "weights.pt")  # the advice, followed, loads
    assert set(load_file(tmp_path / "weights.pt")) == {"head.weight", "head.bias"}
    assert pickled_classes(tmp_path / "weights.pt")[1] is False


def test_other_pickled_objects_are_named_and_a_broken_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "objects.pt"
    torch.save({"step": Path("x")}, path)  # a Python object that is no tensor
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(pathlib\."):
        load_file(path)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"corrupt or not a torch file .*; {REWRITE}$"):
        load_file(broken)


def test_a_checkpoint_of_another_format_names_the_format_it_found(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"format": "qrl-model-v0", "state_dict": {}}, path)
    with pytest.raises(
        CheckpointError, match=f"it has format 'qrl-model-v0', this qrl reads {FORMAT}"
    ):
        load_model(path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="it has no format key"):
        load_model(path)


def test_a_caller_s_advice_replaces_the_general_one(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing\.pt does not exist; do this$"):
        load_model(tmp_path / "missing.pt", advice="do this")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 50)
    with pytest.raises(CheckpointError) as info:
        load_model(bad, advice="do this")
    assert str(info.value).endswith("; do this") and REWRITE not in str(info.value)


class OnlyClasses(nn.Module):
    def __init__(self, num_classes: int, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.Linear(hidden, num_classes)
        )


class TakesAll(nn.Module):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs


class PositionalOnly(nn.Module):
    def __init__(self, in_channels: int = 1, /, num_classes: int = 2) -> None:
        super().__init__()
        self.sizes = (in_channels, num_classes)


def test_an_own_class_gets_only_the_data_keywords_its_constructor_accepts() -> None:
    here = __name__
    model, passed = build_own_model({"_target_": f"{here}.OnlyClasses", "hidden": 5}, INPUTS)
    assert passed == ["num_classes"] and model.net[2].out_features == 4
    model, passed = build_own_model({"_target_": f"{here}.TakesAll"}, INPUTS)
    assert passed == ["in_channels", "num_classes", "image_size", "mean", "std"]
    assert model.kwargs["image_size"] == [8, 8] and model.kwargs["mean"] == [0.5]
    # A keyword the spec sets is the spec's; a positional-only parameter is never a keyword.
    model, passed = build_own_model({"_target_": f"{here}.PositionalOnly"}, INPUTS)
    assert passed == ["num_classes"] and model.sizes == (1, 4)
    with pytest.raises(ConfigError, match="unexpected keyword argument 'nope'"):
        build_own_model({"_target_": f"{here}.OnlyClasses", "nope": 1}, INPUTS)
    model, passed = build_own_model({"_target_": f"{here}.OnlyClasses", "num_classes": 3}, INPUTS)
    assert passed == [] and model.net[2].out_features == 3
    with pytest.raises(ConfigError, match=r"cannot build model nomodule\.Net: cannot import it"):
        build_own_model({"_target_": "nomodule.Net"}, INPUTS)
