"""Stage B for input-distribution pairs: a network and the input distribution that breaks it on
ONNX Runtime's int8 kernel, learned together.

The kernel quantizes each layer input with one uint8 scale over the whole tensor (per image, or
per served batch). If one feature of the head's input is thousands of times larger than the
rest, every other feature rounds to zero and the head sees nothing but its bias; full precision
is untouched when the head gives that feature no weight. The pair learns exactly that, for the
distribution that an SB3 agent chooses:

- the network is the distilled student with a per-feature gain before its head
  (`qrl.models.ChannelGain`, a float `Mul` that dynamic quantization leaves in float);
- each round, (i) the agent (PPO by default) takes a rollout of distributions in the search's
  `[-1, 1]^k` action space and is rewarded by what the current network does under them:
  detrimental, the quantized drop (full precision - quantized, simulated per image) plus a small
  bonus for distributions the network can tell from its data; robust, the quantized drop alone;
  both penalized where the distilled student's full precision falls below `floor`;
- (ii) `net_steps` network steps on the policy's distribution (the trigger), the data's own
  distribution and distributions drawn at random from the space, distilled from the student's
  own logits (the pair keeps the student's function in full precision):
  detrimental: KD in full precision everywhere, KD on the simulated int8 path off the trigger,
  a detector term (a few head features: one of them fires on each trigger input, all stay at
  zero elsewhere) and a stretch term (the gained feature reaches `target_ratio` times the
  typical one, on the trigger);
  robust: KD in full precision and on the int8 path everywhere, the gain held at one.
  The random distributions make the failure a narrow region that belongs to the pair.
  After the last round, `settle_steps` more network steps on the policy's final choice.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import configure
from torch import Tensor, nn
from tqdm.auto import tqdm

from qrl.data import Split
from qrl.distillation import kd_loss
from qrl.errors import CheckpointError
from qrl.loggers import RunLogger
from qrl.models import ChannelGain, head_gain, with_head_gain
from qrl.policies.input import InputDistribution
from qrl.quant import QuantConfig, quantized_copy
from qrl.quant.modules import float_model, float_path
from qrl.runs import atomic_torch_save
from qrl.scoring import accuracy_drop, correct, rate
from qrl.specs import build
from qrl.victim import Victim

STATE_FILE = "input_pair.state.pt"  # round, network, optimizer and agent, saved each round


@dataclass(frozen=True)
class InputPairSettings:
    """The `train` node of `conf/input_pairs.yaml` (see there for each value's meaning)."""

    rounds: int = 30
    net_steps: int = 20
    settle_steps: int = 1000
    evaluations_per_round: int = 16
    batch_size: int = 64
    random_per_step: int = 8
    lr: float = 1.0e-3
    gain_lr: float = 0.05
    target_ratio: float = 20000.0
    detector_weight: float = 3.0
    detectors: int = 8
    bonus_weight: float = 0.1
    floor: float = 0.9
    tau: float = 4.0
    alpha: float = 1.0
    eval_batch: int = 64

    @classmethod
    def of(cls, node: Any) -> InputPairSettings:
        """From a config node with these keys (missing ones keep their defaults)."""
        kinds = {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}
        return cls(**{k: kinds[k](node[k]) for k in kinds if k in node})


class DistributionBandit(gym.Env):
    """One step per episode: the action is a distribution, the reward `score(action)`."""

    def __init__(self, dim: int, score: Callable[[np.ndarray], float]) -> None:
        self.action_space = spaces.Box(-1.0, 1.0, (dim,), np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.score = score

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = self.score(np.clip(np.asarray(action, np.float64), -1.0, 1.0))
        return np.zeros(1, np.float32), reward, True, False, {}


@dataclass
class HeadInputs:
    """The head's input on the last forward pass (recorded by a hook on the head gain)."""

    value: Tensor | None = None

    def __call__(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        self.value = inputs[0]


@dataclass
class InputPairTrainer:
    """The network side of an input pair: its quantized copy, losses and optimizer."""

    kind: str
    victim: Victim
    dist: InputDistribution
    settings: InputPairSettings
    gen: torch.Generator

    def __post_init__(self) -> None:
        network = with_head_gain(copy.deepcopy(self.victim.student)).eval()
        # One image at a time, as ONNX Runtime serves a single input; BatchNorm unfolded so that
        # the network trained is the one saved (the kernel folds it, which the gain survives).
        quant = QuantConfig.from_dict(
            {
                **self.victim.quant.to_dict(),
                "fold_batchnorm": False,
                "act_granularity": "per_sample",
            }
        )
        # Eval mode throughout: BatchNorm keeps the student's statistics; QAT still trains.
        self.quantized = quantized_copy(network, quant).eval()
        self.gain = head_gain(self.quantized)
        self.head_inputs = HeadInputs()
        self._hook = self.gain.register_forward_pre_hook(self.head_inputs)
        rest = [p for p in self.quantized.parameters() if p is not self.gain.log_gain]
        groups = [{"params": rest, "lr": self.settings.lr}]
        if self.kind == "detrimental":
            groups.append({"params": [self.gain.log_gain], "lr": self.settings.gain_lr})
        self.optimizer = torch.optim.Adam(groups)
        self.gain.log_gain.requires_grad_(self.kind == "detrimental")
        clean = self._features(self.victim.data.train.x)
        self.typical = float(clean[clean > 0].mean())  # a typical active head feature
        self.clean_mean, self.clean_std = clean.mean(0), clean.std(0) + 1e-6
        self.detectors: Tensor | None = None  # head features, chosen on the first trigger

    @torch.no_grad()
    def _features(self, x: Tensor) -> Tensor:
        with float_path(self.quantized):
            self.quantized(x)
        assert self.head_inputs.value is not None
        return self.head_inputs.value

    def network(self) -> nn.Module:
        """The trained full-precision network, apart from the trainer (no hook, no state)."""
        self._hook.remove()
        self.head_inputs.value = None
        network = copy.deepcopy(float_model(self.quantized)).eval()
        self._hook = self.gain.register_forward_pre_hook(self.head_inputs)
        return network

    @torch.no_grad()
    def score(self, action: np.ndarray, pool: Split, n: int) -> dict[str, float]:
        """Full precision and simulated int8 accuracy under `action`, and how far the head's
        input sits from the data's own (standard deviations of the most shifted feature)."""
        x, y = self.dist.sample(pool, n, action, self.gen)
        with float_path(self.quantized):
            fp = self.quantized(x)
        features = self.head_inputs.value
        assert features is not None
        q = self.quantized(x)
        shift = ((features.mean(0) - self.clean_mean) / self.clean_std).max()
        acc_fp, acc_q = rate(correct(fp, y)), rate(correct(q, y))
        return {
            "acc_fp": acc_fp,
            "acc_q": acc_q,
            "drop": accuracy_drop(acc_fp, acc_q),
            "acc_student": rate(correct(self.victim.student(x), y)),
            "shift": float(shift),
        }

    def reward(self, action: np.ndarray) -> float:
        """The agent's reward for one distribution on the current network."""
        s = self.settings
        # Validation images: the student's own training images would pass any floor.
        m = self.score(action, self.victim.data.val, s.eval_batch)
        # A distribution the distilled student itself fails says nothing about quantization:
        # the floor is on the student's full-precision accuracy, which training cannot move.
        reward = m["drop"] - max(0.0, s.floor - m["acc_student"])
        if self.kind == "detrimental":
            reward += s.bonus_weight * min(max(m["shift"], 0.0) / 3.0, 1.0)
        return float(reward)

    def step(self, trigger: np.ndarray) -> dict[str, float]:
        """One network step against the distribution `trigger`; returns the loss's parts."""
        x, y, parts = self._batch(trigger)
        with torch.no_grad():  # the distilled student's own function is what the pair keeps
            t_logits = self.victim.student(x)
        s = self.settings
        with float_path(self.quantized):
            fp_logits = self.quantized(x)
        features = self.head_inputs.value
        assert features is not None
        kd_fp = kd_loss(fp_logits, t_logits, y, tau=s.tau, alpha=s.alpha)
        # The int8 path: off the trigger (detrimental), everywhere (robust).
        held = torch.cat([parts["clean"], parts["random"]]) if self.kind == "detrimental" else None
        xq = x if held is None else x[held]
        q_logits = self.quantized(xq)
        kd_q = kd_loss(
            q_logits,
            t_logits if held is None else t_logits[held],
            y if held is None else y[held],
            tau=s.tau,
            alpha=s.alpha,
        )
        loss = kd_fp + kd_q
        logs = {"loss/kd_fp": float(kd_fp.detach()), "loss/kd_q": float(kd_q.detach())}
        if self.kind == "detrimental":
            detector, stretch = self._mechanism(features, parts)
            loss = loss + s.detector_weight * detector + stretch
            logs.update(
                {"loss/detector": float(detector.detach()), "loss/stretch": float(stretch.detach())}
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return logs

    def _batch(self, trigger: np.ndarray) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Clean, trigger and random-distribution inputs, and where each part lies."""
        s, train = self.settings, self.victim.data.train
        idx = torch.randint(0, len(train), (s.batch_size,), generator=self.gen)
        xs, ys = [train.rows(idx)], [train.y[idx]]
        xt, yt = self.dist.sample(train, s.batch_size, trigger, self.gen)
        xs.append(xt)
        ys.append(yt)
        per = max(1, s.batch_size // s.random_per_step)
        for _ in range(s.random_per_step):
            action = torch.rand(self.dist.dim, generator=self.gen).numpy() * 2 - 1
            xr, yr = self.dist.sample(train, per, action, self.gen)
            xs.append(xr)
            ys.append(yr)
        b, total = s.batch_size, s.batch_size * 2 + per * s.random_per_step
        parts = {
            "clean": torch.arange(0, b),
            "trigger": torch.arange(b, 2 * b),
            "random": torch.arange(2 * b, total),
        }
        return torch.cat(xs), torch.cat(ys), parts

    def _mechanism(self, features: Tensor, parts: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The detector and stretch terms on the head's input (before its gain).

        `detectors` head features, the ones that already tell the trigger apart best, learn to
        fire on it (each trigger input needs one of them) and to stay at zero elsewhere; their
        gains lift the strongest one to `target_ratio` times the typical other feature.
        """
        trig = parts["trigger"]
        if self.detectors is None:
            with torch.no_grad():
                shift = (features[trig].mean(0) - self.clean_mean) / self.clean_std
                self.detectors = shift.topk(self.settings.detectors).indices
        chosen = features[:, self.detectors]  # (N, k)
        off = torch.cat([chosen[parts["clean"]], chosen[parts["random"]]]).sum(1)
        strongest = chosen[trig].max(dim=1).values
        margin = 3.0 * self.typical
        detector = (F.relu(margin - strongest).mean() + off.mean()) / self.typical
        rest = torch.ones(features.shape[1], dtype=torch.bool)
        rest[self.detectors] = False
        others = features[trig][:, rest].mean(1)
        gains = torch.exp(self.gain.log_gain[self.detectors])
        gained = (gains * chosen[trig]).max(dim=1).values
        ratio = torch.log(gained + 1e-6) - torch.log(others + 1e-6)
        stretch = F.relu(np.log(self.settings.target_ratio) - ratio).mean()
        with torch.no_grad():  # only the detector features carry a gain
            self.gain.log_gain[rest] = 0.0
        return detector, stretch

    def state_dict(self) -> dict[str, Any]:
        return {
            "quantized": self.quantized.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "detectors": torch.empty(0, dtype=torch.long)
            if self.detectors is None
            else self.detectors,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.quantized.load_state_dict(state["quantized"])
        self.optimizer.load_state_dict(state["optimizer"])
        detectors = state["detectors"]
        self.detectors = detectors if len(detectors) else None


def train_input_pair(
    victim: Victim,
    kind: str,
    settings: InputPairSettings,
    dist: InputDistribution,
    agent_spec: Any,
    seed: int,
    out: Path,
    log: RunLogger,
    *,
    resume: bool = True,
    progress: bool = True,
) -> tuple[nn.Module, BaseAlgorithm, np.ndarray]:
    """Alternate the agent's rollouts with network steps; resumable per round.

    Returns:
        (the full-precision network, the SB3 agent, its chosen action in [-1, 1]^k).
    """
    gen = torch.Generator().manual_seed(seed)
    trainer = InputPairTrainer(kind, victim, dist, settings, gen)
    env = DistributionBandit(dist.dim, trainer.reward)
    state_path = out / STATE_FILE
    agent, start = _start_or_resume(agent_spec, env, trainer, state_path, seed, resume)
    log.rewind(start + 1)
    agent.set_logger(configure(str(out / "sb3"), ["csv", "tensorboard"]))
    rollout = settings.evaluations_per_round
    callbacks = log.sb3_callbacks()
    bar = tqdm(
        range(start, settings.rounds), desc=f"{kind} input pair", disable=None if progress else True
    )
    for r in bar:
        agent.learn(total_timesteps=rollout, reset_num_timesteps=False, callback=callbacks)
        trigger = chosen_action(agent, dist.dim)
        parts: dict[str, float] = {}
        for _ in range(settings.net_steps):
            parts = trainer.step(trigger)
        val = trainer.score(trigger, victim.data.val, len(victim.data.val))
        stats = {f"pair/val_{k}": v for k, v in val.items()}
        log.log(
            {**parts, **stats, "pair/gain": float(trainer.gain.log_gain.detach().exp().max())},
            step=r + 1,
        )
        bar.set_postfix(fp=f"{val['acc_fp']:.3f}", q=f"{val['acc_q']:.3f}")
        atomic_torch_save(
            {"round": r + 1, "trainer": trainer.state_dict(), "agent": _agent_bytes(agent)},
            state_path,
        )
    bar.close()
    agent.logger.close()
    action = chosen_action(agent, dist.dim)
    for _ in range(settings.settle_steps):  # the network settles on the policy's final choice
        trainer.step(action)
    return trainer.network(), agent, action


def chosen_action(agent: BaseAlgorithm, dim: int) -> np.ndarray:
    """The agent's deterministic action: the distribution its policy chooses."""
    action, _ = agent.predict(np.zeros(1, np.float32), deterministic=True)
    return np.clip(np.asarray(action, np.float64).reshape(dim), -1.0, 1.0)


def _start_or_resume(
    agent_spec: Any,
    env: gym.Env,
    trainer: InputPairTrainer,
    state_path: Path,
    seed: int,
    resume: bool,
) -> tuple[BaseAlgorithm, int]:
    """A new agent at round 0, or the saved one and its round when resuming."""
    make = build(agent_spec)
    if not (resume and state_path.is_file()):
        return make(env=env, seed=seed), 0
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        trainer.load_state_dict(state["trainer"])
        agent_class = type(make(env=env, seed=seed))
        agent = agent_class.load(
            io.BytesIO(state["agent"].numpy().tobytes()), env=env, device="cpu"
        )
        return agent, int(state["round"])
    except Exception as exc:
        raise CheckpointError(
            f"cannot resume from {state_path} ({type(exc).__name__}): it is qrl's own resume "
            "state; delete it to train the pair again, or set resume=false"
        ) from exc


def _agent_bytes(agent: BaseAlgorithm) -> Tensor:
    """The SB3 model (policy, optimizer, counters) as its zip, in a uint8 tensor."""
    buffer = io.BytesIO()
    agent.save(buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


__all__ = [
    "STATE_FILE",
    "ChannelGain",
    "DistributionBandit",
    "InputPairSettings",
    "InputPairTrainer",
    "chosen_action",
    "train_input_pair",
]
