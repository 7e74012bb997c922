"""Audit your own model: search for the policies under which its dynamic-quantized copy fails.

From Python:

    import qrl

    result = qrl.audit(model, (x, y), quant="int4_dynamic", space="input", agent="es")
    print(result.gap, result.gap_ci, result.description)

From the command line (a qrl checkpoint, a TorchScript file, or a state dict plus its spec):

    python -m qrl.audit model.path=student.pt data=digits quant=int4_dynamic agent=ppo
    python -m qrl.audit model.path=weights.pt +model.spec._target_=qrl.models.SmallCNN \\
        +model.spec.width=16

By default the audit measures the **drop**: the model's own full-precision accuracy minus its
quantized accuracy on the inputs the search finds (`env.reference=student`), which is what
dynamic quantization costs. A teacher (by default the model itself) is reported beside it as
the teacher gap; `overrides=["env.reference=teacher"]` (or `env.reference=teacher` on the
command line) makes the search rank policies by the teacher gap instead.
"""

from __future__ import annotations

import copy
import sys
import time
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import Dataset

from qrl.checkpoints import FORMAT, InputSpec, build_own_model, data_keywords, load_file, load_model
from qrl.cli import checked_options, hydra_task
from qrl.config import CONF_DIR, instantiate, load_config, to_dict
from qrl.confirm import kernel_rows
from qrl.data import ImageData, check_image_data, from_tensors
from qrl.devices import module_device
from qrl.errors import CheckpointError, ConfigError, DataError
from qrl.quant import QuantConfig, as_quant_config
from qrl.runs import start_run
from qrl.search import check_settings, search_victim
from qrl.searching import SearchResult
from qrl.sweeps import task_device
from qrl.victim import Victim


@dataclass(frozen=True)
class AuditResult:
    """What an audit found: the held-out numbers of its search's `SearchResult`, in memory.

    Attributes:
        policy: the chosen action (the policy's parameters in [-1, 1]).
        description: that policy in words, e.g. "brightness +0.30, noise sigma 0.080".
        reference: whose accuracy `gap` is measured from: `student` (the model in full
            precision: `gap` is the drop quantization causes; the default) or `teacher`.
        gap: held-out accuracy gap, reference minus quantized model (a fraction).
        gap_ci: its bootstrap confidence interval (low, high).
        drop: held-out full-precision minus quantized accuracy (what quantization causes).
        teacher_gap: held-out teacher minus quantized accuracy.
        acc_teacher, acc_fp, acc_q: held-out accuracies under the policy.
        confirm_gap: the gap on a real int8 backend, when one ran (else None).
        archive: the top policies of the search, best first (the rows of `archive.json`).
        run_dir: the run's directory (archive, failure grid, search curve, logs).
        search: the whole search result (selection, baseline, kernels, provenance).
        metrics: everything the run wrote to `metrics.json` (`to_metrics()`).
    """

    policy: np.ndarray
    description: str
    reference: str
    gap: float
    gap_ci: tuple[float, float]
    drop: float
    teacher_gap: float
    acc_teacher: float
    acc_fp: float
    acc_q: float
    confirm_gap: float | None
    archive: list[dict[str, Any]]
    run_dir: Path
    search: SearchResult = field(repr=False)

    @classmethod
    def from_search(cls, search: SearchResult) -> AuditResult:
        """The audit's view of a finished search (from memory: no file is read back)."""
        held_out = search.held_out
        confirm_gap = search.confirm.get("confirm/gap")
        return cls(
            policy=np.asarray(search.action, dtype=np.float64),
            description=search.description,
            reference=search.reference,
            gap=float(held_out.gap),
            gap_ci=(float(held_out.ci[0]), float(held_out.ci[1])),
            drop=float(held_out.drop_fp),
            teacher_gap=float(held_out.teacher_gap),
            acc_teacher=float(held_out.acc_teacher),
            acc_fp=float(held_out.acc_fp),
            acc_q=float(held_out.acc_q),
            confirm_gap=None if confirm_gap is None else float(confirm_gap),
            archive=list(search.archive),
            run_dir=search.run_dir,
            search=search,
        )

    @property
    def metrics(self) -> dict[str, Any]:
        """Everything the run wrote to `metrics.json` (`to_metrics()`)."""
        return self.to_metrics()

    def to_metrics(self) -> dict[str, Any]:
        """The `metrics.json` keys: the search's (`SearchResult.to_metrics`)."""
        return self.search.to_metrics()

    def __str__(self) -> str:
        name = (
            "drop (full precision - quantized)"
            if self.reference == "student"
            else "teacher gap (teacher - quantized)"
        )
        lines = [
            f"held-out {name} {100 * self.gap:.2f} points "
            f"({100 * self.metrics.get('eval/ci_level', 0.95):.0f}% CI "
            f"{100 * self.gap_ci[0]:.2f} to {100 * self.gap_ci[1]:.2f})",
            (
                f"beside it: teacher gap (teacher - quantized) {100 * self.teacher_gap:.2f} points"
                if self.reference == "student"
                else f"beside it: drop (full precision - quantized) {100 * self.drop:.2f} points"
            ),
            f"under: {self.description}",
            f"accuracy teacher {100 * self.acc_teacher:.2f}%, full precision "
            f"{100 * self.acc_fp:.2f}%, quantized {100 * self.acc_q:.2f}%",
        ]
        if self.confirm_gap is not None:
            lines.append(f"confirmed on int8 kernels: gap {100 * self.confirm_gap:.2f} points")
        lines += [f"{what}: {value} ({note})" for what, value, note in kernel_rows(self.metrics)]
        lines += [f"warning: {m}" for m in self.metrics.get("confirm/warnings", [])]
        lines.append(f"details in {self.run_dir}")
        return "\n".join(lines)


def as_image_data(data: ImageData | tuple[Tensor, Tensor] | Dataset, seed: int = 0) -> ImageData:
    """Accept `ImageData`, an (inputs, labels) pair, or a torch `Dataset` of (image, label)."""
    if isinstance(data, ImageData):
        return check_image_data(data)
    if (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        return from_tensors(data[0], data[1], seed=seed)
    if (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(t, Tensor | np.ndarray) for t in data)
    ):
        return from_tensors(torch.as_tensor(data[0]), torch.as_tensor(data[1]), seed=seed)
    if isinstance(data, Dataset):
        try:
            pairs = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
            x = torch.stack([_image(p[0]) for p in pairs])
            y = torch.as_tensor([int(p[1]) for p in pairs])
        except (TypeError, IndexError, ValueError, RuntimeError) as exc:
            raise DataError(
                f"the Dataset must yield (image tensor (C, H, W), int label): {exc}"
            ) from exc
        return from_tensors(x, y, seed=seed)
    raise DataError("data must be ImageData, an (inputs, labels) tensor pair, or a torch Dataset")


def _image(image: Any) -> Tensor:
    """A Dataset's image as a tensor: uint8 pixels kept as bytes (`from_tensors` scales them
    by 1/255, as for a tensor pair), anything else as float32 in [0, 1]."""
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image)
    return x if x.dtype == torch.uint8 else x.to(torch.float32)


def _named_or_given(group: str, value: Any, overrides: list[str]) -> Any:
    """A preset name becomes a Hydra override; a config object is merged in afterwards."""
    if value is None:
        return None
    if isinstance(value, str):
        overrides.append(f"{group}={value}")
        return None
    return value


def audit(
    student: nn.Module,
    data: ImageData | tuple[Tensor, Tensor] | Dataset,
    teacher: nn.Module | None = None,
    *,
    quant: str | QuantConfig | Mapping[str, Any] = "int4_dynamic",
    space: str | Mapping[str, Any] = "input",
    agent: str | Mapping[str, Any] = "es",
    evaluations: int = 1000,
    seed: int = 0,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    device: str | torch.device = "auto",
) -> AuditResult:
    """Search for input distributions (or bit-widths) under which `student`'s quantized copy fails.

    Args:
        student: the model to audit; takes (N, C, H, W) images in [0, 1].
        data: `ImageData`, an (inputs, labels) pair, or a torch `Dataset`; its test split is
            held out for the final evaluation.
        teacher: reported beside the drop as the teacher gap; defaults to `student` in full
            precision. The search ranks policies by the drop unless the overrides say
            `env.reference=teacher`.
        quant, space, agent: preset names as on the command line (`int4_dynamic`, `input`,
            `es`) or config objects (`QuantConfig` / mappings of the same keys). `space` says
            what the search controls: `input`, `bits` or `joint`. The default agent, CMA-ES,
            is the one `python -m qrl.bench` measures best (experiments/README.md).
        evaluations: the search budget (environment evaluations).
        seed: seeds the data split, the agent and the evaluation.
        out: the run dir (default `runs/audit/<timestamp>`).
        overrides: further Hydra overrides of the `search` config (e.g. `env.batch_size=128`).
        device: `auto` (a GPU when torch sees one), `cpu`, `cuda` or `cuda:N`: where the
            model, teacher and simulated quantized copy compute (a copy of a model elsewhere
            goes there; yours stay where they are). Real int8 kernels run on the CPU.

    Raises:
        CheckpointError: the model cannot take the data's images (shapes are named).
        ConfigError: a bad setting, or a device this machine does not have.
    """
    started = time.perf_counter()
    cfg = _api_config(quant, space, agent, evaluations, seed, out, progress, str(device), overrides)
    check_settings(cfg)  # values and inputs checked before the run dir is touched
    place = task_device(cfg)
    placed = _on_device(student, place)
    victim = Victim.from_models(
        _on_device(teacher, place) if teacher is not None else placed,
        placed,
        as_image_data(data, seed),
        as_quant_config(cfg.quant),
        place,
    )
    run_dir, _ = start_run(cfg)  # claim cfg.out for this config, drop a stale result, seed
    return AuditResult.from_search(search_victim(victim, cfg, run_dir, started))


def _api_config(
    quant: str | QuantConfig | Mapping[str, Any],
    space: str | Mapping[str, Any],
    agent: str | Mapping[str, Any],
    evaluations: int,
    seed: int,
    out: str | Path | None,
    progress: bool,
    device: str,
    overrides: Sequence[str],
) -> DictConfig:
    """The `search` config of an API call: preset names as overrides, objects merged in."""
    names: list[str] = []
    quant_obj = _named_or_given("quant", quant, names)
    space_obj = _named_or_given("space", space, names)
    agent_obj = _named_or_given("agent", agent, names)
    run_dir = out or Path("runs/audit") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    cfg = load_config(
        "search",
        [
            *names,
            f"budget.evaluations={int(evaluations)}",
            f"seed={seed}",
            f"out={run_dir}",
            f"progress={str(progress).lower()}",
            "env.reference=student",  # the audit question: the drop; overrides may change it
            *overrides,
        ],
    )
    OmegaConf.set_struct(cfg, False)
    cfg.device = device  # set here: `cuda:0` is no value for Hydra's override grammar
    if quant_obj is not None:
        cfg.quant = OmegaConf.create(
            quant_obj.to_dict() if isinstance(quant_obj, QuantConfig) else to_dict(quant_obj)
        )
    if space_obj is not None:
        cfg.space = OmegaConf.merge(cfg.space, to_dict(space_obj))
    if agent_obj is not None:
        cfg.agent = OmegaConf.create(to_dict(agent_obj))
    return cfg


def _on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` if it is on `device` already, else a copy of it (the caller's model stays put;
    `Victim.from_models` moves what it gets)."""
    return model if module_device(model) == device else copy.deepcopy(model)


def load_any_model(path: str | Path, spec: Mapping[str, Any] | None, data: ImageData) -> nn.Module:
    """Load a qrl checkpoint, a TorchScript file, or a state dict built from `spec`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model checkpoint {path} does not exist")
    try:  # TorchScript archives describe their own architecture
        return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError):
        pass
    record = load_file(path)  # raises CheckpointError for corrupt files
    if not isinstance(record, dict) or not all(isinstance(k, str) for k in record):
        raise CheckpointError(f"{path} holds neither a model checkpoint nor a state dict")
    if record.get("format") == FORMAT:
        return load_model(path)[0]
    if not spec:
        raise CheckpointError(
            f"{path} is a plain state dict: say which model it belongs to with "
            "+model.spec._target_=<class> (and its options, e.g. +model.spec.width=16)"
        )
    model = build_from_spec(spec, data)
    state = record.get("state_dict", record)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit model {spec.get('_target_')}: {exc}") from exc
    return model.eval()


def build_from_spec(spec: Mapping[str, Any], data: ImageData) -> nn.Module:
    """Build the model class `spec` names, with the data keywords its constructor accepts
    (`qrl.checkpoints.build_own_model`), and say in one line which ones it got."""
    model, passed = build_own_model(spec, InputSpec.of(data))
    offered = [k for k in data_keywords(InputSpec.of(data)) if k not in spec]
    left_out = [k for k in offered if k not in passed]
    print(
        f"built {spec.get('_target_')} with the data keywords {', '.join(passed) or '(none)'}"
        + (f" (not in its signature, not passed: {', '.join(left_out)})" if left_out else "")
    )
    return model


def run(cfg: DictConfig) -> dict[str, Any]:
    """The CLI: load the model (and teacher), then search it on the configured data."""
    if not cfg.model.path:
        raise ConfigError("set model.path=<checkpoint> (qrl, TorchScript or state dict)")
    check_settings(cfg)
    data: ImageData = instantiate(cfg.data)
    spec = to_dict(cfg.model.spec) if cfg.model.get("spec") else None
    student = load_any_model(cfg.model.path, spec, data)
    teacher = load_any_model(cfg.teacher.path, spec, data) if cfg.teacher.path else student
    quant = as_quant_config(cfg.quant)
    if isinstance(student, torch.jit.ScriptModule) and quant.backend == "fake":
        raise ConfigError(
            "a TorchScript model hides the layers qrl's simulator quantizes: audit it on real "
            "int8 kernels (quant=int8_dynamic quant.backend=onnxruntime), or pass a state dict "
            "with +model.spec._target_=<class> to simulate other bit-widths"
        )
    victim = Victim.from_models(teacher, student, data, quant, task_device(cfg))
    out, started = start_run(cfg)
    result = AuditResult.from_search(search_victim(victim, cfg, out, started))
    print(result)
    return result.metrics


@checked_options
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="audit")
def main(cfg: DictConfig) -> None:
    hydra_task(run, cfg)


class _CallableModule(types.ModuleType):
    """`qrl.audit` is both the CLI module (`python -m qrl.audit`) and the function the API
    promises (`qrl.audit(model, data, ...)`): calling the module calls `audit`."""

    def __call__(self, *args: Any, **kwargs: Any) -> AuditResult:
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
