"""Launchers as config groups: joblib (the local default), Ray, SLURM through submitit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from qrl import distill, report
from qrl.config import CONF_DIR, load_config
from tests.conftest import QUICK

TINY_SEARCH = [
    "budget.evaluations=16",
    "env.batch_size=32",
    "eval.samples=64",
    "eval.bootstrap=50",
    "confirm.backends=[]",
    "progress=false",
]


def _launcher(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("search", overrides=list(overrides), return_hydra_config=True)
    return dict(cfg.hydra.launcher)


def test_sweeps_run_on_joblib_unless_told_otherwise() -> None:
    assert _launcher()["_target_"].endswith("JoblibLauncher")
    assert _launcher("hydra/launcher=ray")["_target_"].endswith("RayLauncher")
    slurm = _launcher("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert slurm["_target_"].endswith("SlurmLauncher") and slurm["partition"] == "gpu"
    assert slurm["gpus_per_node"] == 1  # qrl's preset on top of submitit's defaults


@pytest.mark.slow
def test_a_sweep_runs_through_ray_on_a_local_instance(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    distill.run(load_config("distill", [*QUICK, f"out={victim}"]))
    sweep_dir = tmp_path / "sweep"
    # No address: the launcher starts a local Ray instance, ended when the command exits
    # (with `ray start` running, or RAY_ADDRESS set, it would join that cluster instead).
    ray = ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2"]
    where = [f"victim.run={victim}", f"hydra.sweep.dir={sweep_dir}"]
    swept = ["agent=ppo,random", "seed=0,1"]
    result = subprocess.run(
        [sys.executable, "-m", "qrl.search", "-m", *ray, *swept, *where, *TINY_SEARCH],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Ray Launcher is launching 4 jobs" in result.stdout + result.stderr
    keys, groups = report.group_runs(report.collect_runs(sweep_dir))
    assert keys == ["agent"]
    assert {k: [r["seed"] for r in v] for k, v in groups.items()} == {
        ("ppo",): [0, 1],
        ("random",): [0, 1],
    }


def test_local_parallel_jobs_share_the_cpus() -> None:
    from qrl.sweeps import threads_per_job

    assert threads_per_job(-1, 16) == 1  # joblib's default: one job per CPU
    assert threads_per_job(4, 16) == 4 and threads_per_job(3, 16) == 5
    assert threads_per_job(32, 8) == 1 and threads_per_job(1, 8) == 8
