"""The experiment scripts: their shared helpers, and that each one starts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

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
    common.update_readme("claim", "first numbers")
    common.update_readme("other", "other numbers")
    common.update_readme("claim", "second numbers")
    text = readme.read_text()
    assert text.startswith("# Experiments\n\nhand-written\n")
    assert "first numbers" not in text and text.count("second numbers") == 1
    assert text.index("second numbers") < text.index("other numbers")  # kept its place


def test_runs_are_picked_by_their_overrides_and_the_machine_is_named() -> None:
    common = _common()
    runs = [
        {"overrides": {"kind": "robust", "seed": "0"}},
        {"overrides": {"kind": "robust", "seed": "3"}},
        {"overrides": {"kind": "detrimental", "seed": "0"}},
    ]
    picked = common.pick(runs, {"kind": ["robust"], "seed": ["0", "1"]})
    assert picked == [runs[0]]
    assert common.shown([sys.executable, "-m", "qrl.pairs", "-m"]) == "python -m qrl.pairs -m"
    line = common.stamp()
    assert line.startswith("Measured on ") and "CPU cores" in line and "torch" in line


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
