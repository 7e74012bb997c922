"""Tune PPO's and SAC's hyperparameters with Optuna, on a planted family's tuning members only.

    python experiments/tune_agents.py [--agents ppo,sac] [--trials 10] [--members 4] [--seeds 0]
        [--family easy|hard] [--enqueue AGENT:JSON ...]

`--agents` names conf/agent presets of PPO or SAC (ppo_narrow and sac_narrow, tuned on the hard
family, too); each study starts from its preset's values, then any `--enqueue`d trials.

Each trial runs the agent (its conf/agent preset with the trial's values) on every tuning
member and seed with the benchmark's budget, stopping at the first action in the region
(`qrl.bench.run_one`). The objective, minimized, is the mean over runs of `run_cost`:
log2(evaluations to failure), or for a run that never finds the region log2(twice the budget)
plus how far its best reward stayed from a full drop (1 - best, within 0..1). It rewards finding
the region in every run first and fast second, and on a hard family, where most runs miss,
getting closer along the region's graded approach: without that term, every trial that misses
everywhere scores the same and the sampler learns nothing. The held-out members are never
touched; the best values go into a conf/agent preset by hand, with this command beside
them, and `python -m qrl.bench` then reports them on the held-out members.

Besides the algorithm's own keys, the search space holds what `qrl.search_wrapper` adds to what
the agent sees (`--family hard` tunes them): a Sobol warm-up, the running best in the
observation, and actions as steps from the running best.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from qrl.bench import RunResult, agent_config, env_options, run_one, sb3_algorithm
from qrl.config import load_config
from qrl.planted.family import Member, tuning_members
from qrl.planted.hard import hard_tuning_members


def suggest_search(trial: optuna.Trial) -> dict[str, Any]:
    """The trial's `search` node (`qrl.search_wrapper`)."""
    step = trial.suggest_categorical("relative_step", ["none", "0.2", "0.5", "1.0"])
    return {
        "warmup": trial.suggest_categorical("warmup", [0, 16, 32, 64]),
        "relative_step": None if step == "none" else float(step),
        "history": trial.suggest_categorical("history", [False, True]),
    }


def algorithm(name: str) -> str:
    """The SB3 class of the agent preset `name`, "ppo" or "sac" (ppo_narrow is PPO too)."""
    known = sb3_algorithm(name)
    if known in ("ppo", "sac"):
        return known
    raise SystemExit(f"tuning is defined for PPO and SAC presets; {name} is {known or 'neither'}")


def suggest(name: str, trial: optuna.Trial) -> dict[str, Any]:
    """The trial's values of the agent's `model` keys (and policy_kwargs)."""
    name = algorithm(name)
    if name == "ppo":
        n_steps = trial.suggest_categorical("n_steps", [16, 32, 64, 128])
        return {
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True),
            "n_steps": n_steps,
            "batch_size": min(n_steps, trial.suggest_categorical("batch_size", [16, 32, 64])),
            "n_epochs": trial.suggest_categorical("n_epochs", [5, 10, 20]),
            "gamma": trial.suggest_categorical("gamma", [0.0, 0.5, 0.9]),
            "clip_range": trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3]),
            "ent_coef": trial.suggest_float("ent_coef", 1e-5, 1e-2, log=True),
            "policy_kwargs": {
                "net_arch": [64, 64],
                "log_std_init": trial.suggest_float("log_std_init", -2.0, 0.0),
            },
        }
    if name == "sac":
        return {
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True),
            "learning_starts": trial.suggest_categorical("learning_starts", [10, 25, 50, 100]),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
            "gamma": trial.suggest_categorical("gamma", [0.0, 0.5, 0.9]),
            "tau": trial.suggest_float("tau", 0.005, 0.05, log=True),
            "gradient_steps": trial.suggest_categorical("gradient_steps", [1, 2]),
            # SB3's SAC starts its Gaussian at std exp(-3); wider starts explore the action cube.
            "policy_kwargs": {
                "net_arch": [64, 64],
                "log_std_init": trial.suggest_float("log_std_init", -3.0, 0.0),
            },
        }
    raise SystemExit(f"tuning is defined for ppo and sac, not {name}")


def objective(
    name: str,
    members: list[Member],
    seeds: list[int],
    budget: int,
    options: dict[str, Any],
    log: list[dict[str, Any]],
    search: bool,
    on_trial: Callable[[], None] = lambda: None,
) -> Any:
    def run(trial: optuna.Trial) -> float:
        cfg = agent_config(name)
        values = suggest(name, trial)
        model = OmegaConf.merge(cfg.model, values)
        agent = OmegaConf.merge(cfg, {"model": model})
        if search:
            agent = OmegaConf.merge(agent, {"search": suggest_search(trial)})
        assert isinstance(agent, DictConfig)
        costs, found, bests = [], 0, []
        for member in members:
            for seed in seeds:
                result = run_one(member, agent, seed, budget, options)
                found += result.found_at is not None
                costs.append(run_cost(result, budget))
                bests.append(result.best_reward or 0.0)
        value = sum(costs) / len(costs)
        best = sum(bests) / len(bests)
        log.append(
            {"trial": trial.number, "value": value, "found": found, "mean_best_reward": best}
            | trial.params
        )
        print(
            f"{name} trial {trial.number}: {value:.3f} (found {found}/{len(costs)}, mean best "
            f"reward {best:.2f}) {trial.params}"
        )
        on_trial()
        return value

    return run


def run_cost(result: RunResult, budget: int) -> float:
    """One run's part of the objective: log2(evaluations to failure); a miss costs log2(2 *
    budget) plus 1 - its best reward (clipped to 0..1), so every miss costs more than any find
    and a miss that came closer costs less."""
    if result.found_at is not None:
        return math.log2(result.found_at)
    best = min(max(result.best_reward or 0.0, 0.0), 1.0)
    return math.log2(2 * budget) + 1.0 - best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="ppo,sac")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--out", default="runs/experiments/tune_agents")
    parser.add_argument(
        "--enqueue",
        action="append",
        default=[],
        metavar="AGENT:JSON",
        help="a trial to run before the sampler's, e.g. a pilot's values (repeatable)",
    )
    parser.add_argument(
        "--family", default="easy", choices=["easy", "hard"], help="whose tuning members"
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    members = (
        tuning_members(args.members) if args.family == "easy" else hard_tuning_members(args.members)
    )
    search = args.family == "hard"
    seeds = [int(s) for s in args.seeds.split(",")]
    options = env_options(load_config("bench", ["out=unused"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    best: dict[str, Any] = {}

    def save() -> None:  # after every trial: a run stopped early keeps what it measured
        (out / "tuned.json").write_text(json.dumps(best, indent=2) + "\n")

    for name in args.agents.split(","):
        log: list[dict[str, Any]] = []
        best[name] = {"trials": log}
        study = optuna.create_study(
            direction="minimize", sampler=optuna.samplers.TPESampler(seed=0)
        )
        # The current defaults first, so that tuning can only keep or improve on them.
        default = agent_config(name).model
        first = {k: v for k, v in _default_params(name, default).items() if v is not None}
        if search:
            first.update(_default_search(agent_config(name).get("search")))
        study.enqueue_trial(first)
        for agent, values in enqueued(args.enqueue):
            if agent == name:
                study.enqueue_trial(values)
        study.optimize(
            objective(name, members, seeds, args.budget, options, log, search, save), args.trials
        )
        best[name] = {"value": study.best_value, "params": study.best_params, "trials": log}
        print(f"{name}: best {study.best_value:.3f} with {study.best_params}")
    save()
    print(f"wrote {out / 'tuned.json'}")
    return 0


def enqueued(given: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """`--enqueue AGENT:JSON` values as (agent, trial params); a malformed one stops the run."""
    trials = []
    for text in given:
        agent, _, values = text.partition(":")
        try:
            params = json.loads(values)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"--enqueue {text!r}: not AGENT:JSON ({exc})") from None
        if not isinstance(params, dict):
            raise SystemExit(f"--enqueue {text!r}: the JSON must be an object of trial params")
        trials.append((agent, params))
    return trials


def _default_search(node: Any) -> dict[str, Any]:
    """The preset's `search` node under the search space's names."""
    node = node or {}
    step = node.get("relative_step")
    return {
        "warmup": int(node.get("warmup", 0) or 0),
        "relative_step": "none" if step is None else str(step),
        "history": bool(node.get("history", False)),
    }


def _default_params(name: str, model: Any) -> dict[str, Any]:
    """The preset's values under the search space's names (to enqueue as the first trial)."""
    name = algorithm(name)
    keys = {
        "ppo": ["learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "ent_coef"],
        "sac": ["learning_rate", "learning_starts", "batch_size", "gamma", "tau", "gradient_steps"],
    }[name]
    params = {k: model.get(k) for k in keys}
    if name == "ppo":
        params["clip_range"] = model.get("clip_range", 0.2)
        params["ent_coef"] = max(float(model.get("ent_coef", 0.0)), 1e-5)
        params["log_std_init"] = float(model.policy_kwargs.get("log_std_init", 0.0))
    if name == "sac":
        params["log_std_init"] = float(model.policy_kwargs.get("log_std_init", -3.0))  # SB3's
    return params


if __name__ == "__main__":
    sys.exit(main())
