"""Stage A as a library: train (or load) a teacher, then distil a student from its logits alone.

`distil(recipe, data, out, ...)` trains both phases into a run dir (`teacher.pt`, `student.pt`;
an interrupted phase continues from `<phase>.state.pt`) and returns them with their metrics.
`python -m qrl.distill` builds the recipe from its config; the cached default victim
(`qrl.victim.default_victim`) builds it from the same YAML files without Hydra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qrl.checkpoints import InputSpec, build_model, load_model, save_model
from qrl.data import ImageData
from qrl.errors import CheckpointError
from qrl.loggers import RunLogger
from qrl.scoring import LogitsFn, accuracy, agreement, predict_logits
from qrl.specs import CONF_DIR, checked_number, load_yaml, plain
from qrl.training import TrainSettings, fit

PHASES = ("teacher", "student")


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


@dataclass(frozen=True)
class DistillRecipe:
    """What Stage A trains: the two architectures, each phase's schedule, the KD weights.

    Attributes:
        teacher_spec, student_spec: `_target_` specs of the models (`conf/model/*.yaml`).
        teacher, student: each phase's optimizer and schedule.
        tau, alpha: the distillation temperature and the weight of the KD term.
        teacher_path: a qrl checkpoint to use as the teacher instead of training one.
    """

    teacher_spec: dict[str, Any]
    student_spec: dict[str, Any]
    teacher: TrainSettings = field(default_factory=TrainSettings)
    student: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=40))
    tau: float = 4.0
    alpha: float = 0.9
    teacher_path: str | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DistillRecipe:
        """From a distill config's `model`, `teacher` and `student` nodes, checked first.

        Raises:
            ConfigError: a value that cannot train, naming its key.
        """
        phases = {}
        for phase in PHASES:
            c = cfg[phase]
            phases[phase] = TrainSettings(
                epochs=checked_number(c["epochs"], f"{phase}.epochs", int, low=1),
                batch_size=checked_number(c["batch_size"], f"{phase}.batch_size", int, low=1),
                lr=checked_number(c["lr"], f"{phase}.lr", low=0, strict=True),
                weight_decay=checked_number(c["weight_decay"], f"{phase}.weight_decay", low=0),
                shift=checked_number(c["shift"], f"{phase}.shift", int, low=0),
            )
        return cls(
            teacher_spec=dict(plain(cfg["model"]["teacher"])),
            student_spec=dict(plain(cfg["model"]["student"])),
            teacher=phases["teacher"],
            student=phases["student"],
            tau=checked_number(cfg["student"]["tau"], "student.tau", low=0, strict=True),
            alpha=checked_number(cfg["student"]["alpha"], "student.alpha", low=0, high=1),
            teacher_path=cfg["teacher"].get("path") or None,
        )

    @classmethod
    def default(cls, model: str) -> DistillRecipe:
        """`python -m qrl.distill model=<model>` with its defaults, read from `conf/` directly."""
        defaults = load_yaml(CONF_DIR / "distill.yaml", resolve=False)  # out: ${hydra:...}
        phases = {phase: defaults[phase] for phase in PHASES}
        return cls.from_config({**phases, "model": load_yaml(CONF_DIR / "model" / f"{model}.yaml")})

    def with_epochs(self, teacher: int, student: int) -> DistillRecipe:
        """The same recipe with other epoch counts (a smaller cached victim, a quick test)."""
        return dataclasses.replace(
            self,
            teacher=dataclasses.replace(self.teacher, epochs=teacher),
            student=dataclasses.replace(self.student, epochs=student),
        )


@dataclass
class Distilled:
    """The outcome of `distil`: both models (eval mode), their metrics, where each came from."""

    teacher: nn.Module
    student: nn.Module
    metrics: dict[str, float]
    sources: dict[str, str]


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


def load_teacher(path: str | Path, data: ImageData) -> tuple[nn.Module, dict[str, Any]]:
    """A given teacher checkpoint and its spec, refused when it was built for other images."""
    model, record = load_model(path)
    given, inputs = record["input_spec"], InputSpec.of(data)
    if given.image_size != inputs.image_size or given.in_channels != inputs.in_channels:
        raise CheckpointError(
            f"teacher {path} was built for {given}, but data={data.name} gives {inputs}"
        )
    return model, record["spec"]


def _load_or_train(
    name: str, out: Path, train: Callable[[Path], nn.Module], resume: bool, device: torch.device
) -> tuple[nn.Module, str]:
    """Load `<out>/<name>.pt` when resuming a finished phase, else train (resuming mid-phase)."""
    final, state = out / f"{name}.pt", out / f"{name}.state.pt"
    if resume and final.is_file():
        return load_model(final)[0].to(device), "loaded"
    if not resume:
        state.unlink(missing_ok=True)
    return train(state), "trained"


def _test_metrics(
    teacher: nn.Module, student: nn.Module, teacher_logits: Tensor, data: ImageData
) -> dict[str, float]:
    """Both models' test accuracy, the student's agreement with the teacher, their sizes."""
    student_logits = predict_logits(student, data.test.x)
    return {
        "teacher/acc": accuracy(teacher_logits, data.test.y),
        "student/acc": accuracy(student_logits, data.test.y),
        "student/agreement": agreement(student_logits, teacher_logits),
        "teacher/params": sum(p.numel() for p in teacher.parameters()),
        "student/params": sum(p.numel() for p in student.parameters()),
        "data/test_size": len(data.test),
    }


def distil(
    recipe: DistillRecipe,
    data: ImageData,
    out: Path,
    *,
    seed: int,
    resume: bool = True,
    log: RunLogger | None = None,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> Distilled:
    """Train or load the teacher, distil the student, save both into `out`, score both."""
    inputs, device = InputSpec.of(data), torch.device(device)
    phase = {"seed": seed, "logger": log, "progress": progress, "device": device}
    # --- teacher: a given checkpoint, a finished phase in this run dir, or trained --------------
    if recipe.teacher_path:
        teacher, teacher_spec = load_teacher(recipe.teacher_path, data)
        teacher, teacher_source = teacher.to(device), f"loaded from {recipe.teacher_path}"
    else:
        teacher_spec = recipe.teacher_spec
        teacher, teacher_source = _load_or_train(
            "teacher",
            out,
            lambda state: train_teacher(
                data,
                teacher_spec,
                recipe.teacher,
                state_path=state,
                **phase,  # type: ignore[arg-type]
            ),
            resume,
            device,
        )
    teacher_logits = predict_logits(teacher.eval(), data.test.x)
    teacher_acc = {"acc": accuracy(teacher_logits, data.test.y)}
    save_model(out / "teacher.pt", teacher, teacher_spec, inputs, teacher_acc)
    # --- student: distilled from the teacher's logits only ----------------------------------
    student, student_source = _load_or_train(
        "student",
        out,
        lambda state: distil_student(
            lambda x: teacher(x),  # a black box: logits only
            data,
            recipe.student_spec,
            recipe.student,
            tau=recipe.tau,
            alpha=recipe.alpha,
            state_path=state,
            **phase,  # type: ignore[arg-type]
        ),
        resume,
        device,
    )
    metrics = _test_metrics(teacher, student.eval(), teacher_logits, data)
    save_model(out / "student.pt", student, recipe.student_spec, inputs, metrics)
    for name in PHASES:
        (out / f"{name}.state.pt").unlink(missing_ok=True)
    sources = {"teacher": teacher_source, "student": student_source}
    return Distilled(teacher, student, metrics, sources)
