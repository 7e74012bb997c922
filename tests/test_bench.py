"""`python -m qrl.bench`: evaluations-to-failure on planted members, with intervals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from qrl import bench, stats
from qrl.agents import SearchLog
from qrl.bench import sb3_algorithm
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
        assert isinstance(r["best_reward"], float)  # the best it met, for a graded objective
    found = [r for r in runs if r["agent"] == "random"]
    expected = np.mean([r["found_at"] is not None and r["found_at"] <= 25 for r in found])
    assert metrics["bench/random/found@25"] == pytest.approx(expected)
    low, high = metrics["bench/random/found@25_ci_low"], metrics["bench/random/found@25_ci_high"]
    assert low <= expected <= high
    for name in ("summary.md", "curves.png", "runs.csv", "curves.json"):
        assert (tmp_path / name).stat().st_size > 0
    # Random (not a black-box baseline) is held against the black-box baseline, paired.
    assert "bench/random/median_ratio_vs_optuna_ci_low" in metrics
    summary = (tmp_path / "summary.md").read_text()
    assert "random | optuna" in summary
    # Every agent is held against random at the budget; compare_at (200) is capped at it.
    assert summary.startswith("2 easy held_out members")
    assert "evals to reach random's found fraction at 40" in summary
    assert isinstance(metrics["bench/optuna/above_random_at_40"], bool)
    assert "bench/optuna/evals_to_random_found_ci_high" in metrics
    # A rerun of the same config resumes: no run is repeated; a run of a member this config
    # does not have (an earlier version of its family) is kept on file, out of the results.
    stranger = {**runs[0], "agent": "random", "member": "mlp-per_sample-int8-prox3-hard5-s4006"}
    stranger["found_at"] = stranger["evaluations"] = 1
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write(json.dumps(stranger) + "\n")
    again = bench.run(cfg)
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 9
    assert again["bench/random/found@25"] == pytest.approx(expected)
    assert again["bench/random/runs"] == metrics["bench/random/runs"] == 4


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


def test_evaluations_to_reach_inverts_the_found_fraction() -> None:
    # 2 members x 3 seeds: 4 of the 6 runs ever found the region, at 5, 10, 20 and 40.
    table = np.array([[5.0, 20.0, np.inf], [40.0, 10.0, np.inf]])
    assert bench.evaluations_to_reach(table, 1 / 6) == 5.0
    assert bench.evaluations_to_reach(table, 0.5) == 20.0  # 3 of 6
    assert bench.evaluations_to_reach(table, 0.6) == 40.0  # 3.6 runs: the 4th is needed
    for fraction in (1 / 6, 0.5, 0.6, 4 / 6):
        e = bench.evaluations_to_reach(table, fraction)
        assert bench.found_fraction(table, e) >= fraction > bench.found_fraction(table, e - 1)
    assert bench.evaluations_to_reach(table, 0.7) == np.inf  # only 4 of 6 ever found it
    assert bench.evaluations_to_reach(table, 0.0) == 0.0  # nothing to reach
    assert bench.evaluations_to_reach(np.full((2, 2), np.inf), 0.25) == np.inf
    assert bench.evaluations_to_reach(np.full((2, 2), np.inf), 0.0) == 0.0
    # Ties: two runs at 7 take the fraction from 1/4 to 3/4 at once.
    assert bench.evaluations_to_reach(np.array([[7.0, 7.0], [np.inf, 3.0]]), 0.5) == 7.0
    # A fraction measured on another table (7 of 10, where 0.7 * 10 > 7 in floating point) is
    # reached exactly when as many runs have found it.
    other = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, np.inf], [np.inf, np.inf]])
    agent = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, np.inf], [np.inf, np.inf]])
    assert bench.evaluations_to_reach(agent, bench.found_fraction(other, 1000)) == 7.0


def _runs(
    agent: str, found_at: list[list[int | None]], budget: int = 1000
) -> list[bench.RunResult]:
    """Hand-made runs: found_at[member][seed] (None: never found within the budget)."""
    return [
        bench.RunResult(agent, f"m{m}", s, at, budget if at is None else at, 0.0)
        for m, seeds in enumerate(found_at)
        for s, at in enumerate(seeds)
    ]


def test_every_agent_is_held_against_random_at_the_full_budget() -> None:
    never = [None, None]
    results = [
        # Random finds one member of four, late: 0.25 at the budget.
        *_runs("random", [[500, 500], never, never, never]),
        *_runs("ppo", [[50, 50], [50, 50], [50, 50], [50, 50]]),  # everything, early
        *_runs("es", [[500, 500], [500, 500], [500, 500], [500, 500]]),  # everything, late
        *_runs("sac", [[100, 100], never, never, never]),  # what random finds, sooner
        *_runs("optuna", [never, never, never, never]),
    ]
    versus = bench.against_random(results, 1000, 200, resamples=300, level=0.9)
    assert set(versus) == {"random", "ppo", "es", "sac", "optuna"}
    assert all(v.random_found == 0.25 for v in versus.values())
    random_high = versus["random"].random_found_ci[1]
    assert 0.25 <= random_high < 1.0
    ppo = versus["ppo"]
    assert ppo.evaluations == 50 and ppo.evaluations_ci == (50.0, 50.0) and ppo.speedup == 20.0
    assert ppo.found == 1.0 and ppo.found_ci == (1.0, 1.0) and ppo.above_random
    es = versus["es"]  # reaches random's fraction (2 runs of 8) at 500, but finds none by 200
    assert es.evaluations == 500 and es.speedup == 2.0
    assert es.found == 0.0 and not es.above_random
    sac = versus["sac"]  # as fast as needed, but one member of four is not above random
    assert sac.evaluations == 100 and sac.speedup == 10.0
    assert sac.found == 0.25 and sac.found_ci[0] == 0.0 and not sac.above_random
    optuna = versus["optuna"]
    assert optuna.evaluations == np.inf and optuna.evaluations_ci == (np.inf, np.inf)
    assert np.isnan(optuna.speedup) and not optuna.above_random
    assert versus["random"].evaluations == 500 and not versus["random"].above_random
    # "Above" is strict: a lower end equal to random's upper end is not above it.
    touching = dataclasses.replace(ppo, found_ci=(random_high, 1.0))
    assert not touching.above_random
    table = bench.versus_random_table(versus)
    assert "| ppo " in table and "20.0x fewer evals" in table and "> 1000" in table
    # Without random there is nothing to hold the agents against.
    assert (
        bench.against_random(
            [r for r in results if r.agent != "random"], 1000, 200, resamples=10, level=0.9
        )
        == {}
    )


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
    with pytest.raises(ConfigError, match=r"members\.family must be easy or hard, got 'bogus'"):
        bench.run(load_config("bench", [f"out={tmp_path}", "members.family=bogus"]))
    with pytest.raises(ConfigError, match="compare_at"):
        bench.run(load_config("bench", [f"out={tmp_path}", "compare_at=0"]))
    assert not (tmp_path / "config.yaml").exists()


def test_a_presets_sb3_algorithm_comes_from_its_model_target() -> None:
    assert sb3_algorithm("ppo_narrow") == "ppo" and sb3_algorithm("sac_narrow") == "sac"
    assert sb3_algorithm("td3") == "td3"
    assert sb3_algorithm("es") is None and sb3_algorithm("random") is None  # not SB3 agents
    with pytest.raises(ConfigError, match="unknown agent 'nope'"):
        sb3_algorithm("nope")
