"""How fast does each agent find a planted failure? The number qrl reports about its own search.

    python -m qrl.bench                                  # held-out members, every agent
    python -m qrl.bench members.family=hard              # the hard family's held-out members
    python -m qrl.bench members.count=4 seeds=[0] budget.evaluations=200 agents=[random,ppo]

Reads top to bottom: build the planted members (`members.family`: `easy` from
`qrl.planted.family`, `hard` from `qrl.planted.hard`) -> for every (agent, member, seed),
search `qrl/QuantFailure-v0` on the member until the budget is spent or an action inside the
member's failure region is evaluated (`run_one`; "inside" is a fact of the member,
`Member.found`) -> the fraction of runs that found it by each number of evaluations, and the
median evaluations-to-failure, with percentile-bootstrap intervals that resample members and,
within each, seeds (`summarize`); when random search ran, every agent held against it: the
evaluations it needs to reach random's found fraction at the full budget, and whether its
found fraction at `compare_at` evaluations lies above random's at the full budget
(`against_random`) -> write `members.json`, `runs.csv`, `curves.json`, `summary.md`,
`curves.png` and, last, `metrics.json`.

Every agent gets the same budget and the same environment (the `env` and `space` groups, the
reference being the member's own full-precision model). A run that does not find the region
is censored at the budget: its evaluations-to-failure is infinite, and a median over runs
that found it in fewer than half is reported as "> budget". Finished runs are appended to
`runs.jsonl`, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.monitor import Monitor

from qrl.agents import RecordingWrapper, SearchLog, run_agent
from qrl.cli import checked_options, hydra_task
from qrl.config import CONF_DIR, checked_number
from qrl.envs import QUANT_FAILURE_ID
from qrl.errors import ConfigError
from qrl.planted.family import Member, held_out_members, tuning_members
from qrl.plots import pyplot
from qrl.runs import atomic_write, start_run, write_metrics
from qrl.schema import Env, Space
from qrl.stats import bootstrap_interval, nested_resamples
from qrl.tables import format_table

BLACK_BOX = ("es", "optuna")  # the black-box baselines the learning agents are held against
FAMILIES = ("easy", "hard")  # members.family: qrl.planted.family, qrl.planted.hard


@dataclass(frozen=True)
class RunResult:
    """One agent on one member with one seed."""

    agent: str
    member: str
    seed: int
    found_at: int | None  # evaluations until the first action inside the region (None: never)
    evaluations: int  # evaluations spent (found_at, or the budget)
    wall_s: float
    best_reward: float | None = None  # the largest reward it met (None: a run from before)


def agent_config(name: str) -> DictConfig:
    """The `agent` group's preset `name` (conf/agent/<name>.yaml)."""
    path = CONF_DIR / "agent" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "agent").glob("*.yaml"))
        raise ConfigError(f"unknown agent {name!r} in agents=[...]; choose from {known}")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    return cfg


def sb3_algorithm(name: str) -> str | None:
    """The SB3 algorithm of the agent preset `name`, lower case ("ppo" for ppo and ppo_narrow,
    read from its model's `_target_`), or None for an agent that is not an SB3 one."""
    model = agent_config(name).get("model") or {}
    target = str(model.get("_target_", "")) if isinstance(model, DictConfig) else ""
    if not target.startswith("stable_baselines3."):
        return None
    return target.rsplit(".", 1)[-1].lower()


def env_options(cfg: DictConfig) -> dict[str, Any]:
    """`qrl/QuantFailure-v0` keywords from the `env` and `space` groups (input space only)."""
    if str(cfg.space.mode) != "input":
        raise ConfigError("the planted regions live in the input space: use space=input")
    return {
        "mode": "input",
        "corruptions": list(cfg.space.corruptions),
        "class_mix": bool(cfg.space.class_mix),
        "batch_size": int(cfg.env.batch_size),
        "validity_floor": float(cfg.env.validity_floor),
        "penalty": float(cfg.env.penalty),
        "reference": "student",  # a member is its own teacher: the gap is the drop
    }


def region_volume(member: Member, samples: int = 300, seed: int = 0) -> float:
    """Fraction of uniform random actions inside the member's region (its size, for the
    report: random search's chance per evaluation)."""
    rng = np.random.default_rng(seed)
    shape = member.task.action_space.shape
    return float(np.mean([member.found(rng.uniform(-1, 1, shape)) for _ in range(samples)]))


def run_one(
    member: Member,
    agent_cfg: DictConfig,
    seed: int,
    budget: int,
    options: dict[str, Any],
) -> RunResult:
    """Search one member with one agent until the budget is spent or the region is found."""
    started = time.perf_counter()
    log = SearchLog(budget, stop_when=lambda trial: member.found(trial.action))

    def make_env() -> gym.Env:
        env = gym.make(QUANT_FAILURE_ID, victim=member.victim, split="train", **options)
        return Monitor(RecordingWrapper(env, log))

    run_agent(agent_cfg, make_env, log, seed=seed, n_envs=1, sb3_log_dir=None)
    return RunResult(
        str(agent_cfg.name),
        member.spec.name,
        seed,
        log.stopped_at,
        log.count,
        round(time.perf_counter() - started, 3),
        None if log.best is None else log.best.reward,
    )


# --- intervals ---------------------------------------------------------------------------------


def found_table(runs: Sequence[RunResult]) -> np.ndarray:
    """Evaluations-to-failure as a (members, seeds) array, members and seeds sorted by name
    (so two agents' tables line up); inf where a run never found the region."""
    members = sorted({r.member for r in runs})
    seeds = sorted({r.seed for r in runs})
    table = np.full((len(members), len(seeds)), np.inf)
    for r in runs:
        found = np.inf if r.found_at is None else r.found_at
        table[members.index(r.member), seeds.index(r.seed)] = found
    return table


def median_ratio_interval(
    agent: np.ndarray,
    baseline: np.ndarray,
    *,
    resamples: int,
    level: float,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """median(agent) / median(baseline) of evaluations-to-failure, with a paired bootstrap
    interval: each resample draws the same members and seeds for both agents, so the spread
    between members (some regions are easy for every agent) does not count twice.

    A median that is infinite (half the runs or more never found the region) makes the ratio
    infinite (or 0). Resamples where both are infinite say nothing and are left out, so the
    interval is conditional on one of the two finding half the regions; when the whole table
    is like that, the ratio and its interval are NaN.
    """
    if agent.shape != baseline.shape:
        raise ValueError(f"tables differ in shape: {agent.shape} vs {baseline.shape}")

    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        ma, mb = median_to_failure(a), median_to_failure(b)
        if np.isinf(ma) and np.isinf(mb):
            return float("nan")
        return float(ma / mb) if np.isfinite(mb) else 0.0

    stats = np.array(
        [ratio(agent[idx], baseline[idx]) for idx in nested_resamples(agent.shape, resamples, seed)]
    )
    stats = stats[~np.isnan(stats)]
    value = ratio(agent, baseline)
    if np.isnan(value) or len(stats) == 0:
        return float("nan"), (float("nan"), float("nan"))  # neither agent found half the regions
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha], method="inverted_cdf")
    return value, (float(low), float(high))


def median_to_failure(found_at: np.ndarray) -> float:
    """The (lower) median of evaluations-to-failure; infinite when half or more never found."""
    return float(np.quantile(found_at, 0.5, method="inverted_cdf"))


def found_fraction(found_at: np.ndarray, evaluations: int) -> float:
    """Fraction of runs that found the region within `evaluations` (inf: never)."""
    return float(np.mean(found_at <= evaluations))


def evaluations_to_reach(found_at: np.ndarray, fraction: float) -> float:
    """The fewest evaluations by which `fraction` of the runs had found the region: the smallest
    e with `found_fraction(found_at, e) >= fraction`.

    0 for a fraction of 0 (nothing to reach); inf when fewer runs than that ever found it.
    """
    if fraction <= 0:
        return 0.0
    finite = np.sort(found_at[np.isfinite(found_at)])  # (runs that found it,)
    # The found fraction just after each of them, computed as `found_fraction` computes it
    # (count / runs), so a fraction taken from another table compares exactly.
    reached = np.arange(1, finite.size + 1) / found_at.size
    hit = np.flatnonzero(reached >= fraction)
    return float(finite[hit[0]]) if hit.size else float("inf")


def summarize(
    results: Sequence[RunResult],
    grid: Sequence[int],
    *,
    resamples: int,
    level: float,
) -> dict[str, dict[str, Any]]:
    """Per agent: found fraction at each grid point and the median evaluations-to-failure,
    each with its bootstrap interval (see `bootstrap_interval`)."""
    out: dict[str, dict[str, Any]] = {}
    for agent in sorted({r.agent for r in results}):
        runs = [r for r in results if r.agent == agent]
        table = found_table(runs)
        members, seeds = table.shape
        row: dict[str, Any] = {"runs": len(runs), "members": members, "seeds": seeds}
        for e in grid:
            row[f"found@{e}"] = found_fraction(table, e)
            row[f"found@{e}_ci"] = bootstrap_interval(
                table,
                lambda v, e=e: found_fraction(v, e),  # type: ignore[misc]
                resamples=resamples,
                level=level,
            )
        row["median_to_failure"] = median_to_failure(table)
        row["median_to_failure_ci"] = bootstrap_interval(
            table, median_to_failure, resamples=resamples, level=level
        )
        out[agent] = row
    return out


@dataclass(frozen=True)
class VersusRandom:
    """One agent held against random search's found fraction at the full budget."""

    agent: str
    budget: int
    random_found: float  # random's found fraction at the budget
    random_found_ci: tuple[float, float]
    evaluations: float  # the agent's evaluations to reach `random_found` (inf: never)
    evaluations_ci: tuple[float, float]
    compare_at: int
    found: float  # the agent's found fraction at `compare_at`
    found_ci: tuple[float, float]

    @property
    def speedup(self) -> float:
        """budget / evaluations: how many times fewer evaluations the agent needs to find what
        random finds with the whole budget (NaN when random found nothing or the agent never
        reaches it)."""
        finite = 0 < self.evaluations < np.inf
        return self.budget / self.evaluations if finite else float("nan")

    @property
    def above_random(self) -> bool:
        """Whether the lower end of the agent's interval at `compare_at` lies above the upper
        end of random's at the full budget."""
        return self.found_ci[0] > self.random_found_ci[1]


def against_random(
    results: Sequence[RunResult],
    budget: int,
    compare_at: int,
    *,
    resamples: int,
    level: float,
) -> dict[str, VersusRandom]:
    """Every agent in `results` (random too, as the reference) held against random search at
    the full budget; empty when random did not run.

    The interval of the evaluations to reach random's found fraction resamples the agent's
    members and seeds (`bootstrap_interval`) with random's fraction held at its point value;
    the found fractions' intervals are `summarize`'s.
    """
    if not any(r.agent == "random" for r in results):
        return {}
    summary = summarize(results, sorted({compare_at, budget}), resamples=resamples, level=level)
    target = summary["random"][f"found@{budget}"]
    out = {}
    for agent, row in summary.items():
        table = found_table([r for r in results if r.agent == agent])
        out[agent] = VersusRandom(
            agent=agent,
            budget=budget,
            random_found=target,
            random_found_ci=summary["random"][f"found@{budget}_ci"],
            evaluations=evaluations_to_reach(table, target),
            evaluations_ci=bootstrap_interval(
                table,
                lambda v: evaluations_to_reach(v, target),
                resamples=resamples,
                level=level,
            ),
            compare_at=compare_at,
            found=row[f"found@{compare_at}"],
            found_ci=row[f"found@{compare_at}_ci"],
        )
    return out


# --- output ------------------------------------------------------------------------------------


def _fmt_count(v: float, budget: int) -> str:
    return f"> {budget}" if not np.isfinite(v) else f"{v:.0f}"


def summary_table(summary: dict[str, dict[str, Any]], grid: Sequence[int], budget: int) -> str:
    """Markdown: found fraction at each grid point [interval], median evaluations-to-failure."""
    header = ["agent", "runs", *(f"found by {e}" for e in grid), "median evals to failure"]
    rows = []
    for agent, row in summary.items():
        cells = [agent, str(row["runs"])]
        for e in grid:
            lo, hi = row[f"found@{e}_ci"]
            cells.append(f"{row[f'found@{e}']:.2f} [{lo:.2f}, {hi:.2f}]")
        lo, hi = row["median_to_failure_ci"]
        cells.append(
            f"{_fmt_count(row['median_to_failure'], budget)} "
            f"[{_fmt_count(lo, budget)}, {_fmt_count(hi, budget)}]"
        )
        rows.append(cells)
    return format_table(header, rows, markdown=True)


def median_ratios(
    results: Sequence[RunResult], *, resamples: int, level: float
) -> dict[tuple[str, str], tuple[float, tuple[float, float]]]:
    """(agent, black-box baseline) -> median ratio and paired interval, for every agent that
    is not a black-box baseline (the learning agents, and random as the floor), against every
    baseline in `results` run on the same members and seeds."""
    tables = {
        a: found_table([r for r in results if r.agent == a]) for a in {r.agent for r in results}
    }
    keys = {a: sorted({(r.member, r.seed) for r in results if r.agent == a}) for a in tables}
    out = {}
    for agent in sorted(set(tables) - set(BLACK_BOX)):
        for baseline in [b for b in BLACK_BOX if b in tables and keys[b] == keys[agent]]:
            out[agent, baseline] = median_ratio_interval(
                tables[agent], tables[baseline], resamples=resamples, level=level
            )
    return out


def ratio_table(
    ratios: dict[tuple[str, str], tuple[float, tuple[float, float]]], level: float
) -> str:
    """Markdown: each agent's median evaluations-to-failure over a black-box baseline's."""
    rows = [
        [
            agent,
            baseline,
            "undefined (neither found half the regions)"
            if np.isnan(value)
            else f"{value:.2f} [{low:.2f}, {high:.2f}]",
        ]
        for (agent, baseline), (value, (low, high)) in ratios.items()
    ]
    header = [
        "agent",
        "black-box baseline",
        f"median evals to failure, agent / baseline [{100 * level:.0f}% paired bootstrap]",
    ]
    return format_table(header, rows, markdown=True)


def versus_random_table(versus: dict[str, VersusRandom]) -> str:
    """Markdown: each agent's evaluations to reach random's found fraction at the full budget,
    and its found fraction at `compare_at` against random's at the full budget."""
    ref = next(iter(versus.values()))
    budget, at = ref.budget, ref.compare_at
    lo, hi = ref.random_found_ci
    header = [
        "agent",
        f"evals to reach random's found fraction at {budget} ({ref.random_found:.2f})",
        f"{budget} / that",
        f"found by {at}",
        f"interval at {at} above random's [{lo:.2f}, {hi:.2f}] at {budget}",
    ]
    rows = []
    for agent, v in versus.items():
        e_lo, e_hi = v.evaluations_ci
        f_lo, f_hi = v.found_ci
        rows.append(
            [
                agent,
                f"{_fmt_count(v.evaluations, budget)} "
                f"[{_fmt_count(e_lo, budget)}, {_fmt_count(e_hi, budget)}]",
                # Random against itself is the reference, not a speed-up.
                "(reference)"
                if agent == "random"
                else "-"
                if np.isnan(v.speedup)
                else f"{v.speedup:.1f}x fewer evals",
                f"{v.found:.2f} [{f_lo:.2f}, {f_hi:.2f}]",
                "(reference)" if agent == "random" else "yes" if v.above_random else "no",
            ]
        )
    return format_table(header, rows, markdown=True)


def plot_curves(
    path: Path, summary: dict[str, dict[str, Any]], curve: dict[str, Any], budget: int
) -> Path:
    """Found fraction against evaluations, one line per agent with its interval as a band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for agent in summary:
        xs = np.array(curve[agent]["evaluations"])
        ax.plot(xs, curve[agent]["found"], label=agent)
        ax.fill_between(xs, curve[agent]["low"], curve[agent]["high"], alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlim(1, budget)
    ax.set_ylim(0, 1)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("found fraction of (member, seed) runs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_points(
    results: Sequence[RunResult], budget: int, *, resamples: int, level: float
) -> dict[str, Any]:
    """The found-fraction curve of every agent on a log grid of evaluations, with intervals."""
    grid = sorted({round(float(v)) for v in np.geomspace(1, budget, 40)})
    summary = summarize(results, grid, resamples=resamples, level=level)
    return {
        agent: {
            "evaluations": grid,
            "found": [row[f"found@{e}"] for e in grid],
            "low": [row[f"found@{e}_ci"][0] for e in grid],
            "high": [row[f"found@{e}_ci"][1] for e in grid],
        }
        for agent, row in summary.items()
    }


# --- the task ----------------------------------------------------------------------------------


def check_settings(cfg: DictConfig) -> None:
    """A `ConfigError` for settings that cannot run, before any work."""
    Space.validate(cfg.space)  # the `space` and `env` nodes (qrl.schema)
    Env.validate(cfg.env)
    checked_number(cfg.budget.evaluations, "budget.evaluations", int, low=1)
    checked_number(cfg.members.count, "members.count", int, low=1)
    checked_number(cfg.bootstrap, "bootstrap", int, low=1)
    checked_number(cfg.compare_at, "compare_at", int, low=1)
    if str(cfg.members.family) not in FAMILIES:
        raise ConfigError(
            f"members.family must be {' or '.join(FAMILIES)}, got {cfg.members.family!r}"
        )
    if str(cfg.members.set) not in ("held_out", "tuning"):
        raise ConfigError(f"members.set must be held_out or tuning, got {cfg.members.set!r}")
    if not cfg.agents or not cfg.seeds:
        raise ConfigError("agents=[...] and seeds=[...] need at least one entry each")
    for seed in cfg.seeds:
        checked_number(seed, "seeds[...]", int, low=0)
    for name in cfg.agents:
        agent_config(str(name))


def members_of(cfg: DictConfig) -> list[Member]:
    """The first `members.count` members of `members.set` in `members.family`."""
    count, held_out = int(cfg.members.count), cfg.members.set == "held_out"
    if cfg.members.family == "hard":
        # Imported here: only a hard run needs the hard family's module.
        from qrl.planted.hard import hard_held_out_members, hard_tuning_members

        return hard_held_out_members(count) if held_out else hard_tuning_members(count)
    return held_out_members(count) if held_out else tuning_members(count)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run every (agent, member, seed) not yet in `runs.jsonl`, then write the results."""
    check_settings(cfg)
    out, started = start_run(cfg)
    budget = int(cfg.budget.evaluations)
    options = env_options(cfg)
    # --- build the planted members --------------------------------------------------------------
    members = members_of(cfg)
    described = [{**m.spec.describe(), "volume": region_volume(m)} for m in members]
    (out / "members.json").write_text(json.dumps(described, indent=2) + "\n")
    # --- search every member with every agent and seed -----------------------------------------
    done_path = out / "runs.jsonl"
    if bool(cfg.get("overwrite", False)):
        done_path.unlink(missing_ok=True)  # runs of the config being replaced
    results = [RunResult(**json.loads(line)) for line in _lines(done_path)]
    done = {(r.agent, r.member, r.seed) for r in results}
    for name in cfg.agents:
        agent_cfg = agent_config(str(name))
        for member in members:
            for seed in cfg.seeds:
                if (str(agent_cfg.name), member.spec.name, int(seed)) in done:
                    continue
                result = run_one(member, agent_cfg, int(seed), budget, options)
                results.append(result)
                with open(done_path, "a") as f:
                    f.write(json.dumps(asdict(result)) + "\n")
                if cfg.progress:
                    print(
                        f"{result.agent:8s} {result.member:36s} seed {result.seed}: "
                        f"{'found at ' + str(result.found_at) if result.found_at else 'not found'}"
                        f" ({result.wall_s:.1f} s)",
                        flush=True,
                    )
    # Only this run's agents, members and seeds: runs.jsonl may hold others' (a larger count, or
    # members of an earlier version of their family, whose names differ).
    names = {str(agent_config(str(n)).name) for n in cfg.agents}
    named, seeds = {m.spec.name for m in members}, {int(s) for s in cfg.seeds}
    results = [r for r in results if r.agent in names and r.member in named and r.seed in seeds]
    # --- summarize and write ---------------------------------------------------------------------
    return write_results(out, cfg, results, budget, started)


def write_results(
    out: Path, cfg: DictConfig, results: list[RunResult], budget: int, started: float
) -> dict[str, Any]:
    level, resamples = float(cfg.ci_level), int(cfg.bootstrap)
    grid = [int(e) for e in cfg.report_at if int(e) <= budget]  # the table's columns
    compare_at = min(int(cfg.compare_at), budget)
    computed = sorted({*grid, compare_at, budget})  # in metrics.json, whatever report_at holds
    summary = summarize(results, computed, resamples=resamples, level=level)
    curve = curve_points(results, budget, resamples=resamples, level=level)
    table = summary_table(summary, grid, budget)
    header = (
        f"{len({r.member for r in results})} {cfg.members.family} {cfg.members.set} members x "
        f"seeds {list(cfg.seeds)}, {budget} evaluations; [{100 * level:.0f}% percentile "
        f"bootstrap over members and seeds]"
    )
    ratios = median_ratios(results, resamples=resamples, level=level)
    if ratios:
        table += "\n\n" + ratio_table(ratios, level)
    versus = against_random(results, budget, compare_at, resamples=resamples, level=level)
    if versus:
        table += "\n\n" + versus_random_table(versus)
    atomic_write(out / "summary.md", lambda tmp: tmp.write_text(f"{header}\n\n{table}\n"))
    atomic_write(out / "curves.json", lambda tmp: tmp.write_text(json.dumps(curve) + "\n"))
    _write_runs_csv(out / "runs.csv", results)
    plot_curves(out / "curves.png", summary, curve, budget)
    metrics: dict[str, Any] = {}
    for agent, row in summary.items():
        for e in computed:
            metrics[f"bench/{agent}/found@{e}"] = row[f"found@{e}"]
            metrics[f"bench/{agent}/found@{e}_ci_low"] = row[f"found@{e}_ci"][0]
            metrics[f"bench/{agent}/found@{e}_ci_high"] = row[f"found@{e}_ci"][1]
        median = row["median_to_failure"]
        metrics[f"bench/{agent}/median_to_failure"] = median if np.isfinite(median) else None
        metrics[f"bench/{agent}/runs"] = row["runs"]
    for (agent, baseline), (value, (low, high)) in ratios.items():
        if np.isnan(value):
            continue  # undefined: neither found half the regions (the table says so)
        key = f"bench/{agent}/median_ratio_vs_{baseline}"
        for suffix, v in (("", value), ("_ci_low", low), ("_ci_high", high)):
            metrics[key + suffix] = v if np.isfinite(v) else None  # None: infinite
    for agent, vs in versus.items():
        key = f"bench/{agent}/evals_to_random_found"
        low, high = vs.evaluations_ci
        for suffix, v in (("", vs.evaluations), ("_ci_low", low), ("_ci_high", high)):
            metrics[key + suffix] = v if np.isfinite(v) else None  # None: never reached
        if not np.isnan(vs.speedup):  # undefined: random found nothing, or never reached
            metrics[f"bench/{agent}/speedup_vs_random"] = vs.speedup
        metrics[f"bench/{agent}/above_random_at_{compare_at}"] = vs.above_random
    print(header)
    print(table)
    print(f"wrote {out}/summary.md, curves.png, runs.csv, metrics.json")
    return write_metrics(out, metrics, seed=int(cfg.seed), started=started)


def _lines(path: Path) -> list[str]:
    return (
        [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def _write_runs_csv(path: Path, results: list[RunResult]) -> None:
    import csv

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(RunResult.__dataclass_fields__))
            writer.writeheader()
            for r in results:
                writer.writerow(asdict(r))

    atomic_write(path, write)


@checked_options
@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    hydra_task(run, cfg)


if __name__ == "__main__":
    main()
