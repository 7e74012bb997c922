"""The victim of a search: a black-box teacher, a white-box student and its quantized copy."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qrl.checkpoints import load_model
from qrl.data import ImageData
from qrl.devices import module_device
from qrl.distillation import DistillRecipe, distil
from qrl.errors import CheckpointError, ConfigError, DataError
from qrl.quant import QuantConfig, quantized_copy
from qrl.quant.backends import RealBackend, real_backend
from qrl.runs import METRICS_FILE, load_run_config, save_config, seed_everything, write_metrics
from qrl.specs import CONF_DIR, build, load_yaml

CPU = torch.device("cpu")


@dataclass
class Victim:
    """Teacher T, full-precision student S and the quantized student S_q, with their data.

    Attributes:
        teacher: queried for logits only.
        student: the full-precision student.
        qstudent: S_q: `quantized_copy(student, quant)`, or a real int8 backend.
        data: the data set the student was distilled on (its test split is held out).
        quant: the quantizer of `qstudent`.
        device: where teacher, student and a simulated `qstudent` compute (`qrl.devices`); the
            data stay on the CPU and each batch moves over (real int8 backends: CPU only).
    """

    teacher: nn.Module
    student: nn.Module
    qstudent: nn.Module | RealBackend
    data: ImageData
    quant: QuantConfig
    device: torch.device = CPU

    @torch.no_grad()
    def logits(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(teacher, full-precision student, quantized student) logits of one batch, on the CPU.

        `x` moves to the victim's device (a no-op on the CPU); logits come back to the CPU,
        where labels, scores and archives live.
        """
        on_device = x.to(self.device)
        q_in = on_device if isinstance(self.qstudent, nn.Module) else x.cpu()
        return (
            self.teacher(on_device).cpu(),
            self.student(on_device).cpu(),
            self.qstudent(q_in).cpu(),
        )

    def to(self, device: torch.device | str) -> Victim:
        """Move teacher, student and a simulated quantized copy to `device`, in place; a real
        int8 backend stays on the CPU, where its kernels run. Returns the victim."""
        self.device = torch.device(device)
        self.teacher, self.student = self.teacher.to(self.device), self.student.to(self.device)
        if isinstance(self.qstudent, nn.Module):
            self.qstudent = self.qstudent.to(self.device)
        return self

    @classmethod
    def from_models(
        cls,
        teacher: nn.Module,
        student: nn.Module,
        data: ImageData,
        quant: QuantConfig,
        device: torch.device | str = "cpu",
    ) -> Victim:
        """Wrap models and data; the quantized copy (or real backend) is made here.

        The models move to `device`; a real int8 backend is built from the CPU student first.
        """
        device = torch.device(device)
        teacher, student = teacher.eval(), student.eval()
        _check_shape(student, data)
        _check_shape(teacher, data)
        qstudent: nn.Module | RealBackend
        if quant.backend != "fake":
            qstudent = real_backend(quant.backend, student, data.test.head(8))
        teacher, student = teacher.to(device), student.to(device)
        if quant.backend == "fake":
            qstudent = quantized_copy(student, quant).eval()  # a copy on the student's device
        return cls(teacher, student, qstudent, data, quant, device)


def _check_shape(model: nn.Module, data: ImageData) -> None:
    """Fail early, with the shapes named, when a model cannot take the data's images."""
    x = data.test.head(2)
    try:
        with torch.no_grad():
            out = model.eval()(x.to(module_device(model)))
    except RuntimeError as exc:
        raise CheckpointError(
            f"{type(model).__name__} cannot take {data.name} images shaped {tuple(x.shape[1:])}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    if out.ndim == 2 and out.shape[1] < data.num_classes:
        raise DataError(
            f"the {data.name} labels span {data.num_classes} classes (0..{data.num_classes - 1}), "
            f"but {type(model).__name__} gives {out.shape[1]} logits: labels must be 0.."
            f"{out.shape[1] - 1}, one per output of the model"
        )
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise CheckpointError(
            f"{type(model).__name__} gives outputs shaped {tuple(out.shape)} on {data.name}, "
            f"expected (batch, {data.num_classes}) logits"
        )


def load_victim(
    run_dir: str | os.PathLike[str], quant: QuantConfig, device: torch.device | str = "cpu"
) -> Victim:
    """Load the teacher and student of a `qrl.distill` run dir, with the same data split."""
    run_dir = Path(run_dir)
    for name in ("teacher.pt", "student.pt"):
        if not (run_dir / name).is_file():
            raise CheckpointError(
                f"{run_dir / name} does not exist: point to a finished `python -m qrl.distill` "
                "run dir"
            )
    data = build(load_run_config(run_dir).data)
    teacher, _ = load_model(run_dir / "teacher.pt")
    student, _ = load_model(run_dir / "student.pt")
    return Victim.from_models(teacher, student, data, quant, device)


def cache_dir() -> Path:
    """Where qrl caches what it trains on first use: `$QRL_CACHE`, else `~/.cache/qrl`."""
    return Path(os.environ.get("QRL_CACHE") or Path.home() / ".cache" / "qrl")


DEFAULT_VICTIM = "digits-cnn-s0"
DEFAULT_SEED = 0  # the victims are `python -m qrl.distill data=digits model=<model> seed=0`
DEFAULT_MODEL = "cnn"
VICTIM_MODELS = ("cnn", "mlp", "resnet18")  # conf/model/*.yaml


def victim_dir(model: str = DEFAULT_MODEL) -> Path:
    """Where the cached digits victim of `model` lives (`victim.model` in the configs)."""
    if model not in VICTIM_MODELS:
        raise ConfigError(f"victim.model must be one of {list(VICTIM_MODELS)}, got {model!r}")
    name = DEFAULT_VICTIM if model == DEFAULT_MODEL else f"digits-{model}-s0"
    return cache_dir() / "victims" / name


def default_victim(
    quant: QuantConfig,
    progress: bool = True,
    device: torch.device | str = "cpu",
    model: str = DEFAULT_MODEL,
) -> Victim:
    """A digits teacher and student of `model`: distilled once into the cache, then loaded.

    The first call distils as `python -m qrl.distill data=digits model=<model> seed=0` would
    (about 45 s for the CNN on two CPU cores) under a file lock, so concurrent processes train
    it only once.
    """
    import fcntl

    run_dir = victim_dir(model)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run_dir / METRICS_FILE).is_file():
            print(f"qrl: distilling the digits {model} teacher and student into {run_dir} (once)")
            _distil_default(model, run_dir, progress)
    return load_victim(run_dir, quant, device)


def victim_recipe(model: str) -> tuple[DistillRecipe, dict[str, Any]]:
    """How the cached victim of `model` is distilled: its recipe and its data's `_target_` spec.

    `python -m qrl.distill data=digits model=<model> seed=0` with its defaults.
    """
    data_spec = {
        **load_yaml(CONF_DIR / "data" / "digits.yaml", resolve=False),
        "seed": DEFAULT_SEED,
    }
    return DistillRecipe.default(model), data_spec


def _distil_default(model: str, run_dir: Path, progress: bool) -> None:
    """Distil the cached victim of `model` into `run_dir`, a run dir like `qrl.distill`'s."""
    from qrl.loggers import RunLogger

    recipe, data_spec = victim_recipe(model)
    config = {
        "task": "distill",
        "seed": DEFAULT_SEED,
        "data": data_spec,
        "model": {"teacher": recipe.teacher_spec, "student": recipe.student_spec},
        "teacher": {**dataclasses.asdict(recipe.teacher), "path": recipe.teacher_path},
        "student": {**dataclasses.asdict(recipe.student), "tau": recipe.tau, "alpha": recipe.alpha},
    }
    started = time.perf_counter()
    save_config(run_dir, config)
    seed_everything(DEFAULT_SEED)
    with RunLogger(run_dir) as log:
        done = distil(
            recipe, build(data_spec), run_dir, seed=DEFAULT_SEED, log=log, progress=progress
        )
        log.summary(done.metrics)
    write_metrics(run_dir, done.metrics, seed=DEFAULT_SEED, started=started)
