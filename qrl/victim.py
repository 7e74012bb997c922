"""The victim of a search: a black-box teacher, a white-box student and its quantized copy."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
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
from qrl.loggers import RunLogger
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
        quantized: S_q: `quantized_copy(student, quant)`, or a real int8 backend.
        data: the data set the student was distilled on (its test split is held out).
        quant: the quantizer of `quantized`.
        device: where teacher, student and a simulated `quantized` compute (`qrl.devices`); the
            data stay on the CPU and each batch moves over (real int8 backends: CPU only).
    """

    teacher: nn.Module
    student: nn.Module
    quantized: nn.Module | RealBackend
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
        q_in = on_device if isinstance(self.quantized, nn.Module) else x.cpu()
        teacher = self.teacher(on_device).cpu()
        # A model that is its own teacher (planted members) runs once.
        student = teacher if self.student is self.teacher else self.student(on_device).cpu()
        return teacher, student, self.quantized(q_in).cpu()

    @property
    def qstudent(self) -> nn.Module | RealBackend:
        """Deprecated: the quantized student is `quantized`."""
        warnings.warn("Victim.qstudent is now Victim.quantized", DeprecationWarning, stacklevel=2)
        return self.quantized

    def to(self, device: torch.device | str) -> Victim:
        """Move teacher, student and a simulated quantized copy to `device`, in place; a real
        int8 backend stays on the CPU, where its kernels run. Returns the victim."""
        self.device = torch.device(device)
        self.teacher, self.student = self.teacher.to(self.device), self.student.to(self.device)
        if isinstance(self.quantized, nn.Module):
            self.quantized = self.quantized.to(self.device)
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
        quantized: nn.Module | RealBackend
        if quant.backend != "fake":
            quantized = real_backend(quant.backend, student, data.test.head(8))
        teacher, student = teacher.to(device), student.to(device)
        if quant.backend == "fake":
            quantized = quantized_copy(student, quant).eval()  # a copy on the student's device
        return cls(teacher, student, quantized, data, quant, device)


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


@dataclass(frozen=True)
class VictimSize:
    """The size of a cached victim: (teacher, student) widths and epochs; None keeps what
    `python -m qrl.distill data=digits model=<model>` uses (conf/model/*.yaml, conf/distill.yaml).
    """

    widths: tuple[int, int] | None = None
    epochs: tuple[int, int] | None = None

    def tag(self) -> str:
        """`w16x8-e10x12`: what differs from the defaults, in the cache entry's name."""
        parts = [f"w{self.widths[0]}x{self.widths[1]}"] if self.widths else []
        return "-".join([*parts, *([f"e{self.epochs[0]}x{self.epochs[1]}"] if self.epochs else [])])


# Each cached victim distils in well under 2 minutes on 2 CPU cores (README, "Tasks"; one torch
# thread, `victim_threads`): the CNN and the MLP as `python -m qrl.distill` trains them,
# ResNet-18 at half its widths (64 and 32) and 10 + 12 epochs (not 30 + 40), which at full size
# take about 4 minutes on one free core and far longer on busy ones.
VICTIM_SIZES = {
    "cnn": VictimSize(),
    "mlp": VictimSize(),
    "resnet18": VictimSize(widths=(32, 16), epochs=(10, 12)),
}
# `<teacher>,<student>` in these replaces a victim's widths (cnn, resnet18) or epochs.
WIDTHS_ENV, EPOCHS_ENV = "QRL_VICTIM_WIDTHS", "QRL_VICTIM_EPOCHS"
THREADS_ENV = "QRL_VICTIM_THREADS"  # torch threads while a victim distils (`victim_threads`)


def _env_pair(name: str) -> tuple[int, int] | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        teacher, student = (int(v) for v in text.split(","))
    except ValueError:
        teacher = student = 0
    if teacher < 1 or student < 1:
        raise ConfigError(
            f"{name} must be two integers >= 1, <teacher>,<student> (such as 16,8), got {text!r}"
        )
    return teacher, student


def victim_size(model: str = DEFAULT_MODEL) -> VictimSize:
    """The size of the cached victim of `model`: `VICTIM_SIZES[model]`, its widths and epochs
    replaced by `$QRL_VICTIM_WIDTHS` and `$QRL_VICTIM_EPOCHS` when set. A value that equals the
    distill default counts as the default (the same cache entry)."""
    if model not in VICTIM_MODELS:
        raise ConfigError(f"victim.model must be one of {list(VICTIM_MODELS)}, got {model!r}")
    size, recipe = VICTIM_SIZES[model], DistillRecipe.default(model)
    widths = _env_pair(WIDTHS_ENV) or size.widths
    epochs = _env_pair(EPOCHS_ENV) or size.epochs
    defaults = (recipe.teacher_spec.get("width"), recipe.student_spec.get("width"))
    if widths is not None and None in defaults:
        raise ConfigError(
            f"{WIDTHS_ENV} sizes the cnn and resnet18 victims; the {model} victim has no width: "
            f"unset {WIDTHS_ENV}"
        )
    return VictimSize(
        widths=None if widths == defaults else widths,
        epochs=None if epochs == (recipe.teacher.epochs, recipe.student.epochs) else epochs,
    )


def victim_dir(model: str = DEFAULT_MODEL) -> Path:
    """Where the cached digits victim of `model` lives (`victim.model` in the configs); a victim
    of another size (`victim_size`) is cached apart, its size in its name."""
    tag = victim_size(model).tag()
    name = DEFAULT_VICTIM if model == DEFAULT_MODEL else f"digits-{model}-s0"
    return cache_dir() / "victims" / (f"digits-{model}-{tag}-s0" if tag else name)


def default_victim(
    quant: QuantConfig,
    progress: bool = True,
    device: torch.device | str = "cpu",
    model: str = DEFAULT_MODEL,
) -> Victim:
    """A digits teacher and student of `model`: distilled once into the cache, then loaded.

    The first call distils as `python -m qrl.distill data=digits model=<model> seed=0` would, at
    the victim's size (`victim_size`; each well under 2 minutes on two CPU cores) on
    `victim_threads()` torch threads, under a file lock, so concurrent processes train it only
    once. With `progress`, epochs show as progress bars; without (or with no terminal), a line
    per phase estimates the time left.
    """
    import fcntl

    run_dir = victim_dir(model)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run_dir / METRICS_FILE).is_file():
            _distil_default(model, run_dir, progress)
    return load_victim(run_dir, quant, device)


def victim_recipe(model: str) -> tuple[DistillRecipe, dict[str, Any]]:
    """How the cached victim of `model` is distilled: its recipe and its data's `_target_` spec.

    `python -m qrl.distill data=digits model=<model> seed=0` with its defaults, at the size of
    `victim_size(model)` (ResNet-18: `model.teacher.width=32 model.student.width=16
    teacher.epochs=10 student.epochs=12`).
    """
    data_spec = {
        **load_yaml(CONF_DIR / "data" / "digits.yaml", resolve=False),
        "seed": DEFAULT_SEED,
    }
    recipe, size = DistillRecipe.default(model), victim_size(model)
    if size.widths is not None:
        teacher = {**recipe.teacher_spec, "width": size.widths[0]}
        student = {**recipe.student_spec, "width": size.widths[1]}
        recipe = dataclasses.replace(recipe, teacher_spec=teacher, student_spec=student)
    if size.epochs is not None:
        recipe = recipe.with_epochs(*size.epochs)
    return recipe, data_spec


def _distil_default(model: str, run_dir: Path, progress: bool) -> None:
    """Distil the cached victim of `model` into `run_dir`, a run dir like `qrl.distill`'s."""
    recipe, data_spec = victim_recipe(model)
    epochs = {"teacher": recipe.teacher.epochs, "student": recipe.student.epochs}
    print(
        f"qrl: distilling the digits {model} victim into {run_dir} (once): teacher "
        f"{epochs['teacher']} epochs, student {epochs['student']} "
        f"(${WIDTHS_ENV} and ${EPOCHS_ENV} resize it)"
    )
    config = {
        "task": "distill",
        "seed": DEFAULT_SEED,
        "data": data_spec,
        "model": {"teacher": recipe.teacher_spec, "student": recipe.student_spec},
        "teacher": {**dataclasses.asdict(recipe.teacher), "path": recipe.teacher_path},
        "student": {**dataclasses.asdict(recipe.student), "tau": recipe.tau, "alpha": recipe.alpha},
    }
    started, threads = time.perf_counter(), torch.get_num_threads()
    save_config(run_dir, config)
    seed_everything(DEFAULT_SEED)
    bars = progress and sys.stderr.isatty()  # tqdm shows bars only on a terminal
    torch.set_num_threads(victim_threads())
    try:
        with EstimatingLogger(run_dir, None if bars else EpochEstimates(epochs)) as log:
            done = distil(
                recipe, build(data_spec), run_dir, seed=DEFAULT_SEED, log=log, progress=progress
            )
            log.summary(done.metrics)
    finally:
        torch.set_num_threads(threads)
    write_metrics(run_dir, done.metrics, seed=DEFAULT_SEED, started=started)


def victim_threads() -> int:
    """torch's threads while a cached victim distils: `$QRL_VICTIM_THREADS`, default 1.

    The digits models are so small that more threads barely help, and on a busy machine they
    hurt: on two shared cores, two threads made each epoch 10 to 80 times slower than one
    (OpenMP threads spin, waiting for each other, at every operation).
    """
    text = os.environ.get(THREADS_ENV, "").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{THREADS_ENV} must be an integer >= 1, got {text!r}")
    return int(text)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class EpochEstimates:
    """Long training without progress bars: after the first epoch of each phase, one line with
    how long it took and about how long the phase has left; after its second, a revised line
    when that estimate was more than 25% off (a first epoch also warms torch up).

    Args:
        epochs: each phase's epochs, by the prefix of its metrics (`teacher/loss`: teacher).
        clock, write: the time in seconds, and where lines go (`print`).
    """

    def __init__(
        self,
        epochs: Mapping[str, int],
        clock: Callable[[], float] = time.perf_counter,
        write: Callable[[str], object] = print,
    ) -> None:
        self.epochs, self.clock, self.write = dict(epochs), clock, write
        self.left: dict[str, list[float]] = {}  # each phase's estimates so far
        self.start()

    def start(self) -> None:
        """The work starts now (the first epoch is timed from here)."""
        self.last = self.clock()  # the end of the previous epoch, or the start

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        """An epoch of a phase ended at `step` (its epoch number, from 1) with `metrics`."""
        now = self.clock()
        took, self.last = now - self.last, now
        phase = next(iter(metrics), "").split("/")[0]
        if phase not in self.epochs:
            return
        total = self.epochs[phase]
        left = took * max(total - step, 0)
        before = self.left.setdefault(phase, [])
        if not before or (len(before) == 1 and not 0.8 * left <= before[0] - took <= 1.25 * left):
            self.write(
                f"qrl: {phase} epoch {step}/{total} took {took:.1f} s, about "
                f"{_duration(left)} left for the {phase}"
            )
        before.append(left)


class EstimatingLogger(RunLogger):
    """A `RunLogger` whose every epoch also goes to `EpochEstimates` (when given)."""

    def __init__(self, run_dir: str | os.PathLike[str], estimates: EpochEstimates | None) -> None:
        super().__init__(run_dir)
        self.estimates = estimates
        if estimates is not None:
            estimates.start()  # not the time it took to open the logs

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        super().log(metrics, step)
        if self.estimates is not None:
            self.estimates(metrics, step)


def distilled_victim(
    run: str | os.PathLike[str] | None,
    model: str,
    quant: QuantConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[Victim, dict[str, Any], Path]:
    """The victim of a `qrl.distill` run dir (`run`), or the cached digits victim of `model`
    when `run` is None; with the student's model spec and the run dir it came from."""
    if run is None:
        victim = default_victim(quant, progress=progress, device=device, model=model)
        run_dir = victim_dir(model)
    else:
        run_dir = Path(run)
        victim = load_victim(run_dir, quant, device)
    _, record = load_model(run_dir / "student.pt")
    return victim, record["spec"], run_dir
