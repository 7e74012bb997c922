"""An input-distribution pair on disk: `save_input_pair` writes it; `qrl.pairing.load_pair` gives
it back as an `InputPair`.

A pair's dir holds `network.pt` (the full-precision network, with its head gain), `policy.zip`
(the SB3 agent that chose the distribution) and, written last, `pair.json`: the int8 quantizer,
the chosen action, the input-distribution family and the data spec its inputs come from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from torch import Tensor, nn

from qrl.checkpoints import InputSpec, save_model
from qrl.data import ImageData
from qrl.errors import ConfigError
from qrl.pairing.layout import NETWORK_FILE, PAIR_FILE, POLICY_FILE
from qrl.policies.input import InputDistribution
from qrl.quant import QuantConfig
from qrl.runs import atomic_write
from qrl.specs import build

INPUT_PAIR_FORMAT = "qrl-input-pair-v1"
INPUT_PAIR_KEYS = ("kind", "quant", "action", "corruptions", "class_mix", "num_classes", "data")


@dataclass
class InputPair:
    """A network and the input distribution its policy chose, as `load_pair` returns them.

    Attributes:
        kind: `detrimental` or `robust`.
        network: the full-precision network (`nn.Module`, eval mode).
        quant: the int8 quantizer it was trained against (`onnx_int8_dynamic`).
        action: the policy's distribution, a float array in the search's `[-1, 1]^k` space.
        distribution: the input-distribution family that `action` indexes.
        data_spec: the `_target_` spec of the data its inputs are drawn from.
        run_dir: where the pair was trained.
    """

    kind: str
    network: nn.Module
    quant: QuantConfig
    action: np.ndarray
    distribution: InputDistribution
    data_spec: dict[str, Any]
    run_dir: Path
    _data: ImageData | None = field(default=None, repr=False)

    space = "input"

    @property
    def data(self) -> ImageData:
        """The data set (built from `data_spec` on first use, with its seeded splits)."""
        if self._data is None:
            self._data = build(self.data_spec, what="data")
        return self._data

    def to(self, device: torch.device | str) -> InputPair:
        """Move the network to `device`, in place. Returns the pair."""
        self.network = self.network.to(device)
        return self

    def sample(self, split: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """`n` labelled inputs of the pair's distribution, drawn from a data split as the
        search draws them: images (n, C, H, W) in [0, 1] and labels (n,)."""
        if split not in ("train", "val", "test"):
            raise ConfigError(f"split must be train, val or test, got {split!r}")
        generator = torch.Generator().manual_seed(int(seed))
        return self.distribution.sample(getattr(self.data, split), n, self.action, generator)

    def describe(self) -> str:
        """The distribution in words, e.g. "brightness +0.16, contrast x4.00"."""
        return self.distribution.describe(self.action)


def save_input_pair(
    out: Path,
    kind: str,
    network: nn.Module,
    agent: BaseAlgorithm,
    action: np.ndarray,
    distribution: InputDistribution,
    quant: QuantConfig,
    spec: dict[str, Any],
    data: ImageData,
    data_spec: dict[str, Any],
) -> None:
    """Write `network.pt`, `policy.zip` and `pair.json` (the last one marks a complete pair)."""
    save_model(out / NETWORK_FILE, network.eval(), spec, InputSpec.of(data))
    atomic_write(out / POLICY_FILE, agent.save)  # the temporary name has a suffix: SB3 keeps it
    meta = {
        "format": INPUT_PAIR_FORMAT,
        "space": "input",
        "kind": kind,
        "quant": quant.to_dict(),
        "action": [float(a) for a in action],
        "description": distribution.describe(action),
        "corruptions": [c.name for c in distribution.corruptions],
        "class_mix": distribution.class_mix,
        "num_classes": distribution.num_classes,
        "channels": distribution.channels,
        "data": data_spec,
        "network": NETWORK_FILE,
        "policy": POLICY_FILE,
    }
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(out / PAIR_FILE, lambda tmp: tmp.write_text(text))


def input_pair_of(meta: dict[str, Any], network: nn.Module, run_dir: Path) -> InputPair:
    """The `InputPair` of a checked `pair.json` and its loaded network."""
    distribution = InputDistribution(
        int(meta["num_classes"]),
        int(meta.get("channels", 1)),
        corruptions=list(meta["corruptions"]),
        class_mix=bool(meta["class_mix"]),
    )
    action = np.asarray(meta["action"], dtype=np.float64)
    if action.shape != (distribution.dim,):
        raise ValueError(f"action has {action.size} values, the family {distribution.dim}")
    quant = QuantConfig.from_dict(meta["quant"])
    return InputPair(
        str(meta["kind"]), network.eval(), quant, action, distribution, dict(meta["data"]), run_dir
    )
