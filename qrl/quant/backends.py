"""Real int8 dynamic-quantization kernels, behind one interface: `backend(x) -> logits`.

These are the "real deployment" victims on which a failure found with the fake quantizer is
confirmed:

- `torch_ao`: `torch.ao.quantization.quantize_dynamic` (qint8 weights, fbgemm/x86 kernels);
  it quantizes Linear layers only (a model with Conv2d layers keeps them in float).
- `onnxruntime`: the model exported to ONNX, then
  `onnxruntime.quantization.quantize_dynamic` (ConvInteger / MatMulInteger with
  DynamicQuantizeLinear activations, int8 weights), run by an ONNX Runtime CPU session.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from qrl.errors import ConfigError

BACKEND_NAMES = ("torch_ao", "onnxruntime")


def mirror_preset(name: str, *, onnx_reduce_range: bool = False) -> str:
    """The simulator preset that models a real backend's numerics (see `conf/quant/`)."""
    if name == "torch_ao":
        return "torch_int8_dynamic"
    if name == "onnxruntime":
        return "onnx_int8_dynamic_reduce_range" if onnx_reduce_range else "onnx_int8_dynamic"
    raise ConfigError(f"unknown quant backend {name!r}; real backends are {list(BACKEND_NAMES)}")


class RealBackend(Protocol):
    """A deployed int8 model: logits for a batch of images in [0, 1]."""

    name: str

    def __call__(self, x: Tensor) -> Tensor: ...


class TorchAOBackend:
    """`torch.ao.quantization.quantize_dynamic` on every Linear layer (qint8 weights).

    Args:
        model: the float model (not modified).
        per_channel: per-output-channel weight scales instead of one per tensor.
    """

    name = "torch_ao"

    def __init__(self, model: nn.Module, per_channel: bool = False) -> None:
        from torch.ao.quantization import (
            default_dynamic_qconfig,
            per_channel_dynamic_qconfig,
            quantize_dynamic,
        )

        if not any(isinstance(m, nn.Linear) for m in model.modules()):
            raise ConfigError("backend torch_ao quantizes Linear layers only; this model has none")
        self.convs_stay_float = any(isinstance(m, nn.Conv2d) for m in model.modules())
        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        with warnings.catch_warnings():
            # torch.ao's eager quantization is deprecated upstream but remains the reference
            # implementation of the fbgemm dynamic kernels that are deployed today.
            warnings.simplefilter("ignore")
            self.module = quantize_dynamic(
                copy.deepcopy(model).eval(), {nn.Linear: qconfig}, dtype=torch.qint8
            )

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.module(x.cpu())  # fbgemm kernels: CPU only


class OnnxRuntimeBackend:
    """The model exported to ONNX and dynamically quantized by ONNX Runtime (int8 weights).

    Args:
        model: the float model (not modified).
        example: one example batch, shaped (N, C, H, W), used for the export.
        per_channel: per-output-channel weight scales.
        reduce_range: 7-bit weights, for CPUs without VNNI (as ONNX Runtime documents).
        threads: intra-op threads of the inference session (0: ONNX Runtime's default).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: nn.Module,
        example: Tensor,
        *,
        per_channel: bool = True,
        reduce_range: bool = False,
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(prefix="qrl-onnx-") as tmp:
            fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
            export_onnx(model, example, fp32)
            with _quiet_root_logger():  # it advises pre-processing on every call, via logging
                quantize_dynamic(
                    str(fp32),
                    str(int8),
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    weight_type=QuantType.QInt8,
                )
            self.model_bytes = int8.read_bytes()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            self.model_bytes, options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.quantized_ops = sorted(
            {n.op_type for n in _onnx_nodes(self.model_bytes)} & {"ConvInteger", "MatMulInteger"}
        )

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        feed = {self.input_name: x.detach().cpu().float().numpy()}
        (logits,) = self.session.run(None, feed)
        return torch.from_numpy(np.asarray(logits))


def export_onnx(model: nn.Module, example: Tensor, path: Path) -> Path:
    """Export a model in eval mode with a dynamic batch dimension (BatchNorm folded)."""
    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example[:2].float(),),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _onnx_nodes(model_bytes: bytes) -> list:
    import onnx

    return list(onnx.load_model(io.BytesIO(model_bytes)).graph.node)


def real_backend(
    name: str, model: nn.Module, example: Tensor, *, onnx_reduce_range: bool = False
) -> RealBackend:
    """Build a real int8 backend by name (`torch_ao` or `onnxruntime`).

    `onnx_reduce_range` quantizes ONNX Runtime's weights to 7 bits. ONNX Runtime's default
    (False, as here) multiplies uint8 by int8 in 16-bit pairs on x86 CPUs without VNNI and can
    saturate (see `qrl.quant.cpu`; `onnx_int8_dynamic` simulates that path on such CPUs):
    measured on an AVX2 machine, one 64->16 Linear layer deviated 0.22 from float without it
    and 0.009 with it. Both are real deployments; the default is what `quantize_dynamic` users
    get. `mirror_preset` names the simulator preset
    that models each.
    """
    # Real int8 kernels run on the CPU: a model on a GPU is exported from a CPU copy.
    model = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    example = example.cpu()
    if name == "torch_ao":
        return TorchAOBackend(model)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(model, example, reduce_range=onnx_reduce_range)
    raise ConfigError(f"unknown quant backend {name!r}; real backends are {list(BACKEND_NAMES)}")
