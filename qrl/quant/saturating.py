"""ONNX Runtime's uint8 x int8 MatMul on x86 CPUs without VNNI: products summed in saturating
16-bit pairs.

There the kernel (`vpmaddubsw`) multiplies each uint8 activation by its int8 weight, adds the
products of adjacent positions along the reduced dimension (k = 2j and 2j + 1) and clips that
sum to the int16 range [-32768, 32767]; the clipped pair sums are then added exactly in int32.
The activations enter as stored, zero point included; the zero point's share,
`zero_point * sum_k w_k`, is subtracted afterwards in exact int32 arithmetic. An odd K gets a
zero pad. Two products of at most 255 * 127 each can reach 64,770, so a pair of large
activations times large weights of one sign clips. ConvInteger is exact on the same CPUs.

The rule reproduces every MatMulInteger output recorded on such a CPU
(`tests/fixtures/onnxruntime-x86-avx2/ops.npz`), zero points 0 and 128 alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qrl.quant.config import QuantConfig
from qrl.quant.functional import Bits, activation_qparams, weight_qparams

INT16_MIN, INT16_MAX = -32768.0, 32767.0
SAFE_PAIR_WEIGHT = 128  # 255 * 128 = 32640 fits int16: lighter weight pairs never clip
SPARSE_SHARE = 0.05  # above this share of clippable weight pairs, form every pair sum
# Pair sums held at once (rows x clippable pairs): bounds the memory of a large batch.
CHUNK_ELEMENTS = 1 << 22


def saturating_pairs_matmul(qa: Tensor, qw: Tensor) -> Tensor:
    """sum_j clip16(qa[:, 2j] * qw[:, 2j] + qa[:, 2j+1] * qw[:, 2j+1]) for integer-valued
    float tensors: activations qa (M, K) as stored (uint8 values), weights qw (N, K) (int8
    values). Returns (M, N) in float64, exact.

    A pair's sum is at most 255 * (|w_2j| + |w_2j+1|), so only weight pairs with
    |w_2j| + |w_2j+1| > 128 can leave the int16 range, and they are known before any input
    arrives. Where they are few (trained networks), the result is the exact product plus a
    correction on them; otherwise every pair sum is formed and clipped.
    """
    m, k = qa.shape
    if k % 2:  # the kernel pads K with zeros
        qa, qw = F.pad(qa, (0, 1)), F.pad(qw, (0, 1))
    a = qa.reshape(m, -1, 2)  # (M, J, 2)
    w = qw.reshape(qw.shape[0], -1, 2)  # (N, J, 2)
    outputs, pairs = torch.nonzero(w.abs().sum(dim=2) > SAFE_PAIR_WEIGHT, as_tuple=True)
    if len(outputs) > SPARSE_SHARE * w.shape[0] * w.shape[1]:
        return _all_pairs(a, w)
    exact = qa.double() @ qw.double().T
    w0, w1 = w[outputs, pairs, 0].double(), w[outputs, pairs, 1].double()  # (S,)
    rows = max(1, CHUNK_ELEMENTS // max(1, len(outputs)))
    for start in range(0, m if len(outputs) else 0, rows):
        chunk = a[start : start + rows, pairs].double()  # (rows, S, 2)
        sums = chunk[:, :, 0] * w0 + chunk[:, :, 1] * w1
        excess = sums.clamp(INT16_MIN, INT16_MAX) - sums  # zero where the pair did not clip
        exact[start : start + rows].index_add_(1, outputs, excess)
    return exact


def _all_pairs(a: Tensor, w: Tensor) -> Tensor:
    """Every pair sum formed and clipped: a (M, J, 2), w (N, J, 2) -> (M, N) float64."""
    # float32 holds every pair sum exactly (|sum| <= 2 * 255 * 128), and their total while it
    # stays below 2^24; beyond that the total is taken in float64.
    a, w = a.float(), w.float().permute(2, 1, 0)  # w: (2, J, N)
    total = torch.float32 if a.shape[1] * INT16_MAX < 2**24 else torch.float64
    rows = max(1, CHUNK_ELEMENTS // max(1, a.shape[1] * w.shape[2]))
    out = []
    for start in range(0, a.shape[0], rows):
        chunk = a[start : start + rows]
        sums = chunk[:, :, 0, None] * w[0]  # (rows, J, N)
        sums.addcmul_(chunk[:, :, 1, None], w[1])
        out.append(sums.clamp_(INT16_MIN, INT16_MAX).sum(dim=1, dtype=total))
    return torch.cat(out).double() if out else a.new_zeros((0, w.shape[2]), dtype=torch.float64)


def saturating_linear(
    xq: Tensor,
    lo: Tensor,
    hi: Tensor,
    bits: Bits,
    wq: Tensor,
    bias: Tensor | None,
    cfg: QuantConfig,
) -> Tensor:
    """A Linear layer as the saturating kernel computes it, from the exact path's operands.

    Args:
        xq: the fake-quantized activations (..., K) and their observed range `lo`, `hi`
            (per tensor or per input), quantized at `bits`.
        wq: the fake-quantized weight (N, K); bias: the float bias (N,) or None.
        cfg: a uint8 x int8 quantizer (`QuantConfig.is_u8_s8`).

    Returns:
        The layer's output. Its values are the saturating kernel's; its gradient is the exact
        path's (straight through), so QAT trains through it as through the exact path.
    """
    exact = F.linear(xq, wq, bias)
    with torch.no_grad():
        scale, zero_point = activation_qparams(lo, hi, bits, cfg)
        w_scale, _ = weight_qparams(wq, cfg)  # wq's own grid: the same scale as the float weight
        shape = (-1, 1) if scale.numel() > 1 else (1, 1)  # one scale per input or per tensor
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        qa = torch.round(xq.reshape(-1, xq.shape[-1]) / _rows_of(scale, xq)) + _rows_of(
            zero_point, xq
        )
        qw = torch.round(wq / w_scale.reshape(-1, 1))
        acc = saturating_pairs_matmul(qa, qw) - _rows_of(zero_point, xq).double() * qw.sum(1)
        out = (acc * _rows_of(scale, xq).double() * w_scale.reshape(1, -1).double()).float()
        if bias is not None:
            out = out + bias
        out = out.reshape(exact.shape)
    return exact + (out - exact).detach()


def _rows_of(value: Tensor, x: Tensor) -> Tensor:
    """A per-input (B, 1) or per-tensor (1, 1) value, repeated for every row of x's (-1, K)
    view (inputs shaped (B, T, K) have T rows each)."""
    rows_per_input = x[..., 0].numel() // max(1, x.shape[0])
    return value.repeat_interleave(rows_per_input, dim=0) if value.shape[0] > 1 else value
