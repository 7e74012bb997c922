"""`qrl/QuantBits-v0`: the paper's per-input contextual task. The observation describes one
input; the action gives that input's per-layer bit-widths under the budget; the reward says
whether the quantized student then fails (mode `detrimental`) or holds (mode `robust`).

`QuantBitsVecEnv` is the same task as a Stable-Baselines3 `VecEnv` whose N slots are scored
in one batched forward pass, every input at its own bit-widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn
from torch import Tensor, nn

from qrl.data import ImageData
from qrl.devices import module_device
from qrl.envs.common import check_action, range_features, resolve_victim, torch_generator
from qrl.errors import ConfigError
from qrl.policies import DEFAULT_BITS_SET, DEFAULT_BUDGET, BitsDecoder
from qrl.quant import QuantConfig, float_path, layer_names, using_bits
from qrl.scoring import Outcome, correct, failed
from qrl.victim import Victim

REWARD_MODES = ("detrimental", "robust")
INFO_KEYS = ("acc_teacher", "acc_fp", "acc_q", "gap", "drop", "mean_bits")
OBS_SIDE = 8  # images are average-pooled to at most 8x8 for the observation


def observation_side(image_size: tuple[int, int]) -> tuple[int, int]:
    """The pooled image size in a QuantBits observation: at most 8x8."""
    return (min(OBS_SIDE, image_size[0]), min(OBS_SIDE, image_size[1]))


@torch.no_grad()
def bits_observation(
    quantized: nn.Module, x: Tensor, side: tuple[int, int]
) -> tuple[np.ndarray, Tensor]:
    """What a bit-width policy sees of a batch before it chooses bits, and the float logits.

    The observation (B, C*h*w + K + L) is the image average-pooled to `side`, the
    full-precision network's class probabilities, and its per-layer activation ranges on this
    input (squashed into [0, 1)), all from one float pass of the quantized copy.
    """
    with float_path(quantized):  # quantization off, ranges recorded
        fp_logits = quantized(
            x.to(module_device(quantized))
        ).cpu()  # the batch to the model's device
        ranges = range_features(quantized, len(x))
    pooled = F.adaptive_avg_pool2d(x, side).flatten(1)  # (B, C*h*w)
    obs = torch.cat([pooled, fp_logits.softmax(dim=1), torch.from_numpy(ranges)], dim=1)
    return obs.clamp(0.0, 1.0).numpy().astype(np.float32), fp_logits


class BitsTask:
    """The engine both forms share: draw inputs, describe them, score their bit-widths.

    The reference is always the teacher: a failure is T right and S_q wrong, and the `gap`
    the envs report is the teacher gap (`qrl.scoring.Outcome.gap("teacher")`).

    Args:
        victim: teacher, student and quantized student (the fake quantizer: bits vary per input).
        reward: `detrimental` (1 when S_q is wrong where T is right) or `robust` (1 when S_q is
            right).
        bits_set, bits_budget: the bit-width decoder's allowed set and average budget.
        split: the data split inputs are drawn from.
    """

    def __init__(
        self,
        victim: Victim,
        reward: str = "detrimental",
        bits_set: Sequence[int] = DEFAULT_BITS_SET,
        bits_budget: float = DEFAULT_BUDGET,
        split: str = "train",
    ) -> None:
        if reward not in REWARD_MODES:
            raise ConfigError(f"reward must be one of {list(REWARD_MODES)}, got {reward!r}")
        if not isinstance(victim.quantized, nn.Module):
            raise ConfigError(
                "QuantBits needs per-input bit-widths, which only the simulated quantizer "
                f"(quant backend fake) has; got backend {victim.quant.backend}"
            )
        if split not in ("train", "val", "test"):
            raise ConfigError(f"split must be train, val or test, got {split!r}")
        if victim.quant.act_granularity != "per_sample":
            raise ConfigError(
                "QuantBits scores a batch of inputs in one pass, each at its own bits: that keeps "
                "them independent only with act_granularity=per_sample, got "
                f"{victim.quant.act_granularity}"
            )
        self.victim, self.reward_mode = victim, reward
        self.quantized: nn.Module = victim.quantized
        self.pool = getattr(victim.data, split)
        self.num_layers = len(layer_names(self.quantized))
        self.decoder = BitsDecoder(self.num_layers, bits_set, bits_budget)
        c, (h, w) = victim.data.channels, victim.data.image_size
        self.side = observation_side((h, w))
        self.obs_dim = c * self.side[0] * self.side[1] + victim.data.num_classes + self.num_layers
        self.observation_space = spaces.Box(0.0, 1.0, (self.obs_dim,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (self.num_layers,), np.float32)

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """`n` inputs and labels drawn uniformly from the split."""
        idx = torch.randint(0, len(self.pool), (n,), generator=generator)
        return self.pool.rows(idx), self.pool.y[idx]

    @torch.no_grad()
    def observe(self, x: Tensor, y: Tensor) -> tuple[np.ndarray, Tensor, Tensor]:
        """Observations of a batch (before any bits are chosen) and T's and S's correctness.

        The observation is the image average-pooled to at most 8x8, the full-precision
        student's class probabilities, and its per-layer activation ranges (squashed).
        """
        obs, fp_logits = bits_observation(self.quantized, x, self.side)
        teacher = self.victim.teacher
        return obs, correct(teacher(x.to(module_device(teacher))).cpu(), y), correct(fp_logits, y)

    @torch.no_grad()
    def score(
        self, x: Tensor, y: Tensor, actions: np.ndarray, teacher_right: Tensor
    ) -> tuple[np.ndarray, Tensor, np.ndarray]:
        """Rewards (B,), S_q's correctness and the decoded bits (B, L), in one forward pass."""
        q_logits, bits = self._quantized_logits(x, actions)
        q_right = correct(q_logits, y)
        return self._rewards(teacher_right, q_right), q_right, bits

    @torch.no_grad()
    def outcome(
        self, x: Tensor, y: Tensor, actions: np.ndarray, teacher_right: Tensor, fp_right: Tensor
    ) -> tuple[np.ndarray, Outcome, np.ndarray]:
        """`score`, with the whole `Outcome` (T, S and S_q per input) in place of S_q's column."""
        q_logits, bits = self._quantized_logits(x, actions)
        outcome = Outcome(teacher_right, fp_right, correct(q_logits, y), q_logits.argmax(1))
        return self._rewards(teacher_right, outcome.q_right), outcome, bits

    def _quantized_logits(self, x: Tensor, actions: np.ndarray) -> tuple[Tensor, np.ndarray]:
        bits = self.decoder.decode(actions)  # (B, L): every input at its own bit-widths
        with using_bits(self.quantized, torch.from_numpy(bits)):
            return self.quantized(x.to(module_device(self.quantized))).cpu(), bits

    def _rewards(self, teacher_right: Tensor, q_right: Tensor) -> np.ndarray:
        pays = failed(teacher_right, q_right) if self.reward_mode == "detrimental" else q_right
        return pays.float().numpy().astype(np.float32)


def _infos(outcome: Outcome, bits: np.ndarray) -> list[dict[str, float]]:
    """One info per input: its accuracies (0.0 or 1.0), teacher gap, drop and mean bits."""
    columns = {
        "acc_teacher": outcome.teacher_right.float(),
        "acc_fp": outcome.fp_right.float(),
        "acc_q": outcome.q_right.float(),
        "gap": outcome.gap_per_input("teacher"),
        "drop": outcome.gap_per_input("student"),  # the gap to S itself is the drop
        "mean_bits": torch.from_numpy(bits.mean(axis=1)),
    }
    rows = zip(*(column.tolist() for column in columns.values()), strict=True)
    return [dict(zip(columns, map(float, row), strict=True)) for row in rows]


def _victim_from(kwargs: dict[str, Any]) -> Victim:
    return resolve_victim(
        kwargs.pop("victim", None),
        kwargs.pop("teacher", None),
        kwargs.pop("student", None),
        kwargs.pop("data", None),
        kwargs.pop("quant", "int4_dynamic"),
    )


class QuantBitsEnv(gym.Env[np.ndarray, np.ndarray]):
    """Per-input dynamic bit-widths: one input per step (a contextual bandit).

    ## Description
    Each step shows the agent one input, drawn from the data; the agent answers with that
    input's per-layer activation bit-widths; the quantized student classifies the input at
    those bits. This is the bit-width-policy half of a network-policy pair (Frank & Ardis).

    ## Action Space
    `Box(-1, 1, (L,), float32)`, one value per quantized layer, decoded by `BitsDecoder` into
    bit-widths from `bits_set` that spend the `bits_budget` average (see `qrl.policies.bits`).
    Finite values outside [-1, 1] are clipped; NaN or infinite values raise
    `qrl.errors.ActionError` (a `ValueError`).

    ## Observation Space
    `Box(0, 1, (C*8*8 + K + L,), float32)`: the input average-pooled to at most 8x8 pixels,
    the full-precision student's K class probabilities, and its L per-layer activation ranges
    on this input, tanh(log1p(range) / 3).

    ## Rewards
    `detrimental`: 1 when the quantized student is wrong where the teacher is right, else 0.
    `robust`: 1 when the quantized student is right, else 0.

    ## Info
    At reset and every step, floats for the input just scored (`INFO_KEYS`): `acc_teacher`,
    `acc_fp`, `acc_q` (each 0.0 or 1.0); `gap`, the teacher gap acc_teacher - acc_q (this
    task's reference is always the teacher); `drop` = acc_fp - acc_q, what quantization alone
    causes; `mean_bits`, the input's average bit-width.

    ## Starting State
    A first input drawn from the data split; its `info` reports S_q at the budget-uniform
    bit-widths of the all-zero action.

    ## Episode End
    Never terminates; truncated after `max_episode_steps` (32 at registration).

    ## Arguments
    `victim` or `teacher`/`student`/`data` (default: the cached digits victim), `quant`
    (default `int4_dynamic`; the backend must be `fake`), `reward` (`detrimental`),
    `bits_set` ({2,3,4,5,6,8}), `bits_budget` (4.0), `split` (`train`).

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
        reward: str = "detrimental",
        bits_set: Sequence[int] = DEFAULT_BITS_SET,
        bits_budget: float = DEFAULT_BUDGET,
        split: str = "train",
    ) -> None:
        victim_ = resolve_victim(victim, teacher, student, data, quant)
        self.task = BitsTask(victim_, reward, bits_set, bits_budget, split)
        self.observation_space = self.task.observation_space
        self.action_space = self.task.action_space
        self._current: tuple[Tensor, Tensor, np.ndarray, Tensor, Tensor] | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, float]]:
        super().reset(seed=seed)
        obs = self._next_input()
        assert self._current is not None
        x, y, _, teacher_right, fp_right = self._current
        zero = np.zeros((1, self.task.num_layers))
        _, outcome, bits = self.task.outcome(x, y, zero, teacher_right, fp_right)
        return obs, _infos(outcome, bits)[0]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, float]]:
        if self._current is None:
            raise RuntimeError("call reset() before step()")
        a = check_action(action, self.action_space)
        x, y, _, teacher_right, fp_right = self._current
        rewards, outcome, bits = self.task.outcome(x, y, a[None], teacher_right, fp_right)
        info = _infos(outcome, bits)[0]
        return self._next_input(), float(rewards[0]), False, False, info

    def _next_input(self) -> np.ndarray:
        x, y = self.task.draw(1, torch_generator(self.np_random))
        obs, teacher_right, fp_right = self.task.observe(x, y)
        self._current = (x, y, obs, teacher_right, fp_right)
        return obs[0]


class QuantBitsVecEnv(VecEnv):
    """`QuantBits` as an SB3 `VecEnv`: N inputs per step, scored in one batched forward pass.

    Each slot behaves like a `QuantBitsEnv` truncated after `max_episode_steps` (the same
    `INFO_KEYS` in every info); a truncated slot reports `terminal_observation` and
    `TimeLimit.truncated` in its info and continues with a fresh input. All randomness comes
    from one generator, seeded by `seed`.

    Args:
        num_envs: inputs per step.
        max_episode_steps: steps per episode of each slot.
        seed: seed of the input stream (`seed()` sets it for the next reset).
        **kwargs: the arguments of `QuantBitsEnv`.
    """

    def __init__(
        self,
        num_envs: int = 64,
        max_episode_steps: int = 32,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.render_mode = None
        self.task = BitsTask(_victim_from(kwargs), **kwargs)
        super().__init__(num_envs, self.task.observation_space, self.task.action_space)
        self.max_episode_steps = max_episode_steps
        self.rng = np.random.default_rng(seed)
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._actions: np.ndarray | None = None
        self._x = self._y = self._teacher_right = self._fp_right = torch.empty(0)

    def reset(self) -> np.ndarray:
        if self._seeds[0] is not None:
            self.rng = np.random.default_rng(self._seeds[0])
        self._reset_seeds()
        self._reset_options()
        self._steps[:] = 0
        obs = self._draw()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None or len(self._x) == 0:
            raise RuntimeError("call reset() and step_async() before step_wait()")
        actions = np.stack([check_action(a, self.action_space) for a in self._actions])
        rewards, outcome, bits = self.task.outcome(
            self._x, self._y, actions, self._teacher_right, self._fp_right
        )
        infos: list[dict[str, Any]] = list(_infos(outcome, bits))
        self._steps += 1
        obs = self._draw()
        dones = self._steps >= self.max_episode_steps
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = obs[i]
            infos[i]["TimeLimit.truncated"] = True
            self._steps[i] = 0
        self._actions = None
        return obs, rewards, dones, infos

    def _draw(self) -> np.ndarray:
        self._x, self._y = self.task.draw(self.num_envs, torch_generator(self.rng))
        obs, self._teacher_right, self._fp_right = self.task.observe(self._x, self._y)
        return obs

    def close(self) -> None:
        pass

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        method = getattr(self, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False for _ in self._indices(indices)]
