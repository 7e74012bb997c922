"""`qrl/QuantFailure-v0`: choose an input distribution and/or per-layer bit-widths; the reward is
how far the quantized student falls behind the teacher on a batch drawn from that choice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from torch import Tensor, nn

from qrl.data import ImageData
from qrl.envs.common import check_action, range_features, resolve_victim, torch_generator
from qrl.envs.failure_task import MODES, FailureTask, check_choices
from qrl.errors import ConfigError
from qrl.policies import DEFAULT_BITS_SET, DEFAULT_BUDGET, DEFAULT_CORRUPTIONS
from qrl.quant import QuantConfig
from qrl.scoring import is_valid, search_reward
from qrl.victim import Victim

__all__ = ["INFO_KEYS", "MODES", "OBS_STATS", "QuantFailureEnv"]

INFO_KEYS = ("acc_teacher", "acc_fp", "acc_q", "gap", "drop", "mean_bits", "valid")
# The statistics at the head of the observation (`drop` is in the info, not in the observation).
OBS_STATS = ("gap", "acc_teacher", "acc_fp", "acc_q", "mean_bits", "valid")


class QuantFailureEnv(gym.Env[np.ndarray, np.ndarray]):
    """Search for the input distribution / bit-widths under which a quantized network fails.

    ## Description
    The environment wraps a black-box teacher T, a full-precision student S and S's dynamic
    quantized copy S_q. Each step the agent proposes a policy's parameters; the environment
    draws a batch from the policy's input distribution, evaluates T, S and S_q on it in one
    batched pass, and pays the accuracy gap acc(T) - acc(S_q) (or acc(S) - acc(S_q) with
    `reference="student"`, which leaves out what the student already gets wrong in float).
    Drawing and scoring are a `FailureTask` (`env.task`), which held-out evaluation reuses.

    ## Action Space
    `Box(-1, 1, (k,), float32)`, by `mode`:
    - `input`: the parameters of an `InputDistribution` (corruption strengths, class mixture);
      zero is the data's own distribution.
    - `bits`: one value per quantized layer, decoded by `BitsDecoder` into bit-widths from
      `bits_set` under the `bits_budget` average (see `qrl.policies.bits`).
    - `joint`: the input parameters followed by the per-layer values.
    Finite values outside [-1, 1] are clipped; NaN or infinite values raise
    `qrl.errors.ActionError` (a `ValueError`).

    ## Observation Space
    `Box(-1, 1, (6 + k + L,), float32)`: the last step's gap, teacher, student and quantized
    accuracies, normalized mean bits (b - 2) / 6 and validity flag; the last action (k); and
    for each of the L quantized layers the batch mean of tanh(log1p(activation range) / 3).

    ## Rewards
    gap - penalty * max(0, validity_floor - acc_teacher), where gap = acc(reference) - acc(S_q)
    and the reference is the teacher (default) or the full-precision student: the gap pays, but
    a distribution on which the teacher itself falls below the validity floor (destroyed
    images) costs more than it can earn.

    ## Info
    At reset and every step, floats on the last batch (`INFO_KEYS`): `acc_teacher`, `acc_fp`,
    `acc_q`; `gap` (to the reference, as rewarded); `drop` = acc_fp - acc_q, what quantization
    alone causes; `mean_bits`; `valid` (1.0 when acc_teacher >= validity_floor).

    ## Starting State
    The statistics of a batch drawn under the all-zero action (the data's own distribution,
    budget-uniform bits).

    ## Episode End
    Never terminates; truncated after `max_episode_steps` (8 at registration).

    ## Arguments
    `victim` or `teacher`/`student`/`data` (default: the cached digits victim), `quant`
    (preset name or `QuantConfig`, default `int4_dynamic`), `mode`, `corruptions`,
    `class_mix`, `bits_set`, `bits_budget`, `batch_size` (256), `validity_floor` (0.9),
    `penalty` (2.0), `split` (the data split batches are drawn from, default `train`),
    `reference` (`teacher` or `student`: whose accuracy the gap is measured from).

    ## Version History
    - v0: initial version (`drop` joined the info later; observations and rewards unchanged).
    """

    metadata = {"render_modes": []}  # noqa: RUF012 (Gymnasium declares it per instance)

    def __init__(
        self,
        victim: Victim | None = None,
        *,
        teacher: nn.Module | None = None,
        student: nn.Module | None = None,
        data: ImageData | tuple[Tensor, Tensor] | None = None,
        quant: str | QuantConfig | Any = "int4_dynamic",
        mode: str = "input",
        corruptions: Sequence[str] = DEFAULT_CORRUPTIONS,
        class_mix: bool = True,
        bits_set: Sequence[int] = DEFAULT_BITS_SET,
        bits_budget: float = DEFAULT_BUDGET,
        batch_size: int = 256,
        validity_floor: float = 0.9,
        penalty: float = 2.0,
        split: str = "train",
        reference: str = "teacher",
    ) -> None:
        if batch_size < 1 or not 0.0 <= validity_floor <= 1.0 or penalty < 0:
            raise ConfigError(
                "batch_size >= 1, validity_floor in [0, 1] and penalty >= 0 are required"
            )
        check_choices(mode, split, reference)  # before a default victim is trained
        self.victim = resolve_victim(victim, teacher, student, data, quant)
        self.task = FailureTask(
            self.victim, mode, corruptions, class_mix, bits_set, bits_budget, split, reference
        )
        self.batch_size = batch_size
        self.validity_floor, self.penalty = validity_floor, penalty
        self.action_space = self.task.action_space
        self._action_dim = self.task.action_space.shape[0]
        obs_dim = len(OBS_STATS) + self._action_dim + self.task.num_layers
        self.observation_space = spaces.Box(-1.0, 1.0, (obs_dim,), np.float32)
        self._last_action = np.zeros(self._action_dim, dtype=np.float64)
        self._last_info: dict[str, float] = dict.fromkeys(INFO_KEYS, 0.0)
        self._last_ranges = np.zeros(self.task.num_layers, dtype=np.float32)

    # --- Gymnasium API ------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, float]]:
        super().reset(seed=seed)
        self._last_action = np.zeros(self._action_dim, dtype=np.float64)
        self._evaluate(self._last_action)
        return self._get_obs(), self._get_info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, float]]:
        a = check_action(action, self.action_space)
        self._last_action = a
        self._evaluate(a)
        info = self._get_info()
        reward = search_reward(info["gap"], info["acc_teacher"], self.validity_floor, self.penalty)
        return self._get_obs(), float(reward), False, False, info

    # --- helpers: drawing and scoring are the task's ------------------------------------------

    def _evaluate(self, action: np.ndarray) -> None:
        x, y = self.task.draw(action, self.batch_size, torch_generator(self.np_random))
        m = self.task.measure(action, x, y)
        outcome = m.outcome
        self._last_info = {
            "acc_teacher": outcome.acc_teacher,
            "acc_fp": outcome.acc_fp,
            "acc_q": outcome.acc_q,
            "gap": outcome.gap(self.task.reference),
            "drop": outcome.drop,
            "mean_bits": m.mean_bits,
            "valid": float(is_valid(outcome.acc_teacher, self.validity_floor)),
        }
        self._last_ranges = range_features(self.victim.quantized, len(x)).mean(axis=0)

    def _get_obs(self) -> np.ndarray:
        info = self._last_info
        stats = [(info[k] - 2.0) / 6.0 if k == "mean_bits" else info[k] for k in OBS_STATS]
        obs = np.concatenate([stats, self._last_action, self._last_ranges]).astype(np.float32)
        return np.clip(obs, -1.0, 1.0)

    def _get_info(self) -> dict[str, float]:
        return dict(self._last_info)
