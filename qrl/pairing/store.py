"""A network-policy pair on disk: `save_pair` writes it, `load_pair` gives it back.

A pair's dir holds `network.pt` (the full-precision network), `policy.zip` (the SB3 PPO model
of its bit-width policy) and, written last, `pair.json` (its quantizer, bit set and budget).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.policies import BasePolicy
from torch import Tensor, nn

from qrl.checkpoints import InputSpec, load_model, save_model
from qrl.envs.quant_bits import bits_observation, observation_side
from qrl.errors import CheckpointError
from qrl.policies import BitsDecoder
from qrl.quant import QuantConfig, layer_names, quantized_copy, using_bits
from qrl.quant.modules import float_model
from qrl.runs import atomic_write

KINDS = ("detrimental", "robust")
PAIR_FILE, NETWORK_FILE, POLICY_FILE = "pair.json", "network.pt", "policy.zip"
PAIR_FORMAT = "qrl-pair-v1"


@dataclass
class Pair:
    """A network and its per-input bit-width policy, as `load_pair` returns them.

    Attributes:
        kind: `detrimental` or `robust`.
        network: the full-precision network (`nn.Module`, eval mode).
        quant: the dynamic quantizer of its quantized copy.
        qnetwork: `quantized_copy(network, quant)`, the network the policy's bits drive.
        policy: the SB3 policy that maps an observation of an input to actions in [-1, 1].
        decoder: turns actions into bit-widths from the allowed set under the budget.
        run_dir: where the pair was trained.
    """

    kind: str
    network: nn.Module
    quant: QuantConfig
    qnetwork: nn.Module
    policy: BasePolicy
    decoder: BitsDecoder
    run_dir: Path

    @property
    def layer_names(self) -> list[str]:
        """The quantized layers, in the column order of `bits(x)`."""
        return layer_names(self.qnetwork)

    @torch.no_grad()
    def bits(self, x: Tensor, deterministic: bool = True) -> Tensor:
        """Per-input, per-layer activation bit-widths, an int64 tensor (N, L)."""
        side = observation_side((x.shape[-2], x.shape[-1]))
        obs, _ = bits_observation(self.qnetwork, x, side)
        actions, _ = self.policy.predict(obs, deterministic=deterministic)
        return torch.from_numpy(self.decoder.decode(np.asarray(actions)))

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """The network quantized under its own policy's bits, (N, num_classes)."""
        with using_bits(self.qnetwork, self.bits(x)):
            return self.qnetwork(x)


def load_pair(run_dir: str | Path) -> Pair:
    """Load the pair a finished `python -m qrl.pairs` run saved in `run_dir`.

    Raises:
        CheckpointError: the dir holds no finished pair, or its files are corrupt.
    """
    run_dir = Path(run_dir)
    meta_path = run_dir / PAIR_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{meta_path} does not exist: point to a finished `python -m qrl.pairs` run dir"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path} is corrupt ({exc}); re-run the pair") from exc
    if not isinstance(meta, dict) or meta.get("format") != PAIR_FORMAT:
        raise CheckpointError(f"{meta_path} is not a qrl pair ({PAIR_FORMAT})")
    missing = sorted({"kind", "quant", "bits_set", "bits_budget"} - set(meta))
    if missing:
        raise CheckpointError(f"{meta_path} lacks {missing}; re-run the pair")
    network, _ = load_model(run_dir / NETWORK_FILE)
    quant = QuantConfig.from_dict(meta["quant"])
    try:
        policy = PPO.load(run_dir / POLICY_FILE, device="cpu").policy.eval()
    except Exception as exc:  # SB3 raises many kinds for a broken zip
        raise CheckpointError(
            f"{run_dir / POLICY_FILE} is corrupt or not an SB3 PPO model ({type(exc).__name__})"
        ) from exc
    qnetwork = quantized_copy(network, quant).eval()
    decoder = BitsDecoder(len(layer_names(qnetwork)), meta["bits_set"], meta["bits_budget"])
    return Pair(meta["kind"], network, quant, qnetwork, policy, decoder, run_dir)


def save_pair(
    out: Path,
    kind: str,
    qnet: nn.Module,
    ppo: PPO,
    decoder: BitsDecoder,
    quant: QuantConfig,
    spec: dict[str, Any],
    inputs: InputSpec,
) -> None:
    """Write `network.pt`, `policy.zip` and `pair.json` (the last one marks a complete pair)."""
    save_model(out / NETWORK_FILE, float_model(qnet).eval(), spec, inputs)
    atomic_write(out / POLICY_FILE, ppo.save)  # the temporary name has a suffix: SB3 keeps it
    meta = {
        "format": PAIR_FORMAT,
        "kind": kind,
        "quant": quant.to_dict(),
        "bits_set": [int(b) for b in decoder.levels],
        "bits_budget": decoder.budget,
        "layer_names": layer_names(qnet),
        "network": NETWORK_FILE,
        "policy": POLICY_FILE,
    }
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(out / PAIR_FILE, lambda tmp: tmp.write_text(text))


def weights_sha256(model: nn.Module) -> str:
    """A fingerprint of a model's weights (names and values; not the file's bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
