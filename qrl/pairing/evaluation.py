"""Stage C: what a pair's network does quantized, under its own policy and under others.

Every number here is measured on one split (the test split by default) and is one of:
- `acc_fp`, `acc_q`: accuracy in full precision and quantized (fractions);
- `drop` = acc_fp - acc_q of the same network on the same inputs: what quantization causes;
- `teacher_gap` = acc(teacher) - acc_q: the gap to the teacher, named as such.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qrl.data import Split
from qrl.devices import module_device
from qrl.pairing.store import Pair
from qrl.plots import failure_grid, pyplot
from qrl.policies import BitsDecoder, RandomBits
from qrl.quant import using_bits
from qrl.quant.backends import real_backend
from qrl.runs import atomic_write
from qrl.scoring import accuracy_drop, accuracy_gap, correct, predict_logits, rate

BitsFn = Callable[[Tensor], Tensor]  # inputs (B, C, H, W) -> bits (B, L)
BATCH = 512


@torch.no_grad()
def quantized_right(
    quantized: nn.Module, x: Tensor, y: Tensor, bits: BitsFn | Tensor, batch: int = BATCH
) -> Tensor:
    """Per-input correctness of `quantized` under per-input bits (a function of x, (N, L) or (L,)).

    `batch` inputs go through at once; it matters only to per-tensor and per-channel activation
    ranges, which the inputs of one batch share.
    """
    parts, device = [], module_device(quantized)  # batches go to the network's device, back to x's
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        with using_bits(quantized, _bits_for(bits, xb, i)):
            parts.append(correct(quantized(xb.to(device)).to(x.device), y[i : i + batch]))
    return torch.cat(parts)


def _bits_for(bits: BitsFn | Tensor, xb: Tensor, start: int) -> Tensor:
    """The bits of the batch `xb` that starts at row `start`."""
    if callable(bits):
        return bits(xb)
    return bits[start : start + len(xb)] if bits.ndim == 2 else bits


def batched_bits(fn: BitsFn, x: Tensor) -> Tensor:
    """A bit-width policy applied batch by batch: (N, L)."""
    return torch.cat([fn(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def fixed_patterns(
    decoder: BitsDecoder, limit: int = 2000, samples: int = 200, seed: int = 0
) -> tuple[np.ndarray, str]:
    """Per-layer bit patterns (P, L) that spend the budget: all of them, or a random sample.

    Args:
        decoder: the allowed set and budget.
        limit: enumerate every pattern when there are at most this many.
        samples: otherwise, decode this many random actions (duplicates dropped).

    Returns:
        (patterns, how): `how` says whether they are all patterns ("all N") or a sample.
    """
    levels = [int(b) for b in decoder.levels]
    total = int(np.floor(decoder.budget * decoder.num_layers + 1e-9))
    if len(levels) ** decoder.num_layers <= 50 * limit:
        every = np.array(list(itertools.product(levels, repeat=decoder.num_layers)))
        sums = every.sum(axis=1)
        best_sum = sums[sums <= total].max()
        patterns = every[sums == best_sum]
        if len(patterns) <= limit:
            return patterns, f"all {len(patterns)}"
    rng = np.random.default_rng(seed)
    decoded = decoder.decode(rng.uniform(-1, 1, size=(samples, decoder.num_layers)))
    patterns = np.unique(decoded, axis=0)
    return patterns, f"{len(patterns)} sampled"


@dataclass(frozen=True)
class PairEvaluation:
    """Stage C of one pair on one split: what its network does under its own policy and beside it.

    Accuracies are fractions of the split. `drop` = full precision - quantized accuracy of the same
    network on the same inputs (what quantization causes); `teacher_gap` = teacher - quantized.
    Each `drop_*` is the full-precision accuracy minus the accuracy under that other quantization.

    Attributes:
        acc_teacher: the teacher's accuracy.
        acc_fp: the pair's network in full precision.
        acc_q: its quantized copy under the pair's own per-input bits.
        mean_bits: the bits the policy spends, averaged over inputs and layers.
        bits_per_layer: those bits averaged over inputs, one per quantized layer.
        layer_names: the quantized layers, in the order of `bits_per_layer`.
        acc_q_uniform: quantized at the budget's uniform bits.
        acc_q_random: quantized under random per-input bits at the same budget.
        acc_onnx_int8: on ONNX Runtime's dynamic int8 kernels (8 bits, no policy), one
            image at a time, as a deployed model answers a request and as the input pairs
            report it (a batch would share one activation range across its images).
    """

    acc_teacher: float
    acc_fp: float
    acc_q: float
    mean_bits: float
    bits_per_layer: tuple[float, ...]
    layer_names: tuple[str, ...]
    acc_q_uniform: float
    acc_q_random: float
    acc_onnx_int8: float

    @property
    def drop(self) -> float:
        """Full precision - quantized under the pair's policy."""
        return accuracy_drop(self.acc_fp, self.acc_q)

    @property
    def teacher_gap(self) -> float:
        """Teacher - quantized under the pair's policy."""
        return accuracy_gap(self.acc_teacher, self.acc_q)

    def to_metrics(self) -> dict[str, Any]:
        """The `metrics.json` keys of a pair (`python -m qrl.pairs` adds `kind` beside them)."""
        return {
            "acc_teacher": self.acc_teacher,
            "acc_fp": self.acc_fp,
            "acc_q": self.acc_q,
            "mean_bits": self.mean_bits,
            "bits_per_layer": list(self.bits_per_layer),
            "layer_names": list(self.layer_names),
            "drop": self.drop,
            "teacher_gap": self.teacher_gap,
            "acc_q_uniform": self.acc_q_uniform,
            "acc_q_random": self.acc_q_random,
            "acc_onnx_int8": self.acc_onnx_int8,
            "drop_uniform": accuracy_drop(self.acc_fp, self.acc_q_uniform),
            "drop_random": accuracy_drop(self.acc_fp, self.acc_q_random),
            "drop_onnx_int8": accuracy_drop(self.acc_fp, self.acc_onnx_int8),
        }


def evaluate_pair(pair: Pair, teacher: nn.Module, split: Split, *, seed: int = 0) -> PairEvaluation:
    """The pair's own numbers: full precision, quantized under its policy, uniform and random
    bits at the same budget, and ONNX Runtime's dynamic int8 kernels (`PairEvaluation`)."""
    x, y = split.x, split.y
    acc_teacher = rate(correct(predict_logits(teacher, x), y))
    acc_fp = rate(correct(predict_logits(pair.network, x), y))
    own = batched_bits(pair.bits, x)
    acc_q = rate(quantized_right(pair.quantized, x, y, own))
    uniform = torch.from_numpy(pair.decoder.uniform())
    acc_q_uniform = rate(quantized_right(pair.quantized, x, y, uniform))
    random_bits = RandomBits(pair.decoder, seed)
    acc_q_random = rate(quantized_right(pair.quantized, x, y, random_bits))
    ort = real_backend("onnxruntime", pair.network, x[:8])
    return PairEvaluation(
        acc_teacher=acc_teacher,
        acc_fp=acc_fp,
        acc_q=acc_q,
        mean_bits=float(own.float().mean()),
        bits_per_layer=tuple(own.float().mean(dim=0).tolist()),
        layer_names=tuple(pair.layer_names),
        acc_q_uniform=acc_q_uniform,
        acc_q_random=acc_q_random,
        acc_onnx_int8=rate(correct(predict_logits(ort, x, batch_size=1), y)),
    )


def cross_evaluation(
    pairs: Mapping[str, Pair],
    split: Split,
    *,
    seed: int = 0,
    pattern_limit: int = 2000,
    pattern_samples: int = 200,
) -> list[dict[str, Any]]:
    """Every network under its own policy, the other pairs' policies, uniform b bits for each b
    in the set, random per-input bits, and the best and worst fixed per-layer pattern at the
    budget. One row per (network, policy): acc_q, drop (= acc_fp - acc_q), mean bits, and a
    note (the pattern, for fixed patterns).
    """
    x, y = split.x, split.y
    rows: list[dict[str, Any]] = []
    for name, pair in pairs.items():
        acc_fp = rate(correct(predict_logits(pair.network, x), y))

        def row(
            policy: str, bits: Tensor, note: str = "", name: str = name, acc_fp: float = acc_fp
        ) -> None:
            acc_q = rate(quantized_right(pairs[name].quantized, x, y, bits))
            mean_bits = float(bits.float().mean())
            rows.append(
                {
                    "network": name,
                    "policy": policy,
                    "note": note,
                    "acc_fp": acc_fp,
                    "acc_q": acc_q,
                    "drop": accuracy_drop(acc_fp, acc_q),
                    "mean_bits": mean_bits,
                }
            )

        row("own policy", batched_bits(pair.bits, x))
        for other_name, other in pairs.items():
            if other_name != name:
                # The other pair's policy looks at its own network to choose bits.
                row(f"{other_name} policy", batched_bits(other.bits, x))
        for b in (int(v) for v in pair.decoder.levels):
            row(f"uniform {b} bits", torch.full((len(pair.layer_names),), b))
        row("random bits", batched_bits(RandomBits(pair.decoder, seed), x))
        patterns, how = fixed_patterns(pair.decoder, pattern_limit, pattern_samples, seed)
        accs = [rate(quantized_right(pair.quantized, x, y, torch.from_numpy(p))) for p in patterns]
        for label, i in (("best", int(np.argmax(accs))), ("worst", int(np.argmin(accs)))):
            pattern = "/".join(str(int(b)) for b in patterns[i])
            row(f"{label} fixed pattern", torch.from_numpy(patterns[i]), f"{pattern} (of {how})")
    return rows


@torch.no_grad()
def vulnerability(pair: Pair, split: Split) -> dict[str, Any]:
    """Where the pair's failure lives.

    Returns:
        `per_layer`: the drop when only layer l follows the policy (every other layer at 8 bits);
        `per_class`: the drop on each true class under the policy;
        `flipped`: (inputs, labels, quantized predictions) right in full precision and wrong
        quantized under the policy.
    """
    x, y = split.x, split.y
    fp_right = correct(predict_logits(pair.network, x), y)
    own = batched_bits(pair.bits, x)
    per_layer = []
    for col in range(own.shape[1]):
        bits = torch.full_like(own, 8)
        bits[:, col] = own[:, col]
        per_layer.append(
            accuracy_drop(rate(fp_right), rate(quantized_right(pair.quantized, x, y, bits)))
        )
    q_logits = torch.cat([pair.logits(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])
    q_right = correct(q_logits, y)
    classes = sorted(int(c) for c in y.unique())
    per_class = [accuracy_drop(rate(fp_right[y == c]), rate(q_right[y == c])) for c in classes]
    flip = torch.nonzero(fp_right & ~q_right).flatten()
    return {
        "per_layer": per_layer,
        "per_class": per_class,
        "classes": classes,
        "flipped": (x[flip], y[flip], q_logits.argmax(1)[flip]),
    }


# --- pictures -----------------------------------------------------------------------------------


def plot_cross(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Drop (full precision - quantized, points) of each network under each policy."""
    plt = pyplot()
    networks = list(dict.fromkeys(r["network"] for r in rows))
    fig, axes = plt.subplots(
        1, len(networks), figsize=(5.5 * len(networks), 4), squeeze=False, sharex=True
    )
    for ax, net in zip(axes[0], networks, strict=True):
        mine = [r for r in rows if r["network"] == net]
        labels = [r["policy"] for r in mine]
        ax.barh(labels, [100 * r["drop"] for r in mine], color="tab:red", alpha=0.7)
        ax.invert_yaxis()
        ax.set(xlabel="drop: full precision - quantized (points)", title=f"{net} network")
        ax.axvline(0, color="k", lw=0.5)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_vulnerability(path: Path, name: str, pair: Pair, vuln: dict[str, Any]) -> Path:
    """Per-layer and per-class drop of one pair under its own policy."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.bar(pair.layer_names, [100 * d for d in vuln["per_layer"]], color="tab:purple")
    ax1.set(ylabel="drop (points)", title=f"{name}: only this layer follows the policy (rest 8)")
    ax1.tick_params(axis="x", rotation=45, labelsize=7)
    ax2.bar([str(c) for c in vuln["classes"]], [100 * d for d in vuln["per_class"]])
    ax2.set(xlabel="true class", ylabel="drop (points)", title=f"{name}: drop per class")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def flipped_grid(
    path: Path, name: str, vuln: dict[str, Any], class_names: Sequence[str], max_images: int = 32
) -> Path:
    """Inputs right in full precision and wrong when quantized under the pair's policy."""
    n = len(vuln["flipped"][0])
    return failure_grid(
        path,
        vuln["flipped"],
        class_names,
        f"{name}: {n} test inputs right in full precision, wrong quantized under its policy "
        "(T: label, Q: quantized prediction)",
        max_images=max_images,
    )
