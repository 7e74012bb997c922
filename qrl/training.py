"""A small, resumable training loop shared by teacher training, distillation and QAT.

`Trainer` owns the optimizer and learning-rate schedule for a fixed number of steps and takes
one step at a time, so network updates can alternate with other work (PPO on the bit-width
policy, in `qrl.pairs`) without restarting either; `fit` runs it over epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from qrl.data import Split
from qrl.errors import CheckpointError
from qrl.loggers import RunLogger
from qrl.runs import atomic_torch_save
from qrl.scoring import accuracy, predict_logits

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TrainSettings:
    """Optimizer and schedule of one training phase (AdamW with a cosine learning rate)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    shift: int = 1  # random translation augmentation, in pixels (0 disables it)

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.shift < 0:
            raise ValueError(f"invalid training settings {self}")


class Trainer:
    """AdamW with a one-cycle learning rate over `total_steps` steps, one `step(loss)` at a time.

    Args:
        model: the module whose parameters are trained.
        lr, weight_decay: AdamW's peak learning rate and weight decay.
        total_steps: the length of the schedule (steps past it keep the final rate).
    """

    def __init__(self, model: nn.Module, *, lr: float, weight_decay: float, total_steps: int):
        self.model = model
        self.total_steps = max(1, int(total_steps))
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=lr, total_steps=self.total_steps, pct_start=0.15
        )
        self.steps = 0

    def step(self, loss: Tensor) -> float:
        """One optimizer step on `loss`; returns its value."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.steps < self.total_steps:  # OneCycleLR refuses steps past its end
            self.sched.step()
        self.steps += 1
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.steps = int(state["steps"])


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by its own random offset of up to `max_shift` pixels (zero fill)."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)  # (B, C, H + 2s, W + 2s)
    oy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def fit(
    model: nn.Module,
    train: Split,
    loss_fn: LossFn,
    settings: TrainSettings,
    *,
    seed: int,
    state_path: Path | None = None,
    val: Split | None = None,
    logger: RunLogger | None = None,
    prefix: str = "train",
    progress: bool = True,
) -> nn.Module:
    """Train `model` in place, on its device; resumable from `state_path`, updated every epoch.

    Each epoch draws its shuffling and augmentation from a generator seeded by (seed, epoch), so
    a resumed run gives exactly the same weights as an uninterrupted one. Batches are drawn and
    shifted on the CPU (the same random stream on every device), then moved to the model's.
    """
    from qrl.devices import module_device

    device = module_device(model)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    trainer = Trainer(
        model,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        total_steps=settings.epochs * steps_per_epoch,
    )
    start = 0
    if state_path is not None and state_path.is_file():
        start = _restore(state_path, trainer)
    # disable=None: tqdm turns itself off when stderr is not a terminal (logs, CI).
    bar = tqdm(
        range(start, settings.epochs), desc=prefix, disable=None if progress else True, leave=False
    )
    for epoch in bar:
        model.train()
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        total, count = 0.0, 0
        for x, y in train.batches(settings.batch_size, shuffle=True, generator=gen):
            x = random_shift(x, settings.shift, gen).to(device)
            loss = trainer.step(loss_fn(model, x, y.to(device)))
            total, count = total + loss * len(y), count + len(y)
        metrics = {f"{prefix}/loss": total / max(count, 1)}
        if val is not None and len(val) > 0:
            metrics[f"{prefix}/val_acc"] = accuracy(predict_logits(model, val.x), val.y)
        bar.set_postfix({k.split("/")[-1]: f"{v:.4f}" for k, v in metrics.items()})
        if logger is not None:
            logger.log(metrics, step=epoch + 1)
        if state_path is not None:
            atomic_torch_save({"epoch": epoch + 1, **trainer.state_dict()}, state_path)
    model.eval()
    return model


def _restore(path: Path, trainer: Trainer) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        trainer.load_state_dict(state)
        return int(state["epoch"])
    except Exception as exc:
        raise CheckpointError(
            f"cannot resume from {path} ({type(exc).__name__}); delete it to start that phase "
            "again, or set resume=false"
        ) from exc
