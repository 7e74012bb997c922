"""`+sweep=tune_ppo`: Optuna tunes PPO's hyperparameters against the search's eval/gap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from qrl import distill
from qrl.config import CONF_DIR, load_config
from qrl.sweeps import read_overrides
from tests.conftest import QUICK


def test_the_preset_tunes_ppo_on_the_validation_split() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("search", overrides=["+sweep=tune_ppo"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.agent.name == "ppo"
    assert cfg.eval.split == "val"  # the test split stays unseen while tuning
    assert all(key.startswith("agent.model.") for key in cfg.hydra.sweeper.params)


@pytest.mark.slow
def test_optuna_maximizes_the_searches_eval_gap(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    distill.run(load_config("distill", [*QUICK, f"out={victim}"]))
    sweep = tmp_path / "tune"
    tiny = ["budget.evaluations=32", "env.batch_size=32", "eval.samples=64", "eval.bootstrap=50"]
    tiny += ["confirm.backends=[]", "progress=false", f"victim.run={victim}"]
    tune = ["+sweep=tune_ppo", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(
        [sys.executable, "-m", "qrl.search", *tune, *tiny],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = sorted(sweep.glob("trial_*"))
    assert len(trials) == 3
    gaps = [json.loads((t / "metrics.json").read_text())["eval/gap"] for t in trials]
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(gaps))
    # The best parameters are those of a trial that reached the best value.
    winners = [t for t, g in zip(trials, gaps, strict=True) if g == pytest.approx(max(gaps))]
    sampled = [
        {
            k: float(v)
            for k, v in (o.split("=", 1) for o in read_overrides(t) or [])
            if k in best.best_params
        }
        for t in winners
    ]
    assert {k: float(v) for k, v in best.best_params.items()} in sampled
