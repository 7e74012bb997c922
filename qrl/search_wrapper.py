"""What an SB3 agent sees of a search: a space-filling start, a running best, steps from it.

A search for a narrow failure region is a black-box optimization with a tiny budget, and an RL
agent that proposes absolute actions from a near-constant observation learns slowly there.
`SearchWrapper` gives the agent what the benchmark's shape suggests (each part optional, set in
the agent preset's `search` node, `qrl.agents.run_agent`):

- `warmup`: the first evaluations are a scrambled Sobol sequence over the action cube, run
  before the agent's first step (they count in the budget like any other): a space-filling
  start that finds the approach to a region more evenly than the agent's initial Gaussian.
- `history`: the observation also carries the running best action and its reward, so the
  policy can condition on where the search stands.
- `relative_step`: the agent's action a is a step from the running best: the environment
  evaluates clip(best + relative_step * a, -1, 1). The policy's Gaussian is then a local search
  around the best, and learning shapes its steps; the best starts at the identity action.

The agent stays an SB3 agent: this is an environment wrapper, and SB3 trains on what it sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from scipy.stats import qmc

from qrl.errors import ConfigError

SEARCH_KEYS = ("warmup", "relative_step", "history")


def search_options(node: Any) -> dict[str, Any]:
    """The `search` node of an agent preset, checked: {} when absent."""
    if not node:
        return {}
    options = dict(node)
    unknown = sorted(set(options) - set(SEARCH_KEYS))
    if unknown:
        raise ConfigError(f"agent search options are {list(SEARCH_KEYS)}; unknown: {unknown}")
    warmup = options.get("warmup", 0) or 0
    step = options.get("relative_step")
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"search.warmup must be an integer >= 0, got {warmup!r}")
    if step is not None and not (isinstance(step, int | float) and 0 < step <= 2):
        raise ConfigError(f"search.relative_step must be null or in (0, 2], got {step!r}")
    return {"warmup": warmup, "relative_step": step, "history": bool(options.get("history"))}


class SearchWrapper(gym.Wrapper):
    """A search environment seen through a warm-up, a running best and relative steps.

    Args:
        env: a `qrl/QuantFailure-v0` environment (already recorded: every evaluation the wrapper
            makes, the warm-up's too, goes through it).
        warmup: Sobol points evaluated at the first reset.
        relative_step: the step scale from the running best (None: absolute actions).
        history: append the running best action and reward to the observation.
        seed: scrambles the Sobol sequence.
        exhausted: whether the search's budget is spent (the warm-up stops there).
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        warmup: int = 0,
        relative_step: float | None = None,
        history: bool = False,
        seed: int = 0,
        exhausted: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(env)
        box = env.action_space
        assert isinstance(box, spaces.Box)
        self.dim = int(np.prod(box.shape))
        self.warmup, self.relative_step, self.history = warmup, relative_step, history
        self.seed, self.exhausted = seed, exhausted
        self.best_action = np.zeros(self.dim)
        self.best_reward = -np.inf
        self._warmed = False
        if history:
            inner = env.observation_space
            assert isinstance(inner, spaces.Box)
            low = np.concatenate([inner.low, -np.ones(self.dim + 1)]).astype(np.float32)
            high = np.concatenate([inner.high, np.ones(self.dim + 1)]).astype(np.float32)
            self.observation_space = spaces.Box(low, high, dtype=np.float32)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        if not self._warmed:
            self._warmed = True
            if self.warmup:
                self._run_warmup()
                obs, info = self.env.reset()
        return self._observe(obs), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.float64).reshape(self.dim)
        if self.relative_step is not None:
            a = np.clip(self.best_action + self.relative_step * a, -1.0, 1.0)
        obs, reward, terminated, truncated, info = self.env.step(a)
        self._update(a, float(reward))
        return self._observe(obs), float(reward), terminated, truncated, info

    def _run_warmup(self) -> None:
        # Sobol sequences are balanced at powers of two: draw the next one and use the first
        # `warmup` points (scipy warns otherwise).
        sobol = qmc.Sobol(self.dim, scramble=True, seed=self.seed)
        points = 2 * sobol.random(1 << max(self.warmup - 1, 0).bit_length()) - 1
        for point in points[: self.warmup]:
            if self.exhausted():
                return
            _, reward, terminated, truncated, _ = self.env.step(point)
            self._update(point, float(reward))
            if terminated or truncated:
                self.env.reset()

    def _update(self, action: np.ndarray, reward: float) -> None:
        if reward > self.best_reward:
            self.best_action, self.best_reward = np.asarray(action, dtype=np.float64), reward

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        if not self.history:
            return obs
        best = self.best_reward if np.isfinite(self.best_reward) else 0.0
        extra = np.concatenate([self.best_action, [np.clip(best, -1.0, 1.0)]])
        return np.concatenate([obs, extra]).astype(np.float32)
