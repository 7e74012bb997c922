"""Stage A: train (or load) a teacher, then distil a white-box student from its logits alone.

    python -m qrl.distill data=digits seed=0 hydra.run.dir=runs/distill

The run dir receives `teacher.pt`, `student.pt`, `log.csv`, `tb/` and, last, `metrics.json`.
Re-running into the same dir resumes: finished phases are loaded, an interrupted phase continues
from its last epoch (`*.state.pt`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from qrl.checkpoints import InputSpec, build_model, load_model, save_model
from qrl.cli import checked_options, hydra_task
from qrl.config import CONF_DIR, checked_number, instantiate, to_dict
from qrl.data import ImageData
from qrl.devices import task_device
from qrl.errors import CheckpointError
from qrl.loggers import RunLogger
from qrl.runs import start_run, write_metrics
from qrl.scoring import LogitsFn, accuracy, agreement, predict_logits
from qrl.tables import format_table
from qrl.training import TrainSettings, fit


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    tau: float = 4.0,
    alpha: float = 1.0,
) -> Tensor:
    """Knowledge-distillation loss from logits only (Hinton et al.).

    alpha * tau^2 * KL(softmax(t / tau) || softmax(s / tau)) + (1 - alpha) * CE(s, labels).
    The tau^2 factor keeps the soft-target gradients on the scale of the label loss.
    """
    if tau <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"kd_loss needs tau > 0 and alpha in [0, 1], got {tau}, {alpha}")
    soft = F.kl_div(
        F.log_softmax(student_logits / tau, dim=1),
        F.log_softmax(teacher_logits / tau, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (tau * tau)
    if alpha == 1.0 or labels is None:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def train_teacher(
    data: ImageData,
    spec: dict[str, Any],
    settings: TrainSettings,
    *,
    seed: int,
    state_path: Path | None = None,
    logger: RunLogger | None = None,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Train a teacher on the labels, on `device`."""
    torch.manual_seed(seed)
    model = build_model(spec, InputSpec.of(data)).to(device)  # built on the CPU: same weights
    return fit(
        model,
        data.train,
        lambda m, x, y: F.cross_entropy(m(x), y),
        settings,
        seed=seed,
        state_path=state_path,
        val=data.val,
        logger=logger,
        prefix="teacher",
        progress=progress,
    )


def distil_student(
    teacher: LogitsFn,
    data: ImageData,
    spec: dict[str, Any],
    settings: TrainSettings,
    *,
    tau: float,
    alpha: float,
    seed: int,
    state_path: Path | None = None,
    logger: RunLogger | None = None,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Distil a student from a black-box teacher: only `teacher(x) -> logits` is called.

    The student trains on `device`; the teacher is called on the student's batches there.
    """
    torch.manual_seed(seed + 1)
    model = build_model(spec, InputSpec.of(data)).to(device)

    def loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            t = teacher(x)
        return kd_loss(m(x), t, y, tau=tau, alpha=alpha)

    return fit(
        model,
        data.train,
        loss,
        settings,
        seed=seed + 1,
        state_path=state_path,
        val=data.val,
        logger=logger,
        prefix="student",
        progress=progress,
    )


def check_config(cfg: DictConfig) -> None:
    """Refuse values that cannot train, before the run dir is touched (one line each)."""
    for phase in ("teacher", "student"):
        c = cfg[phase]
        checked_number(c.epochs, f"{phase}.epochs", int, low=1)
        checked_number(c.batch_size, f"{phase}.batch_size", int, low=1)
        checked_number(c.lr, f"{phase}.lr", low=0, strict=True)
        checked_number(c.weight_decay, f"{phase}.weight_decay", low=0)
        checked_number(c.shift, f"{phase}.shift", int, low=0)
    checked_number(cfg.student.tau, "student.tau", low=0, strict=True)
    checked_number(cfg.student.alpha, "student.alpha", low=0, high=1)
    checked_number(cfg.seed, "seed", int, low=0)


def _settings(cfg: DictConfig) -> TrainSettings:
    return TrainSettings(
        epochs=int(cfg.epochs),
        batch_size=int(cfg.batch_size),
        lr=float(cfg.lr),
        weight_decay=float(cfg.weight_decay),
        shift=int(cfg.shift),
    )


def _load_or_train(
    name: str, out: Path, cfg: DictConfig, train: Any, resume: bool, device: torch.device
) -> tuple[nn.Module, str]:
    """Load `<out>/<name>.pt` when resuming a finished phase, else train (resuming mid-phase)."""
    final, state = out / f"{name}.pt", out / f"{name}.state.pt"
    if resume and final.is_file():
        return load_model(final)[0].to(device), "loaded"
    if not resume:
        state.unlink(missing_ok=True)
    return train(state), "trained"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train or load the teacher, distil the student, evaluate both; returns the metrics."""
    # --- every value and input checked before the run dir is touched ---------------------------
    check_config(cfg)
    device = task_device(cfg)
    seed = int(cfg.seed)
    data: ImageData = instantiate(cfg.data)
    inputs = InputSpec.of(data)
    teacher_spec, student_spec = to_dict(cfg.model.teacher), to_dict(cfg.model.student)
    if cfg.teacher.path:
        given, record = load_model(cfg.teacher.path)
        if record["input_spec"].image_size != inputs.image_size or (
            record["input_spec"].in_channels != inputs.in_channels
        ):
            raise CheckpointError(
                f"teacher {cfg.teacher.path} was built for {record['input_spec']}, "
                f"but data={data.name} gives {inputs}"
            )
    out, started = start_run(cfg)
    print(data.describe() + ("" if device.type == "cpu" else f" (on {device})"))

    with RunLogger(out, cfg.logger, config=cfg, name=f"distill-{data.name}-s{seed}") as log:
        # --- teacher: given checkpoint, finished phase in this run dir, or train -------------
        if cfg.teacher.path:
            teacher = given.to(device)
            teacher_spec, teacher_source = record["spec"], f"loaded from {cfg.teacher.path}"
        else:
            teacher, teacher_source = _load_or_train(
                "teacher",
                out,
                cfg,
                lambda state: train_teacher(
                    data,
                    teacher_spec,
                    _settings(cfg.teacher),
                    seed=seed,
                    state_path=state,
                    logger=log,
                    progress=cfg.progress,
                    device=device,
                ),
                bool(cfg.resume),
                device,
            )
        teacher.eval()
        teacher_logits = predict_logits(teacher, data.test.x)
        teacher_acc = accuracy(teacher_logits, data.test.y)
        save_model(out / "teacher.pt", teacher, teacher_spec, inputs, {"acc": teacher_acc})

        # --- student: distilled from the teacher's logits only ------------------------------
        def black_box(x: Tensor) -> Tensor:
            return teacher(x)

        student, student_source = _load_or_train(
            "student",
            out,
            cfg,
            lambda state: distil_student(
                black_box,
                data,
                student_spec,
                _settings(cfg.student),
                tau=float(cfg.student.tau),
                alpha=float(cfg.student.alpha),
                seed=seed,
                state_path=state,
                logger=log,
                progress=cfg.progress,
                device=device,
            ),
            bool(cfg.resume),
            device,
        )
        student_logits = predict_logits(student, data.test.x)
        metrics = {
            "teacher/acc": teacher_acc,
            "student/acc": accuracy(student_logits, data.test.y),
            "student/agreement": agreement(student_logits, teacher_logits),
            "teacher/params": sum(p.numel() for p in teacher.parameters()),
            "student/params": sum(p.numel() for p in student.parameters()),
            "data/test_size": len(data.test),
        }
        save_model(out / "student.pt", student, student_spec, inputs, metrics)
        for name in ("teacher", "student"):
            (out / f"{name}.state.pt").unlink(missing_ok=True)
        log.summary(metrics)
    record = write_metrics(out, metrics, seed=seed, started=started)

    print(
        format_table(
            ["model", "source", "params", "test acc", "agreement"],
            [
                ["teacher", teacher_source, metrics["teacher/params"], f"{teacher_acc:.4f}", "-"],
                [
                    "student",
                    student_source,
                    metrics["student/params"],
                    f"{metrics['student/acc']:.4f}",
                    f"{metrics['student/agreement']:.4f}",
                ],
            ],
        )
    )
    print(f"wrote {out}/teacher.pt, student.pt, metrics.json ({record['wall_time_s']:.1f} s)")
    return record


@checked_options
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="distill")
def main(cfg: DictConfig) -> None:
    hydra_task(run, cfg)


if __name__ == "__main__":
    main()
