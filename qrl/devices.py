"""The one owner of `device=auto|cpu|cuda|cuda:N`: which torch device a task computes on.

Every task reads its device here (`resolve_device`, through `qrl.sweeps.task_device(cfg)`
for the job that runs it) and hands it to data, models and agents;
nothing else decides. Real int8 kernels (ONNX Runtime, torch.ao) are CPU-only and take
explicit CPU copies (`qrl.quant.backends`).

On a machine with several GPUs, the jobs of a local multirun (`hydra/launcher=joblib`) each
get their own: job k of a sweep runs on `cuda:(k mod #GPUs)`, so up to #GPUs jobs running side
by side never share one. Launchers that place jobs themselves (Ray with
`hydra.launcher.ray.remote.num_gpus=1`, SLURM) expose one GPU per job, which `cuda:0` is.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from qrl.errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def cuda_device_count() -> int:
    """How many CUDA devices torch can use here (0 on a CPU build or a machine without one)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(
    spec: str | torch.device | None = "auto",
    *,
    job_num: int | None = None,
    cuda_count: int | None = None,
) -> torch.device:
    """The torch device that `spec` names on this machine.

    Args:
        spec: `auto` (a GPU when there is one, else the CPU), `cpu`, `cuda` (a GPU, or one clear
            error), `cuda:N` (that GPU).
        job_num: the job's number in a local multirun: `auto` and `cuda` then pick GPU
            `job_num mod count`, so parallel jobs get their own.
        cuda_count: the number of GPUs (default: what torch sees; tests pass a fake count).

    Raises:
        ConfigError: an unknown spec, or a GPU asked for that this machine does not have.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    match = _SPEC.match(text)
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise ConfigError(f"device must be {DEVICE_CHOICES}, got {spec!r}")
    kind, index = match.group(1), match.group(2)
    count = cuda_device_count() if cuda_count is None else cuda_count
    if kind == "cpu" or (kind == "auto" and count == 0):
        return torch.device("cpu")
    if count == 0:
        raise ConfigError(
            f"device={text} but torch {torch.__version__} sees no CUDA device on this machine "
            "(a CPU build of torch, no GPU, or CUDA_VISIBLE_DEVICES empty): use device=auto or "
            "device=cpu"
        )
    if index is not None:
        if int(index) >= count:
            raise ConfigError(
                f"device={text} but this machine has {count} CUDA device(s): "
                f"use cuda:0 to cuda:{count - 1}"
            )
        return torch.device(f"cuda:{index}")
    return torch.device(f"cuda:{(job_num or 0) % count}")


def module_device(model: Any) -> torch.device:
    """Where a module's parameters live (the CPU for a parameterless or non-torch callable)."""
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


def follow_device(agent_cfg: Any, device: torch.device) -> None:
    """An SB3 agent whose `model.device` is `auto` computes on the task's device (in place)."""
    from omegaconf import open_dict

    model = agent_cfg.get("model") if agent_cfg.get("kind") == "sb3" else None
    if model is not None and str(model.get("device", "auto")) == "auto":
        with open_dict(model):
            model.device = str(device)
