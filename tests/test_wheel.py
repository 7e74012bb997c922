"""The wheel works with no source tree: configs ship inside the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What a build reads; copying them keeps the checkout free of build/ and *.egg-info.
INSTALL = ["--no-deps", "--no-index", "-q"]
NO_NETWORK = ["--no-deps", "--no-build-isolation"]
BUILD_INPUTS = ["qrl", "conf", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "conf"))
        else:
            shutil.copy2(path, src / name)
    # The build's own setuptools (no isolation): no network needed.
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", str(src), *NO_NETWORK, "-q", "-w", str(dist)],
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("qrl-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new venv holding the wheel; its dependencies are reused from this environment.

    A `.pth` line adds this environment's site-packages after the venv's own, so the wheel's
    `qrl` wins over an editable install here (whose import hook lives in a `.pth` that is not
    processed through a path line).
    """
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    own = _run([str(python), "-c", purelib], cwd=tmp_path)
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(own.strip()) / "qrl_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", *INSTALL, str(wheel)],
        cwd=tmp_path,
    )
    return python


@pytest.mark.slow
def test_the_wheel_runs_a_search_from_another_folder(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    python = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "elsewhere"  # no conf/, no qrl/ source anywhere above it
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(WANDB_MODE="offline", QRL_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")

    show = "import qrl, qrl.config; print(qrl.__file__); print(qrl.config.CONF_DIR)"
    where = _run([str(python), "-c", show], cwd=work, env=env).split()
    assert all(Path(p).is_relative_to(tmp_path / "venv") for p in where), where
    assert Path(where[1]).name == "conf" and Path(where[1]).parent.name == "qrl"

    quick = ["data=synthetic", "teacher.epochs=2", "student.epochs=2", "progress=false"]
    _run([str(python), "-m", "qrl.distill", *quick, "hydra.run.dir=victim"], cwd=work, env=env)
    small = ["env.batch_size=32", "eval.samples=64", "eval.bootstrap=50", "confirm.backends=[]"]
    search = ["agent=random", "budget.evaluations=8", *small, "progress=false"]
    where_to = [f"victim.run={work / 'victim'}", "hydra.run.dir=search"]
    _run([str(python), "-m", "qrl.search", *search, *where_to], cwd=work, env=env)
    metrics = json.loads((work / "search" / "metrics.json").read_text())
    assert metrics["evaluations"] == 8 and 0 <= metrics["eval/acc_q"] <= 1  # search + selection
