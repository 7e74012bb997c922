"""Bad inputs get one clear line naming what to fix: checkpoints, group options, own data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qrl.audit import load_any_model
from qrl.checkpoints import InputSpec, build_model, load_model, save_model
from qrl.data import load_data
from qrl.errors import CheckpointError

SPEC = {"_target_": "qrl.models.SmallCNN", "width": 4}
INPUTS = InputSpec(1, 4, (8, 8), (0.5,), (0.25,))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_model(tmp_path / "teacher.pt", build_model(SPEC, INPUTS), SPEC, INPUTS)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.7])
def test_a_truncated_checkpoint_names_the_file_and_gives_no_unsafe_advice(
    checkpoint: Path, fraction: float
) -> None:
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: int(fraction * len(data))])
    for load in (
        lambda: load_model(checkpoint),
        lambda: load_any_model(checkpoint, SPEC, load_data("synthetic")),
    ):
        with pytest.raises(CheckpointError) as info:
            load()
        message = str(info.value)
        assert str(checkpoint) in message and "\n" not in message
        assert "weights_only" not in message and "delete" not in message.lower()
    assert checkpoint.is_file()  # the user's file is left alone


def test_a_corrupt_checkpoint_names_the_file_and_gives_no_unsafe_advice(tmp_path: Path) -> None:
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    with pytest.raises(CheckpointError) as info:
        load_model(bad)
    message = str(info.value)
    assert str(bad) in message and "weights_only" not in message
    assert "delete" not in message.lower()


def _cli(task: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"qrl.{task}", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("task", "option", "choices"),
    [("distill", "data=imagenet", "digits"), ("search", "agent=dqn", "ppo")],
)
def test_an_unknown_group_option_is_one_line_listing_the_choices(
    tmp_path: Path, task: str, option: str, choices: str
) -> None:
    result = _cli(task, option, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    group, value = option.split("=")
    assert lines[0].startswith(f"error: unknown {group} option {value!r}")
    assert choices in lines[0]


@pytest.mark.parametrize(
    ("task", "override", "closest"),
    [
        ("pairs", "+train.roundz=2", "train.rounds,"),
        ("reproduce", "pairs.train.roundz=2", "pairs.train.rounds,"),
    ],
)
def test_an_unknown_key_on_the_command_line_is_one_line_and_writes_nothing(
    tmp_path: Path, task: str, override: str, closest: str
) -> None:
    result = _cli(task, override, f"hydra.run.dir={tmp_path / 'x'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: unknown key")
    assert f"closest valid keys: {closest}" in lines[0]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("task", "args", "message", "existing"),
    [
        ("pairs", ["kind=evil"], "error: kind must be one of", False),
        ("reproduce", ["seeds=3"], "error: seeds must be a non-empty list of distinct", True),
    ],
)
def test_a_refused_config_leaves_no_run_dir(
    tmp_path: Path, task: str, args: list[str], message: str, existing: bool
) -> None:
    """Hydra makes the run dir (and an empty `<task>.log`) before the task refuses its config:
    a new dir goes again, a dir that was there keeps only what it held."""
    run_dir = tmp_path / "new" / "x"
    if existing:
        run_dir.mkdir(parents=True)
        (run_dir / "notes.txt").write_text("mine")
    result = _cli(task, *args, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message)
    if existing:
        assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]
    else:
        assert not run_dir.exists()
