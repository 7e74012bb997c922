"""Every agent on the held-out members of both planted families; regenerates its section of
experiments/README.md.

    python experiments/search_benchmark.py [--out runs/experiments/search_benchmark]
        [--hard-out DIR] [overrides] [--hard-overrides OVERRIDE ...]

Runs `python -m qrl.bench members.family=hard` into `<out>_hard` (or `--hard-out`), then
`python -m qrl.bench` (the easy family) into `--out`: 10 held-out members x seeds 0, 1, 2,
1,000 evaluations, agents random, es, optuna, ppo, sac by default (the hard family: random, es,
ppo_narrow, sac_narrow, the PPO and SAC presets tuned on it); further Hydra overrides are
passed on to both runs, `--hard-overrides` to the hard one only. Then writes one section
between the `bench` markers of experiments/README.md: the hard family first (its tables, every
agent held against random, the members' region sizes and approach profiles, and the hard
family's targets checked against the numbers), then the easy family's table, region sizes and
targets, under their own subheadings.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import common
from omegaconf import OmegaConf

from qrl.bench import BLACK_BOX, sb3_algorithm  # BLACK_BOX: what PPO and SAC are held against
from qrl.planted.hard import FOUND_DROP  # a hard member's action is found at this drop

# The hard family's agents unless overrides choose: the PPO and SAC presets tuned on it.
HARD_AGENTS = "agents=[random,es,ppo_narrow,sac_narrow]"
TITLE = "Search speed on planted failures (`python -m qrl.bench`)"
HARD_TITLE = "Search speed on the hard planted family (`python -m qrl.bench members.family=hard`)"


def targets(metrics: dict[str, object], default_agent: str) -> list[str]:
    """The easy family's "done when" targets, each with the numbers that decide it."""

    def found(agent: str) -> float:
        return float(metrics.get(f"bench/{agent}/found@1000", float("nan")))  # type: ignore[arg-type]

    def median(agent: str) -> float:
        value = metrics.get(f"bench/{agent}/median_to_failure")
        return math.inf if value is None else float(value)  # type: ignore[arg-type]

    best_bb = min(BLACK_BOX, key=median)
    lines = [
        f"- default agent (`{default_agent}`) finds the region in >= 90% of runs: "
        f"{found(default_agent):.2f} -> **{'met' if found(default_agent) >= 0.9 else 'not met'}**"
    ]
    for agent in ("ppo", "sac"):
        if f"bench/{agent}/runs" not in metrics:
            lines.append(f"- {agent}: not run -> **not met**")
            continue
        ok_found = found(agent) >= 0.8
        # An agent that never found half the regions is not "within 2x" of anything.
        ok_speed = math.isfinite(median(agent)) and median(agent) <= 2 * median(best_bb)
        ratio = f"bench/{agent}/median_ratio_vs_{best_bb}"
        paired = ""
        if ratio in metrics:
            low, high = (metrics.get(f"{ratio}_ci_{end}") for end in ("low", "high"))
            paired = (
                f"; ratio {_num(metrics[ratio])}, 95% paired bootstrap [{_num(low)}, {_num(high)}]"
            )
        lines.append(
            f"- {agent}: found {found(agent):.2f} (>= 0.80: {'yes' if ok_found else 'no'}), "
            f"median evaluations to failure {median(agent):.0f} vs best black-box "
            f"({best_bb}) {median(best_bb):.0f} (within 2x: {'yes' if ok_speed else 'no'}"
            f"{paired}) -> **{'met' if ok_found and ok_speed else 'not met'}**"
        )
    lines.append(f"- random, the floor: found {found('random'):.2f}, median {median('random'):.0f}")
    return lines


def hard_targets(
    metrics: dict[str, object], default_agent: str, budget: int, compare_at: int
) -> list[str]:
    """The hard family's targets, each with the numbers that decide it: random finds little
    with the whole budget, and the learning agents find what it finds within `compare_at`
    evaluations, with intervals that do not overlap."""

    def value(key: str) -> float:
        v = metrics.get(key, float("nan"))
        return math.inf if v is None else float(v)  # type: ignore[arg-type]

    def found(agent: str, at: int = budget) -> float:
        return value(f"bench/{agent}/found@{at}")

    def counts(key: str) -> str:  # an interval of evaluations
        return f"[{_count(value(key + '_ci_low'))}, {_count(value(key + '_ci_high'))}]"

    def fractions(key: str) -> str:  # an interval of found fractions
        return f"[{value(key + '_ci_low'):.2f}, {value(key + '_ci_high'):.2f}]"

    def verdict(ok: bool) -> str:
        return f"**{'met' if ok else 'not met'}**"

    random_found = found("random")
    lines = [
        f"- random finds the region in at most 30% of runs at {budget} evaluations: "
        f"{random_found:.2f} -> {verdict(random_found <= 0.3)}",
        f"- default agent (`{default_agent}`) finds it in >= 90% of runs: "
        f"{found(default_agent):.2f} -> {verdict(found(default_agent) >= 0.9)}",
    ]
    for agent in learning_agents(metrics):
        if f"bench/{agent}/runs" not in metrics:
            lines.append(f"- {agent}: not run -> **not met**")
            continue
        ok_found = found(agent) >= 0.8
        evals = f"bench/{agent}/evals_to_random_found"
        ok_speed = value(evals) <= compare_at  # inf (never) and NaN (random not run) fail
        above = metrics.get(f"bench/{agent}/above_random_at_{compare_at}") is True
        at = f"bench/{agent}/found@{compare_at}"
        lines.append(
            f"- {agent}: found {found(agent):.2f} (>= 0.80: {'yes' if ok_found else 'no'}); "
            f"reaches random's {budget}-evaluation found fraction ({random_found:.2f}) in "
            f"{_count(value(evals))} {counts(evals)} evaluations (within {compare_at}: "
            f"{'yes' if ok_speed else 'no'}); found by {compare_at} {found(agent, compare_at):.2f} "
            f"{fractions(at)} vs random's at {budget} "
            f"{fractions(f'bench/random/found@{budget}')} (above: {'yes' if above else 'no'}) -> "
            f"{verdict(ok_found and ok_speed and above)}"
        )
    return lines


def learning_agents(metrics: dict[str, object]) -> list[str]:
    """The PPO and SAC presets a run holds (ppo, sac, ppo_narrow, ...); ppo and sac if none."""
    ran = sorted({key.split("/")[1] for key in metrics if key.endswith("/runs")})
    return [a for a in ran if sb3_algorithm(a) in ("ppo", "sac")] or ["ppo", "sac"]


def _num(value: object) -> str:
    """A ratio from metrics.json, where an infinite one was stored as null (`qrl.bench`)."""
    return "inf" if value is None else f"{float(value):.2f}"  # type: ignore[arg-type]


def _count(value: float) -> str:
    """A number of evaluations: inf where it was never reached, 'n/a' where it is undefined."""
    return "n/a" if math.isnan(value) else "inf" if math.isinf(value) else f"{value:.0f}"


def approach_line(points: list[dict[str, object]]) -> str:
    """A member's approach profile from `members.json` as one line: the reward (the quantized
    copy's accuracy drop) at each point of the line from the identity action into its region,
    starred where the point is found (the drop reaches `FOUND_DROP`)."""

    def point(p: dict[str, object]) -> str:
        reward = float(p.get("reward", p.get("drop", math.nan)))  # type: ignore[arg-type]
        return f"{reward:.2f}{'*' if reward >= FOUND_DROP else ''}"

    return " -> ".join(point(p) for p in points)


def family_run(out: Path) -> tuple[str, dict[str, object], list[dict[str, object]]]:
    """(summary.md, metrics.json, members.json) of one family's run."""
    return (
        (out / "summary.md").read_text().strip(),
        json.loads((out / "metrics.json").read_text()),
        json.loads((out / "members.json").read_text()),
    )


def hard_section(out: Path, command: list[str], default_agent: str) -> str:
    """The hard family's section: its tables, members with approach profiles, targets."""
    cfg = OmegaConf.load(out / "config.yaml")  # the run's own settings
    budget = int(cfg.budget.evaluations)
    compare_at = min(int(cfg.compare_at), budget)
    summary, metrics, members = family_run(out)
    return "\n".join(
        [
            *common.heading(HARD_TITLE, command, ran="It runs"),
            "",
            "Held-out members of `qrl.planted.hard` (never used for tuning): planted failures "
            "whose regions random search rarely hits, each with a graded approach. A run stops "
            "at its first evaluated action that the member counts as found (the quantized copy "
            f"loses at least {FOUND_DROP:g} of the member's fixed draw of 256 inputs from it, "
            "float accuracy minus quantized), or after the budget. Found fraction = share of "
            "(member, seed) runs that had found "
            "it by that many evaluations; intervals: 95% percentile bootstrap resampling "
            "members and, within them, seeds. Median evaluations to failure counts a run that "
            "never found it as infinite. The table that holds every agent against random gives "
            "the evaluations it needs to reach the found fraction random reaches with the whole "
            "budget (its interval resamples the agent's runs, random's fraction held at its "
            "value), the budget over that, and whether the lower end of its found-fraction "
            f"interval at {compare_at} evaluations lies above the upper end of random's at the "
            "whole budget.",
            "",
            summary,
            "",
            "Members, with their region size (share of 300 uniform random actions found) and "
            "approach profile: the reward (the quantized copy's accuracy drop, float minus "
            "quantized, on the member's fixed draw of 256 inputs) at evenly spaced points of "
            "the line from the identity action to the region's anchor; *: found.",
            "",
            *(
                f"- {m['name']}: region size {m['volume']:.3f}; reward along the line "
                + approach_line(m.get("approach", []))  # type: ignore[arg-type]
                for m in members
            ),
            "",
            "Against the hard family's targets:",
            "",
            *hard_targets(metrics, default_agent, budget, compare_at),
            "",
            f"Curves: `{out}/curves.png`; every run: `{out}/runs.csv`.",
        ]
    )


def easy_section(out: Path, command: list[str], default_agent: str) -> str:
    """The easy family's section, as it has been reported since the benchmark began."""
    summary, metrics, members = family_run(out)
    sizes = ", ".join(f"{m['name']} {m['volume']:.3f}" for m in members)
    return "\n".join(
        [
            *common.heading(TITLE, command, ran="It runs"),
            "",
            "Each member of `qrl.planted.family` (held-out seeds, never used for tuning) is a "
            "digits MLP or CNN whose float outputs are exact and whose dynamic-quantized copy "
            "collapses inside a known region of the 20-dimensional input-distribution space; a "
            "run stops at its first evaluated action inside the region (a fact of the member), "
            "or after the budget. Found fraction = share of (member, seed) runs that had found "
            "it by that many evaluations; intervals: 95% percentile bootstrap resampling members "
            "and, within them, seeds. Median evaluations to failure counts a run that never "
            "found it as infinite.",
            "",
            summary,
            "",
            "Region size (share of 300 uniform random actions inside each region): " + sizes + ".",
            "",
            "Against the issue's targets:",
            "",
            *targets(metrics, default_agent),
            "",
            f"Curves: `{out}/curves.png`; every run: `{out}/runs.csv`.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default="runs/experiments/search_benchmark", help="the easy family's run dir"
    )
    parser.add_argument("--hard-out", help="the hard family's run dir (default: <out>_hard)")
    parser.add_argument("--default-agent", default="es", help="conf/search.yaml's default agent")
    parser.add_argument(
        "--hard-overrides",
        nargs="+",
        default=[],
        metavar="OVERRIDE",
        help="Hydra overrides of the hard family's run only (e.g. members.count=20); put them "
        "after the shared overrides",
    )
    parser.add_argument(
        "--families",
        default="hard,easy",
        help="which families to run and report (each has its own section): hard, easy or both",
    )
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides of both runs")
    args = parser.parse_args()
    common.check_extra(
        [*args.overrides, *args.hard_overrides],
        {
            "members.family": "--out (easy) and --hard-out (hard): it runs both families",
            "hydra.run.dir": "--out and --hard-out",
        },
    )
    common.enter_repo()
    easy_out = Path(args.out)
    hard_out = Path(args.hard_out) if args.hard_out else easy_out.with_name(f"{easy_out.name}_hard")

    def command(out: Path, *overrides: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "qrl.bench",
            f"hydra.run.dir={out}",
            "progress=false",
            *overrides,
        ]

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if not families or set(families) - {"hard", "easy"}:
        raise SystemExit(f"--families takes hard, easy or hard,easy; got {args.families!r}")
    if "hard" in families:
        chosen = [o for o in [*args.overrides, *args.hard_overrides] if o.startswith("agents=")]
        agents = [] if chosen else [HARD_AGENTS]
        hard = command(
            hard_out, "members.family=hard", *agents, *args.overrides, *args.hard_overrides
        )
        common.run(hard, sweep=False)
        common.update_readme("bench_hard", hard_section(hard_out, hard, args.default_agent))
    if "easy" in families:
        easy = command(easy_out, *args.overrides)
        common.run(easy, sweep=False)
        common.update_readme("bench", easy_section(easy_out, easy, args.default_agent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
