"""`qrl.search_wrapper`: the warm-up, the running best and relative steps an SB3 agent sees."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from omegaconf import OmegaConf

from qrl.agents import RecordingWrapper, SearchLog, run_agent
from qrl.errors import ConfigError
from qrl.search_wrapper import SearchWrapper, search_options

DIM = 3
TARGET = np.array([0.6, -0.4, 0.2])


class Bowl(gym.Env[np.ndarray, np.ndarray]):
    """Reward 1 - |a - TARGET|_1 / 3; observation: the last action; truncated after 4 steps."""

    def __init__(self) -> None:
        self.action_space = spaces.Box(-1.0, 1.0, (DIM,), np.float32)
        self.observation_space = spaces.Box(-1.0, 1.0, (DIM,), np.float32)
        self.seen: list[np.ndarray] = []
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.steps = 0
        return np.zeros(DIM, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float64)
        self.seen.append(a.copy())
        self.steps += 1
        reward = 1.0 - float(np.abs(a - TARGET).sum()) / 3
        return a.astype(np.float32), reward, False, self.steps >= 4, {}


def test_the_warmup_is_a_sobol_start_at_the_first_reset_only() -> None:
    env = Bowl()
    wrapper = SearchWrapper(env, warmup=6, seed=1)
    wrapper.reset()
    assert len(env.seen) == 6
    points = np.array(env.seen)
    assert np.all(np.abs(points) <= 1) and len({tuple(p) for p in points}) == 6
    # Space-filling: every coordinate has points on both sides of the centre.
    assert np.all((points > 0).any(axis=0)) and np.all((points < 0).any(axis=0))
    wrapper.reset()
    assert len(env.seen) == 6  # no second warm-up
    rewards = [1 - np.abs(p - TARGET).sum() / 3 for p in points]
    assert np.allclose(wrapper.best_action, points[int(np.argmax(rewards))])


def test_the_warmup_stops_when_the_budget_is_spent() -> None:
    env = Bowl()
    SearchWrapper(env, warmup=16, exhausted=lambda: len(env.seen) >= 5).reset()
    assert len(env.seen) == 5


def test_relative_steps_start_from_the_running_best() -> None:
    env = Bowl()
    wrapper = SearchWrapper(env, relative_step=0.5)
    wrapper.reset()
    wrapper.step(np.array([1.0, 0.0, 0.0]))  # from the identity: (0.5, 0, 0), the best so far
    assert np.allclose(env.seen[-1], [0.5, 0.0, 0.0])
    wrapper.step(np.array([0.2, -0.8, 0.4]))  # from (0.5, 0, 0): TARGET, the new best
    assert np.allclose(env.seen[-1], TARGET)
    wrapper.step(np.array([1.0, 1.0, 1.0]))  # TARGET + 0.5, clipped: worse, the best stays
    assert np.allclose(env.seen[-1], [1.0, 0.1, 0.7])
    assert np.allclose(wrapper.best_action, TARGET)


def test_the_history_observation_carries_the_best_action_and_reward() -> None:
    env = Bowl()
    wrapper = SearchWrapper(env, history=True)
    obs, _ = wrapper.reset()
    assert wrapper.observation_space.shape == (2 * DIM + 1,)
    assert np.allclose(obs[DIM:], 0.0)  # nothing evaluated yet
    obs, reward, *_ = wrapper.step(TARGET)
    assert np.allclose(obs[DIM : 2 * DIM], TARGET) and obs[-1] == pytest.approx(reward)
    assert wrapper.observation_space.contains(obs)


def test_search_options_are_checked() -> None:
    assert search_options(None) == {}
    assert search_options({"warmup": 8}) == {"warmup": 8, "relative_step": None, "history": False}
    with pytest.raises(ConfigError, match="unknown"):
        search_options({"warm_up": 8})
    with pytest.raises(ConfigError, match="warmup"):
        search_options({"warmup": -1})
    with pytest.raises(ConfigError, match="relative_step"):
        search_options({"relative_step": 0})


def test_an_sb3_agent_runs_through_the_wrapper_within_the_budget() -> None:
    log = SearchLog(40)
    agent = OmegaConf.create(
        {
            "name": "ppo",
            "kind": "sb3",
            "search": {"warmup": 8, "relative_step": 0.3, "history": True},
            "model": {
                "_target_": "stable_baselines3.PPO",
                "_partial_": True,
                "policy": "MlpPolicy",
                "n_steps": 8,
                "batch_size": 8,
                "n_epochs": 1,
                "device": "cpu",
            },
        }
    )
    envs: list[Bowl] = []

    def make_env() -> gym.Env:
        envs.append(Bowl())
        return RecordingWrapper(envs[-1], log)

    run_agent(agent, make_env, log, seed=0)
    assert log.count == 40
    warm = np.array([t.action for t in log.trials[:8]])
    assert np.allclose(warm, np.array(envs[0].seen[:8]))  # the warm-up came first, recorded
    later = np.array([t.action for t in log.trials[8:]])
    assert np.all(np.abs(later) <= 1)
