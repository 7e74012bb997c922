"""`python -m qrl.report`: groups by every swept key, statistics over seeds, failures listed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qrl import report
from qrl.sweeps import write_overrides

AGENTS = {"ppo": {"name": "ppo", "kind": "sb3", "lr": 0.1}, "es": {"name": "es", "kind": "cma"}}


def make_run(
    root: Path,
    name: str,
    *,
    agent: str,
    bits: int,
    seed: int,
    gap: float | None,
    overrides: bool = True,
    failure: str | None = None,
) -> Path:
    """A run dir as a qrl job leaves it: config, overrides, and metrics or a failure."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"seed": seed, "out": str(run_dir), "agent": AGENTS[agent], "quant": {"bits": bits}}
    config["data"] = {"seed": seed, "name": "digits"}  # follows the seed, as `${seed}` does
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    if overrides:
        write_overrides(run_dir, [f"agent={agent}", f"quant.bits={bits}", f"seed={seed}"])
    if failure is not None:
        record = {"job": 9, "overrides": [f"agent={agent}"], "error": "ConfigError"}
        (run_dir / "failure.json").write_text(json.dumps({**record, "message": failure}))
    elif gap is not None:
        (run_dir / "metrics.json").write_text(json.dumps({"eval/gap": gap, "seed": seed}))
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """agent x quant.bits x 3 seeds; gap = bits/100 + seed/1000 (+0.5 for ppo)."""
    n = 0
    for agent in ("ppo", "es"):
        for bits in (4, 8):
            for seed in (0, 1, 2):
                gap = bits / 100 + seed / 1000 + (0.5 if agent == "ppo" else 0)
                make_run(tmp_path, f"{n}", agent=agent, bits=bits, seed=seed, gap=gap)
                n += 1
    return tmp_path


def test_runs_are_grouped_by_every_swept_key(sweep: Path) -> None:
    runs = report.collect_runs(sweep)
    keys, metrics, rows = report.summarize(runs)
    assert keys == ["agent", "quant.bits"] and metrics == ["eval/gap"]
    assert [(r["agent"], r["quant.bits"], r["n"], r["seeds"]) for r in rows] == [
        ("es", "4", 3, [0, 1, 2]),
        ("es", "8", 3, [0, 1, 2]),
        ("ppo", "4", 3, [0, 1, 2]),
        ("ppo", "8", 3, [0, 1, 2]),
    ]
    es4 = rows[0]["eval/gap"]
    assert es4["mean"] == pytest.approx(0.041) and es4["std"] == pytest.approx(0.001)
    low, high = es4["ci"]
    assert 0.040 <= low <= 0.041 <= high <= 0.042


def test_runs_without_overrides_are_never_pooled_across_configs(tmp_path: Path) -> None:
    # Made without Hydra (no overrides.yaml): the configs themselves tell the groups apart.
    for i, (agent, bits) in enumerate([("ppo", 4), ("ppo", 8), ("es", 4), ("es", 4)]):
        make_run(tmp_path, f"r{i}", agent=agent, bits=bits, seed=i, gap=0.1, overrides=False)
    keys, groups = report.group_runs(report.collect_runs(tmp_path))
    assert keys == ["agent.name", "quant.bits"]  # not agent.kind, agent.lr, data.seed
    assert {k: len(v) for k, v in groups.items()} == {
        ("es", "4"): 2,
        ("ppo", "4"): 1,
        ("ppo", "8"): 1,
    }


def test_failed_and_unfinished_runs_are_listed_not_averaged(sweep: Path, capsys) -> None:
    make_run(sweep, "bad", agent="ppo", bits=4, seed=3, gap=None, failure="bits must be 2-8")
    make_run(sweep, "running", agent="es", bits=8, seed=3, gap=None)
    scanned = report.scan_runs(sweep)
    assert [len(scanned[k]) for k in ("finished", "failed", "unfinished")] == [12, 1, 1]
    out = sweep / "summary" / "report.md"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    text = out.read_text()
    assert "failed runs (1, not averaged)" in text and "ConfigError: bits must be 2-8" in text
    assert f"{sweep / 'bad'}" in text and f"{sweep / 'running'}" in text
    assert "unfinished runs (1" in text
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    ppo4 = next(r for r in rows if r["agent"] == "ppo" and r["quant.bits"] == "4")
    assert ppo4["n"] == "3" and float(ppo4["eval/gap_mean"]) == pytest.approx(0.541)
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| ppo   | 4          | 3 | 0,1,2 | 0.541 ± 0.001 [" in capsys.readouterr().out


def test_several_sweep_dirs_are_one_report(sweep: Path, tmp_path_factory) -> None:
    other = tmp_path_factory.mktemp("second-sweep")
    make_run(other, "0", agent="ppo", bits=2, seed=0, gap=0.9)
    keys, groups = report.group_runs(report.collect_runs(sweep, other))
    assert keys == ["agent", "quant.bits"] and len(groups[("ppo", "2")]) == 1


def test_nothing_to_report_is_an_error(tmp_path: Path) -> None:
    assert report.main([str(tmp_path)]) == 2
