"""The experiment scripts: their shared helpers, and that each one starts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from qrl.runs import METRICS_FILE
from qrl.sweeps import write_overrides

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _common():
    spec = importlib.util.spec_from_file_location("common", EXPERIMENTS / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_section_is_replaced_in_place_and_the_rest_kept(tmp_path, monkeypatch) -> None:
    common = _common()
    readme = tmp_path / "README.md"
    readme.write_text("# Experiments\n\nhand-written\n")
    monkeypatch.setattr(common, "README", readme)
    monkeypatch.setattr(common, "README_LOCK", tmp_path / "readme.lock")
    common.update_readme("claim", "first numbers")
    common.update_readme("other", "other numbers")
    common.update_readme("claim", "second numbers")
    text = readme.read_text()
    assert text.startswith("# Experiments\n\nhand-written\n")
    assert "first numbers" not in text and text.count("second numbers") == 1
    assert text.index("second numbers") < text.index("other numbers")  # kept its place


def _job(root: Path, name: str, overrides: list[str], finished: bool = True) -> None:
    job = root / name
    job.mkdir(parents=True)
    write_overrides(job, overrides)  # as a sweep's job writes them
    if finished:
        (job / METRICS_FILE).write_text(json.dumps({"seed": 0, "drop": 0.5}))


def test_an_experiment_picks_exactly_the_runs_its_overrides_made(tmp_path: Path) -> None:
    common = _common()
    # Hydra writes values its own way (3.5, False); the script asked for 3.50 and seed 0.
    _job(tmp_path, "a", ["bits.budget=3.5", "kind=robust", "seed=0", "progress=False"])
    _job(tmp_path, "b", ["bits.budget=4.0", "kind=robust", "seed=0", "progress=False"])
    _job(tmp_path, "c", ["bits.budget=3.5", "kind=robust", "seed=0", "train.rounds=5"])
    _job(tmp_path, "d", ["bits.budget=3.5", "kind=robust", "seed=1"], finished=False)
    scanned = common.scan(tmp_path, ["bits.budget=3.50", "kind=robust", "seed=0,1"])
    assert [Path(r["run_dir"]).name for r in scanned["finished"]] == ["a"]  # not b, not c
    assert [Path(r["run_dir"]).name for r in scanned["unfinished"]] == ["d"]
    with pytest.raises(SystemExit, match="no run under"):
        common.scan(tmp_path, ["bits.budget=6.0", "kind=robust", "seed=0"])


def test_keys_a_script_sets_cannot_be_overridden_and_commands_are_shell_safe() -> None:
    common = _common()
    with pytest.raises(SystemExit, match="seed is set by this script; use --seeds"):
        common.check_extra(["train.rounds=5", "seed=3"], common.PAIR_KEYS)
    command = [
        sys.executable,
        "-m",
        "qrl.pairs",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",
    ]
    assert common.shown(command) == (
        "python -m qrl.pairs 'hydra.sweep.subdir=${hydra.job.override_dirname}'"
    )
    line = common.stamp()
    assert line.startswith("Generated on ") and "CPU cores" in line and "torch" in line


@pytest.mark.parametrize(
    "script",
    sorted(p.stem for p in EXPERIMENTS.glob("*.py") if p.name != "common.py"),
)
def test_every_experiment_script_starts(
    script: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(EXPERIMENTS))  # how `python experiments/x.py` finds common
    spec = importlib.util.spec_from_file_location(script, EXPERIMENTS / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--help"])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
