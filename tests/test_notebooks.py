"""The notebooks run headless on a sweep made here (no Jupyter server, no editing)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from qrl import distill, search
from qrl.config import load_config
from tests.conftest import QUICK

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two agents x two seeds of a tiny search, as a sweep dir holds them."""
    root = tmp_path_factory.mktemp("tiny-sweep")
    victim = root / "victim"
    distill.run(load_config("distill", [*QUICK, f"out={victim}"]))
    tiny = ["budget.evaluations=8", "env.batch_size=32", "progress=false", "eval.samples=64"]
    tiny += ["eval.bootstrap=50", "confirm.backends=[]", f"victim.run={victim}", "archive.grid=4"]
    for i, (agent, seed) in enumerate([(a, s) for a in ("random", "es") for s in (0, 1)]):
        job = [f"out={root / 'sweep' / str(i)}", f"agent={agent}", f"seed={seed}"]
        search.run(load_config("search", [*tiny, *job]))
    return root / "sweep"


def _execute(name: str, sweep_dir: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("QRL_SWEEP_DIR", str(sweep_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The kernel imports this checkout's qrl, as the test process does.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(NOTEBOOKS.parent), *os.sys.path]))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        notebook, timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    return notebook


def _text(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", [])
    )


def test_compare_agents_runs_headless_on_a_tiny_sweep(tiny_sweep: Path, monkeypatch) -> None:
    notebook = _execute("compare_agents.ipynb", tiny_sweep, monkeypatch)
    text = _text(notebook)
    assert "4 finished, 0 failed, 0 unfinished" in text
    assert "| es " in text and "| random " in text and "0,1" in text


def test_a_missing_sweep_dir_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError, match="does not exist: run `python experiments"):
        _execute("compare_agents.ipynb", tmp_path / "nothing-here", monkeypatch)
