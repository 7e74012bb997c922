"""Search agents behind one interface, all held to the same budget of environment evaluations.

- `sb3`: any Stable-Baselines3 algorithm (PPO, SAC, TD3, A2C), built from a Hydra partial.
- `random`: uniform random policies, the baseline every agent must beat.
- `cma`: CMA-ES (the `cma` package), an evolution strategy over the action vector.
- `optuna`: Optuna's TPE sampler (a Bayesian black-box optimizer), one trial per evaluation.

A trial is one environment step: one proposed action scored on one batch; the budget counts
trials, in "evaluations". Every agent steps the same `RecordingWrapper`d environment, so every
trial of every agent is counted and archived the same way; resets (which score the data's own
distribution) are not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import DummyVecEnv
from tqdm.auto import tqdm

from qrl.errors import ConfigError
from qrl.search_wrapper import SearchWrapper, search_options
from qrl.specs import build, to_dict

AGENT_KINDS = ("sb3", "random", "cma", "optuna")


@dataclass
class Trial:
    """One proposed action scored on one batch: the unit the budget counts as an evaluation."""

    index: int  # 1-based position in the search
    action: np.ndarray
    reward: float
    info: dict[str, float]


@dataclass
class SearchLog:
    """Every trial of a search, the best so far, and the budget (in evaluations) that ends it.

    `stop_when`, if given, ends the search early at the first trial it accepts (the planted
    benchmark stops at the first action inside the failure region); `stopped_at` is then
    that trial's index.
    """

    budget: int
    trials: list[Trial] = field(default_factory=list)
    best: Trial | None = None
    on_record: Callable[[Trial, Trial], None] | None = None
    stop_when: Callable[[Trial], bool] | None = None
    stopped_at: int | None = None

    @property
    def count(self) -> int:
        return len(self.trials)

    @property
    def exhausted(self) -> bool:
        return self.count >= self.budget or self.stopped_at is not None

    def record(self, action: np.ndarray, reward: float, info: dict[str, Any]) -> None:
        if self.exhausted:
            return  # an agent's extra steps past the budget are not part of the result
        trial = Trial(
            self.count + 1,
            np.asarray(action, dtype=np.float64).copy(),
            float(reward),
            {k: float(v) for k, v in info.items() if isinstance(v, int | float)},
        )
        self.trials.append(trial)
        if self.best is None or trial.reward > self.best.reward:
            self.best = trial
        if self.on_record is not None:
            self.on_record(trial, self.best)
        if self.stop_when is not None and self.stop_when(trial):
            self.stopped_at = trial.index

    def top(self, k: int) -> list[Trial]:
        """The k best trials by reward (ties: the earlier first)."""
        return sorted(self.trials, key=lambda t: (-t.reward, t.index))[:k]


class RecordingWrapper(gym.Wrapper):
    """Records every step's action, reward and info into a shared `SearchLog`."""

    def __init__(self, env: gym.Env, log: SearchLog) -> None:
        super().__init__(env)
        self.log = log

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.log.record(
            np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0), float(reward), info
        )
        return obs, reward, terminated, truncated, info


class BudgetCallback(BaseCallback):
    """Stops SB3 training once the search log holds the budget's evaluations."""

    def __init__(self, log: SearchLog) -> None:
        super().__init__()
        self.search_log = log

    def _on_step(self) -> bool:
        return not self.search_log.exhausted


def run_agent(
    agent_cfg: Any,
    make_env: Callable[[], gym.Env],
    log: SearchLog,
    *,
    seed: int,
    n_envs: int = 1,
    sb3_log_dir: str | None = None,
    callbacks: list[BaseCallback] | None = None,
) -> None:
    """Run one agent until `log` holds `log.budget` evaluations.

    Args:
        agent_cfg: the `agent` config group (`kind`, and `model` for SB3, `sigma0` / `popsize`
            for CMA-ES, `n_startup_trials` / `multivariate` for Optuna TPE).
        make_env: builds one recorded environment (called `n_envs` times for SB3).
        log: the shared search log; its budget ends the search.
        seed: seeds the agent and the environments.
        n_envs: parallel environments for SB3 agents (`DummyVecEnv`).
        sb3_log_dir: where SB3 writes its CSV and TensorBoard logs.
        callbacks: extra SB3 callbacks (e.g. the W&B one).
    """
    opts = to_dict(agent_cfg)
    kind = opts.get("kind")
    if kind == "sb3":
        _run_sb3(agent_cfg, make_env, log, seed, n_envs, sb3_log_dir, callbacks or [])
    elif kind == "random":
        _run_random(make_env(), log, seed)
    elif kind == "cma":
        _run_cma(make_env(), log, seed, float(opts.get("sigma0", 0.5)), opts.get("popsize"))
    elif kind == "optuna":
        _run_optuna(
            make_env(),
            log,
            seed,
            int(opts.get("n_startup_trials", 10)),
            bool(opts.get("multivariate", False)),
        )
    else:
        raise ConfigError(f"agent kind must be one of {list(AGENT_KINDS)}, got {kind!r}")


def _run_sb3(
    agent_cfg: Any,
    make_env: Callable[[], gym.Env],
    log: SearchLog,
    seed: int,
    n_envs: int,
    sb3_log_dir: str | None,
    callbacks: list[BaseCallback],
) -> None:
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.noise import NormalActionNoise

    search = search_options(to_dict(agent_cfg).get("search"))

    def make_search_env(index: int) -> Callable[[], gym.Env]:
        if not search:
            return make_env
        return lambda: SearchWrapper(
            make_env(), **search, seed=seed + index, exhausted=lambda: log.exhausted
        )

    venv = DummyVecEnv([make_search_env(i) for i in range(n_envs)])
    venv.seed(seed)
    extra: dict[str, Any] = {}
    sigma = to_dict(agent_cfg).get("action_noise_sigma")
    if sigma:  # off-policy deterministic agents (TD3) explore with Gaussian action noise
        dim = int(np.prod(venv.action_space.shape or (1,)))
        extra["action_noise"] = NormalActionNoise(np.zeros(dim), float(sigma) * np.ones(dim))
    model = build(agent_cfg.model)(env=venv, seed=seed, **extra)  # a partial: env comes last
    if sb3_log_dir is not None:
        model.set_logger(configure(sb3_log_dir, ["csv", "tensorboard"]))
    # total_timesteps is only an upper bound: the budget callback ends training exactly.
    model.learn(
        total_timesteps=10 * log.budget + 10_000,
        callback=CallbackList([BudgetCallback(log), *callbacks]),
        progress_bar=False,
    )
    model.logger.close()  # flush SB3's CSV / TensorBoard files before results are written
    venv.close()


def _run_random(env: gym.Env, log: SearchLog, seed: int) -> None:
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    while not log.exhausted:
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1.0, 1.0, env.action_space.shape))
        if terminated or truncated:
            env.reset()


def _run_cma(env: gym.Env, log: SearchLog, seed: int, sigma0: float, popsize: int | None) -> None:
    import cma

    dim = int(np.prod(env.action_space.shape or (1,)))
    options: dict[str, Any] = {"bounds": [-1.0, 1.0], "seed": seed + 1, "verbose": -9}
    if popsize:
        options["popsize"] = int(popsize)
    es = cma.CMAEvolutionStrategy(np.zeros(dim), sigma0, options)
    env.reset(seed=seed)
    while not log.exhausted:
        candidates = es.ask()
        losses = []
        for x in candidates:
            if log.exhausted:
                break
            _, reward, terminated, truncated, _ = env.step(np.asarray(x))
            losses.append(-float(reward))  # CMA-ES minimizes
            if terminated or truncated:
                env.reset()
        if len(losses) == len(candidates):
            es.tell(candidates, losses)


def _run_optuna(
    env: gym.Env, log: SearchLog, seed: int, n_startup_trials: int, multivariate: bool
) -> None:
    import logging
    import warnings

    logging.getLogger("alembic").setLevel(logging.WARNING)  # Optuna's storage, unused here
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dim = int(np.prod(env.action_space.shape or (1,)))
    with warnings.catch_warnings():  # multivariate TPE is marked experimental in Optuna 2.x
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=n_startup_trials, multivariate=multivariate
        )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    env.reset(seed=seed)
    while not log.exhausted:
        trial = study.ask()
        action = np.array([trial.suggest_float(f"a{i}", -1.0, 1.0) for i in range(dim)])
        _, reward, terminated, truncated, _ = env.step(action)
        study.tell(trial, float(reward))
        if terminated or truncated:
            env.reset()


class ProgressBar:
    """A tqdm bar over the evaluation budget, showing the best reward and gap so far."""

    def __init__(self, log: SearchLog, desc: str, enabled: bool = True) -> None:
        self.bar = tqdm(total=log.budget, desc=desc, disable=None if enabled else True, leave=False)

    def __call__(self, trial: Trial, best: Trial) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            best_batch_reward=f"{best.reward:.3f}",
            best_batch_gap=f"{best.info.get('gap', 0):.3f}",
        )

    def close(self) -> None:
        self.bar.close()
