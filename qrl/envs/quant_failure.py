"""`qrl/QuantFailure-v0`: choose an input distribution and/or per-layer bit-widths; the reward is
how far the quantized student falls behind the teacher on a batch drawn from that choice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from qrl.data import ImageData
from qrl.envs.common import check_action, range_features, resolve_victim, torch_generator
from qrl.errors import ConfigError
from qrl.policies import DEFAULT_BITS_SET, DEFAULT_BUDGET, DEFAULT_CORRUPTIONS, BitsDecoder
from qrl.policies.input import InputDistribution, class_prior
from qrl.quant import QuantConfig, layer_names, using_bits
from qrl.victim import Victim

MODES = ("input", "bits", "joint")
INFO_KEYS = ("acc_teacher", "acc_fp", "acc_q", "gap", "mean_bits", "valid")


class QuantFailureEnv(gym.Env[np.ndarray, np.ndarray]):
    """Search for the input distribution / bit-widths under which a quantized network fails.

    ## Description
    The environment wraps a black-box teacher T, a full-precision student S and S's dynamic
    quantized copy S_q. Each step the agent proposes a policy's parameters; the environment
    draws a batch from the policy's input distribution, evaluates T, S and S_q on it in one
    batched pass, and pays the accuracy gap acc(T) - acc(S_q) (or acc(S) - acc(S_q) with
    `reference="student"`, which leaves out what the student already gets wrong in float).

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
    a distribution on
    which the teacher itself falls below the validity floor (destroyed images) costs more than
    it can earn.

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
    - v0: initial version.
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
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if batch_size < 1 or not 0.0 <= validity_floor <= 1.0 or penalty < 0:
            raise ConfigError(
                "batch_size >= 1, validity_floor in [0, 1] and penalty >= 0 are required"
            )
        if split not in ("train", "val", "test"):
            raise ConfigError(f"split must be train, val or test, got {split!r}")
        if reference not in ("teacher", "student"):
            raise ConfigError(f"reference must be teacher or student, got {reference!r}")
        self.reference = reference
        self.victim = resolve_victim(victim, teacher, student, data, quant)
        self.mode, self.batch_size = mode, batch_size
        self.validity_floor, self.penalty = validity_floor, penalty
        self.pool = getattr(self.victim.data, split)
        data_ = self.victim.data
        self.inputs = (
            InputDistribution(data_.num_classes, data_.channels, corruptions, class_mix)
            if mode in ("input", "joint")
            else None
        )
        self.num_layers = self._num_layers()
        self.decoder = (
            BitsDecoder(self.num_layers, bits_set, bits_budget)
            if mode in ("bits", "joint")
            else None
        )
        k_in = self.inputs.dim if self.inputs else 0
        k_bits = self.num_layers if self.decoder else 0
        self._action_dim = k_in + k_bits
        self.action_space = spaces.Box(-1.0, 1.0, (self._action_dim,), np.float32)
        obs_dim = len(INFO_KEYS) + self._action_dim + self.num_layers
        self.observation_space = spaces.Box(-1.0, 1.0, (obs_dim,), np.float32)
        self._last_action = np.zeros(self._action_dim, dtype=np.float64)
        self._last_info: dict[str, float] = dict.fromkeys(INFO_KEYS, 0.0)
        self._last_ranges = np.zeros(self.num_layers, dtype=np.float32)

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
        shortfall = max(0.0, self.validity_floor - info["acc_teacher"])
        reward = info["gap"] - self.penalty * shortfall
        return self._get_obs(), float(reward), False, False, info

    # --- policy decoding and evaluation ---------------------------------------------------------

    def split_action(self, action: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(input-distribution part, per-layer bits) of an action; None where unused."""
        a = np.asarray(action, dtype=np.float64)
        k_in = self.inputs.dim if self.inputs else 0
        input_part = a[:k_in] if self.inputs else None
        bits = self.decoder.decode(a[k_in:]) if self.decoder else None
        return input_part, bits

    def describe(self, action: np.ndarray) -> str:
        """The policy an action stands for, in words."""
        input_part, bits = self.split_action(action)
        parts = []
        if input_part is not None and self.inputs is not None:
            prior = class_prior(self.pool, self.victim.data.num_classes)
            parts.append(self.inputs.describe(input_part, prior=prior))
        if bits is not None:
            parts.append("bits " + "/".join(str(int(b)) for b in bits))
        return "; ".join(parts)

    def draw(self, action: np.ndarray, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A batch of `n` inputs and labels from the action's input distribution."""
        x, y, _ = self.draw_indexed(action, n, generator)
        return x, y

    def draw_indexed(
        self, action: np.ndarray, n: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`draw`, plus the index in the pool of the image behind each input."""
        input_part, _ = self.split_action(action)
        if input_part is None or self.inputs is None:
            idx = torch.randint(0, len(self.pool), (n,), generator=generator)
            return self.pool.x[idx], self.pool.y[idx], idx
        idx = self.inputs.choose(self.pool, n, input_part, generator)
        x = self.inputs.transform(self.pool.x[idx], input_part, generator)
        return x, self.pool.y[idx], idx

    @torch.no_grad()
    def measure(self, action: np.ndarray, x: Tensor, y: Tensor) -> dict[str, Any]:
        """Per-input correctness of T, S and S_q on (x, y) under the action's bit-widths."""
        _, bits = self.split_action(action)
        q = self.victim.qstudent
        if isinstance(q, nn.Module):
            per_layer = [int(b) for b in bits] if bits is not None else self.victim.quant.act_bits
            with using_bits(q, per_layer):
                t_logits, fp_logits, q_logits = self.victim.logits(x)
        else:  # a real int8 backend: its bits are fixed
            t_logits, fp_logits, q_logits = self.victim.logits(x)
        mean_bits = float(np.mean(bits)) if bits is not None else float(self.victim.quant.act_bits)
        return {
            "teacher_right": t_logits.argmax(1) == y,
            "fp_right": fp_logits.argmax(1) == y,
            "q_right": q_logits.argmax(1) == y,
            "q_pred": q_logits.argmax(1),
            "mean_bits": mean_bits,
        }

    def _evaluate(self, action: np.ndarray) -> None:
        gen = torch_generator(self.np_random)
        x, y = self.draw(action, self.batch_size, gen)
        m = self.measure(action, x, y)
        acc_t = float(m["teacher_right"].float().mean())
        acc_fp = float(m["fp_right"].float().mean())
        acc_q = float(m["q_right"].float().mean())
        self._last_info = {
            "acc_teacher": acc_t,
            "acc_fp": acc_fp,
            "acc_q": acc_q,
            "gap": (acc_t if self.reference == "teacher" else acc_fp) - acc_q,
            "mean_bits": m["mean_bits"],
            "valid": float(acc_t >= self.validity_floor),
        }
        self._last_ranges = range_features(self.victim.qstudent, len(x)).mean(axis=0)

    def _num_layers(self) -> int:
        q = self.victim.qstudent
        if isinstance(q, nn.Module):
            return len(layer_names(q))
        if self.mode != "input":
            raise ConfigError(
                f"mode={self.mode} sets bit-widths, which needs the simulated quantizer "
                f"(quant backend fake), not the real {self.victim.quant.backend} kernels"
            )
        return 0

    def _get_obs(self) -> np.ndarray:
        info = self._last_info
        stats = [
            info["gap"],
            info["acc_teacher"],
            info["acc_fp"],
            info["acc_q"],
            (info["mean_bits"] - 2.0) / 6.0,
            info["valid"],
        ]
        obs = np.concatenate([stats, self._last_action, self._last_ranges]).astype(np.float32)
        return np.clip(obs, -1.0, 1.0)

    def _get_info(self) -> dict[str, float]:
        return dict(self._last_info)
