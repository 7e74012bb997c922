"""Logging: CSV and TensorBoard always; W&B offline, and finished also when the run fails."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from qrl.loggers import RunLogger


def test_csv_and_tensorboard_are_written(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as log:
        log.log({"teacher/loss": 0.5, "teacher/val_acc": 0.9}, step=1)
        log.log({"teacher/loss": 0.25}, step=2)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["key"], float(r["value"])) for r in rows][-1] == (
        "2",
        "teacher/loss",
        0.25,
    )
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_wandb_offline_run_is_finished_even_on_crash(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    with (
        pytest.raises(RuntimeError, match="boom"),
        RunLogger(tmp_path, {"wandb": True}, {"a": 1}) as log,
    ):
        log.log({"x/y": 1.0}, step=1)
        run = log.wandb_run
        raise RuntimeError("boom")
    assert log.wandb_run is None
    assert run is not None
    offline_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_dirs) == 1 and any(offline_dirs[0].glob("*.wandb"))


def test_rerun_into_a_finished_dir_is_unfinished_until_it_ends(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from qrl.runs import start_run, write_metrics

    cfg = OmegaConf.create({"out": str(tmp_path), "seed": 0})
    _, started = start_run(cfg)
    write_metrics(tmp_path, {"x": 1.0}, seed=0, started=started)
    assert (tmp_path / "metrics.json").is_file()
    start_run(cfg)
    assert not (tmp_path / "metrics.json").exists()
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
