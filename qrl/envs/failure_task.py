"""What `qrl/QuantFailure-v0` does with an action, without the environment around it.

A `FailureTask` turns an action into a policy (an input distribution and/or per-layer
bit-widths), draws batches from it and scores the victim on them. The environment steps it;
held-out evaluation (`qrl.heldout`) and the confirmation on real int8 kernels (`qrl.search`)
call it directly, on other splits or other victims, with no environment in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from qrl.errors import ConfigError
from qrl.policies import DEFAULT_BITS_SET, DEFAULT_BUDGET, DEFAULT_CORRUPTIONS, BitsDecoder
from qrl.policies.input import InputDistribution, class_prior
from qrl.quant import layer_names, using_bits
from qrl.scoring import Outcome, check_reference
from qrl.victim import Victim

MODES = ("input", "bits", "joint")
SPLITS = ("train", "val", "test")


def check_choices(mode: str, split: str, reference: str) -> None:
    """A `ConfigError` unless mode, split and reference are among the known ones."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if split not in SPLITS:
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    check_reference(reference)


@dataclass(frozen=True)
class Measurement:
    """One batch scored under one action.

    Attributes:
        outcome: per-input correctness of the teacher, the student and its quantized copy.
        mean_bits: the average activation bit-width the quantized copy ran at.
    """

    outcome: Outcome
    mean_bits: float


class FailureTask:
    """Draw batches from the policy an action stands for, and score the victim on them.

    Args:
        victim: teacher, student and quantized student (the simulator, or a real int8 backend
            for mode `input`).
        mode: what the action controls: `input` (an input distribution), `bits` (per-layer
            bit-widths) or `joint` (both, input part first).
        corruptions, class_mix: the input-distribution family (`InputDistribution`).
        bits_set, bits_budget: the bit-width decoder's allowed set and average budget.
        split: the data split batches are drawn from.
        reference: whose accuracy the gap is measured from, `teacher` or `student`.

    Attributes:
        inputs: the input-distribution family (None in mode `bits`).
        decoder: the bit-width decoder (None in mode `input`).
        pool: the split batches are drawn from.
        num_layers: quantized layers of the student (0 for a real backend).
        action_space: `Box(-1, 1, (k,), float32)`, the input part followed by the bits part.

    Raises:
        ConfigError: an unknown mode, split or reference, or bit-widths asked of a real backend.
    """

    def __init__(
        self,
        victim: Victim,
        mode: str = "input",
        corruptions: Sequence[str] = DEFAULT_CORRUPTIONS,
        class_mix: bool = True,
        bits_set: Sequence[int] = DEFAULT_BITS_SET,
        bits_budget: float = DEFAULT_BUDGET,
        split: str = "train",
        reference: str = "teacher",
    ) -> None:
        check_choices(mode, split, reference)
        self.victim, self.mode, self.split, self.reference = victim, mode, split, reference
        self.corruptions, self.class_mix = tuple(corruptions), class_mix
        self.bits_set, self.bits_budget = tuple(bits_set), bits_budget
        data = victim.data
        self.pool = getattr(data, split)
        self.inputs = (
            InputDistribution(data.num_classes, data.channels, corruptions, class_mix)
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
        self.action_space = spaces.Box(-1.0, 1.0, (k_in + k_bits,), np.float32)

    def replace(
        self, victim: Victim | None = None, mode: str | None = None, split: str | None = None
    ) -> FailureTask:
        """The same policy family on another victim (e.g. a real int8 backend), mode or split."""
        return FailureTask(
            victim if victim is not None else self.victim,
            mode or self.mode,
            self.corruptions,
            self.class_mix,
            self.bits_set,
            self.bits_budget,
            split or self.split,
            self.reference,
        )

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
            return self.pool.rows(idx), self.pool.y[idx], idx
        idx = self.inputs.choose(self.pool, n, input_part, generator)
        x = self.inputs.transform(self.pool.rows(idx), input_part, generator)
        return x, self.pool.y[idx], idx

    @torch.no_grad()
    def measure(self, action: np.ndarray, x: Tensor, y: Tensor) -> Measurement:
        """Score T, S and S_q on (x, y), S_q at the action's bit-widths (else the preset's)."""
        _, bits = self.split_action(action)
        q = self.victim.quantized
        if isinstance(q, nn.Module):
            per_layer = [int(b) for b in bits] if bits is not None else self.victim.quant.act_bits
            with using_bits(q, per_layer):
                t_logits, fp_logits, q_logits = self.victim.logits(x)
        else:  # a real int8 backend: its bits are fixed
            t_logits, fp_logits, q_logits = self.victim.logits(x)
        mean_bits = float(np.mean(bits)) if bits is not None else float(self.victim.quant.act_bits)
        return Measurement(Outcome.of(t_logits, fp_logits, q_logits, y), mean_bits)

    def _num_layers(self) -> int:
        q = self.victim.quantized
        if isinstance(q, nn.Module):
            return len(layer_names(q))
        if self.mode != "input":
            raise ConfigError(
                f"mode={self.mode} sets bit-widths, which needs the simulated quantizer "
                f"(quant backend fake), not the real {self.victim.quant.backend} kernels"
            )
        return 0
