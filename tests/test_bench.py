"""`python -m qrl.bench`: evaluations-to-failure on planted members, with intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qrl import bench, stats
from qrl.agents import SearchLog
from qrl.config import load_config
from qrl.errors import ConfigError


def test_a_tiny_benchmark_counts_evaluations_to_the_region(tmp_path: Path) -> None:
    cfg = load_config(
        "bench",
        [
            f"out={tmp_path}",
            "members.count=2",
            "seeds=[0,1]",
            "agents=[random,optuna]",
            "budget.evaluations=40",
            "bootstrap=100",
            "progress=false",
        ],
    )
    metrics = bench.run(cfg)
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 2 * 2 * 2
    members = {m["name"]: m for m in json.loads((tmp_path / "members.json").read_text())}
    for r in runs:
        assert r["member"] in members
        # A run stops at its first action in the region, or spends the budget.
        assert r["evaluations"] == (r["found_at"] if r["found_at"] else 40)
    found = [r for r in runs if r["agent"] == "random"]
    expected = np.mean([r["found_at"] is not None and r["found_at"] <= 25 for r in found])
    assert metrics["bench/random/found@25"] == pytest.approx(expected)
    low, high = metrics["bench/random/found@25_ci_low"], metrics["bench/random/found@25_ci_high"]
    assert low <= expected <= high
    for name in ("summary.md", "curves.png", "runs.csv", "curves.json"):
        assert (tmp_path / name).stat().st_size > 0
    # Random (not a black-box baseline) is held against the black-box baseline, paired.
    assert "bench/random/median_ratio_vs_optuna_ci_low" in metrics
    assert "random | optuna" in (tmp_path / "summary.md").read_text()
    # A rerun of the same config resumes: no run is repeated.
    bench.run(cfg)
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 8


def test_the_bootstrap_resamples_members_and_seeds() -> None:
    # Two members: one always found at 10, one never (inf), 3 seeds each.
    table = np.array([[10.0, 10.0, 10.0], [np.inf, np.inf, np.inf]])
    low, high = stats.bootstrap_interval(
        table, lambda v: bench.found_fraction(v, 100), resamples=500, level=0.9
    )
    assert low == 0.0 and high == 1.0  # the spread is over members, which the resampling sees
    same = np.array([[10.0, 10.0, 10.0], [10.0, 10.0, 10.0]])
    assert stats.bootstrap_interval(
        same, lambda v: bench.found_fraction(v, 100), resamples=50, level=0.9
    ) == (1.0, 1.0)


def test_the_median_ratio_is_paired_over_members_and_seeds() -> None:
    # Member 0 is easy for both agents, member 1 hard for both; the agent is always 2x slower.
    baseline = np.array([[4.0, 4.0, 4.0], [100.0, 100.0, 100.0], [10.0, 10.0, 10.0]])
    agent = 2 * baseline
    value, (low, high) = bench.median_ratio_interval(agent, baseline, resamples=300, level=0.9)
    # Paired: every resample keeps the 2x, although each median alone spans 4..100.
    assert value == 2.0 and low == 2.0 and high == 2.0
    never = np.full_like(baseline, np.inf)
    value, (low, high) = bench.median_ratio_interval(never, baseline, resamples=50, level=0.9)
    assert np.isinf(value) and np.isinf(low)
    value, (low, high) = bench.median_ratio_interval(never, never, resamples=50, level=0.9)
    assert np.isnan(value) and np.isnan(low) and np.isnan(high)  # undefined, not infinite
    with pytest.raises(ValueError, match="shape"):
        bench.median_ratio_interval(agent[:2], baseline, resamples=10, level=0.9)


def test_a_search_log_stops_at_the_first_accepted_trial() -> None:
    log = SearchLog(budget=10, stop_when=lambda t: t.reward > 0.5)
    for reward in (0.1, 0.7, 0.9):
        if not log.exhausted:
            log.record(np.zeros(2), reward, {})
    assert log.stopped_at == 2 and log.count == 2 and log.exhausted


def test_bench_settings_are_checked_before_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown agent 'nope'"):
        bench.run(load_config("bench", [f"out={tmp_path}", "agents=[nope]"]))
    with pytest.raises(ConfigError, match=r"members\.set"):
        bench.run(load_config("bench", [f"out={tmp_path}", "members.set=train"]))
    assert not (tmp_path / "config.yaml").exists()
