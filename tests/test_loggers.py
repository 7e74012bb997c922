"""Logging: CSV and TensorBoard always; W&B offline, and finished also when the run fails."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from qrl.loggers import RunLogger


def _csv_rows(run_dir: Path) -> list[tuple[int, str, float]]:
    with open(run_dir / "log.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "key", "value"]  # one header, however often the file was opened
    return [(int(step), key, float(value)) for step, key, value in rows[1:]]


def _tensorboard(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in <run_dir>/tb, read back by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb")).Reload()
    return {
        tag: [(e.step, pytest.approx(e.value)) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def test_csv_and_tensorboard_hold_every_logged_value(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as log:
        log.log({"teacher/loss": 0.5, "teacher/val_acc": 0.9}, step=1)
        log.log({"teacher/loss": 0.25}, step=2)
    expected = [(1, "teacher/loss", 0.5), (1, "teacher/val_acc", 0.9), (2, "teacher/loss", 0.25)]
    assert _csv_rows(tmp_path) == expected
    assert _tensorboard(tmp_path) == {
        "teacher/loss": [(1, 0.5), (2, 0.25)],
        "teacher/val_acc": [(1, 0.9)],
    }
    # A second logger on the same dir continues the run; a fresh one starts it again.
    with RunLogger(tmp_path) as log:
        log.log({"teacher/loss": 0.125}, step=3)
    assert _csv_rows(tmp_path) == [*expected, (3, "teacher/loss", 0.125)]
    with RunLogger(tmp_path, fresh=True) as log:
        log.log({"search/reward": 0.75}, step=1)
    assert _csv_rows(tmp_path) == [(1, "search/reward", 0.75)]
    assert _tensorboard(tmp_path) == {"search/reward": [(1, 0.75)]}


def test_a_resumed_run_forgets_what_it_logged_after_its_checkpoint(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as log:
        for step in (1, 2, 3):
            log.log({"pair/val_acc_q": step / 10}, step=step)
    with RunLogger(tmp_path) as log:  # resumed at step 2: steps 2 and 3 are logged again
        log.rewind(2)
        for step in (2, 3):
            log.log({"pair/val_acc_q": step / 100}, step=step)
    expected = [(1, 0.1), (2, 0.02), (3, 0.03)]
    assert _csv_rows(tmp_path) == [(s, "pair/val_acc_q", v) for s, v in expected]
    assert _tensorboard(tmp_path) == {"pair/val_acc_q": expected}


def _counter_to_just_below_a_power_of_ten(scratch: Path) -> None:
    """Write throwaway event files until the next one's counter is 10^k - 1 (9, 99, ...)."""

    def counter() -> int:
        writer = SummaryWriter(str(scratch))
        writer.close()
        return max(int(p.name.rsplit(".", 1)[-1]) for p in scratch.iterdir())

    last = counter()
    target = 10 ** len(str(last + 2)) - 2  # the next file then gets 10^k - 1
    while last < target:
        last = counter()


def test_a_rewind_s_purge_sorts_after_the_events_it_purges(tmp_path: Path) -> None:
    # TensorBoard purges only the files that sort before the purging one, and names sort by
    # second, then host, pid and a counter compared as text ("10" before "9"): in the same
    # second and process, a purge could sort first and leave the stale steps in.
    tb = tmp_path / "tb"
    _counter_to_just_below_a_power_of_ten(tmp_path / "other")
    with RunLogger(tmp_path) as log:
        log.log({"a/b": 1.0}, step=1)
    earlier = {p.name for p in tb.iterdir()}
    with RunLogger(tmp_path) as log:
        before = {p.name for p in tb.iterdir()}
        log.rewind(1)
        (purging,) = {p.name for p in tb.iterdir()} - before
    assert all(name < purging for name in earlier)


def test_wandb_offline_run_is_finished_even_on_crash(tmp_path: Path, monkeypatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    with (
        pytest.raises(RuntimeError, match="boom"),
        RunLogger(tmp_path, {"wandb": True}, {"a": 1}) as log,
    ):
        log.log({"x/y": 1.0}, step=1)
        # A second TensorBoard dir lets W&B infer the root of the run's TensorBoard logs at
        # once; with one, it waits 10 s for another before it can finish the run.
        SummaryWriter(str(tmp_path / "tb-other")).close()
        run = log.wandb_run
        assert run is not None and wandb.run is run and run.config["a"] == 1
        raise RuntimeError("boom")
    assert log.wandb_run is None and wandb.run is None  # finished, not left open
    offline_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_dirs) == 1 and any(offline_dirs[0].glob("*.wandb"))
    # Finished as failed: the exit code the crash gave it.
    assert "got exitcode: 1" in (offline_dirs[0] / "logs" / "debug.log").read_text()
    assert _csv_rows(tmp_path) == [(1, "x/y", 1.0)]  # the other sinks were closed intact


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
