"""A network-policy pair on disk: `save_pair` writes it, `load_pair` gives it back.

A pair's dir holds `network.pt` (the full-precision network), `policy.zip` (the SB3 PPO model
of its bit-width policy) and, written last, `pair.json` (its quantizer, bit set and budget).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.policies import BasePolicy
from torch import Tensor, nn

from qrl.checkpoints import InputSpec, load_model, save_model
from qrl.devices import module_device
from qrl.envs.quant_bits import bits_observation, observation_side
from qrl.errors import CheckpointError, ConfigError
from qrl.pairing.input_store import INPUT_PAIR_FORMAT, INPUT_PAIR_KEYS, InputPair, input_pair_of
from qrl.pairing.layout import KINDS as KINDS  # re-exported: qrl.pairing.store.KINDS
from qrl.pairing.layout import NETWORK_FILE, PAIR_FILE, POLICY_FILE, SPACES
from qrl.policies import BitsDecoder
from qrl.quant import QuantConfig, layer_names, quantized_copy, using_bits
from qrl.quant.modules import float_model
from qrl.runs import atomic_write

PAIR_FORMAT = "qrl-pair-v1"
BITS_PAIR_KEYS = ("kind", "quant", "bits_set", "bits_budget")


@dataclass
class Pair:
    """A network and its per-input bit-width policy, as `load_pair` returns them.

    Attributes:
        kind: `detrimental` or `robust`.
        network: the full-precision network (`nn.Module`, eval mode).
        quant: the dynamic quantizer of its quantized copy.
        quantized: `quantized_copy(network, quant)`, the network the policy's bits drive.
        policy: the SB3 policy that maps an observation of an input to actions in [-1, 1].
        decoder: turns actions into bit-widths from the allowed set under the budget.
        run_dir: where the pair was trained.
    """

    kind: str
    network: nn.Module
    quant: QuantConfig
    quantized: nn.Module
    policy: BasePolicy
    decoder: BitsDecoder
    run_dir: Path

    @property
    def qnetwork(self) -> nn.Module:
        """Deprecated: the quantized copy is `quantized`."""
        warnings.warn("Pair.qnetwork is now Pair.quantized", DeprecationWarning, stacklevel=2)
        return self.quantized

    def to(self, device: torch.device | str) -> Pair:
        """Move the network and its quantized copy to `device`, in place (the policy's small
        MLP stays on the CPU, where SB3 loaded it). Returns the pair."""
        self.network = self.network.to(device)
        self.quantized = self.quantized.to(device)
        return self

    @property
    def layer_names(self) -> list[str]:
        """The quantized layers, in the column order of `bits(x)`."""
        return layer_names(self.quantized)

    @torch.no_grad()
    def bits(self, x: Tensor, deterministic: bool = True) -> Tensor:
        """Per-input, per-layer activation bit-widths, an int64 tensor (N, L)."""
        side = observation_side((x.shape[-2], x.shape[-1]))
        obs, _ = bits_observation(self.quantized, x, side)
        actions, _ = self.policy.predict(obs, deterministic=deterministic)
        return torch.from_numpy(self.decoder.decode(np.asarray(actions)))

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """The network quantized under its own policy's bits, (N, num_classes), on x's device."""
        with using_bits(self.quantized, self.bits(x)):
            return self.quantized(x.to(module_device(self.quantized))).to(x.device)


@overload
def load_pair(run_dir: str | Path, space: Literal["bits"]) -> Pair: ...
@overload
def load_pair(run_dir: str | Path, space: Literal["input"]) -> InputPair: ...
@overload
def load_pair(run_dir: str | Path, space: str | None = None) -> Pair | InputPair: ...
def load_pair(run_dir: str | Path, space: str | None = None) -> Pair | InputPair:
    """Load the pair a finished `python -m qrl.pairs` run saved in `run_dir`: a bit-width
    `Pair`, or an `InputPair` (`space=input`).

    Args:
        space: `bits` or `input` to refuse the other kind of pair; None takes either.

    Raises:
        CheckpointError: the dir holds no finished pair, its files are missing or corrupt, or
            they are of another format; the message says how to train the pair again.
        ConfigError: the pair is not of the expected `space`.
    """
    run_dir = Path(run_dir)
    meta = _read_meta(run_dir)
    found = "input" if meta["format"] == INPUT_PAIR_FORMAT else "bits"
    if space is not None and space != found:
        if space not in SPACES:
            raise ConfigError(f"space must be one of {list(SPACES)}, got {space!r}")
        raise ConfigError(
            f"{run_dir} holds {SPACES[found]}, and {SPACES[space]} is expected here: point to "
            f"a pair trained with `python -m qrl.pairs space={space}`"
        )
    network, _ = load_model(run_dir / NETWORK_FILE, advice=retrain_advice(run_dir))
    if found == "input":
        try:
            return input_pair_of(meta, network, run_dir)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{run_dir / PAIR_FILE} is damaged ({exc}); {retrain_advice(run_dir)}"
            ) from exc
    quant = QuantConfig.from_dict(meta["quant"])
    policy = _load_policy(run_dir)
    quantized = quantized_copy(network, quant).eval()
    decoder = BitsDecoder(len(layer_names(quantized)), meta["bits_set"], meta["bits_budget"])
    return Pair(meta["kind"], network, quant, quantized, policy, decoder, run_dir)


def retrain_advice(run_dir: Path) -> str:
    """What recovers a pair dir whose files are broken: training the pair again. A plain
    rerun would load the same files again; `resume=false` replaces them."""
    return (
        f"to train it again, rerun `python -m qrl.pairs` with the settings that made it "
        f"({run_dir / 'config.yaml'}) plus resume=false"
    )


def _read_meta(run_dir: Path) -> dict[str, Any]:
    """`pair.json`, checked: a finished pair of this qrl's format."""
    meta_path = run_dir / PAIR_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{meta_path} does not exist: point to a finished `python -m qrl.pairs` run dir"
        )
    advice = retrain_advice(run_dir)
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is corrupt ({exc}); {advice}") from exc
    if not isinstance(meta, dict):
        found = f"a JSON {type(meta).__name__}, not an object"
    elif "format" not in meta:
        found = "no format key"
    else:
        found = f"format {meta['format']!r}"
    if not isinstance(meta, dict) or meta.get("format") not in (PAIR_FORMAT, INPUT_PAIR_FORMAT):
        raise CheckpointError(
            f"{meta_path} is a pair of another format: it has {found}, this qrl reads "
            f"{PAIR_FORMAT} and {INPUT_PAIR_FORMAT}; {advice}"
        )
    keys = INPUT_PAIR_KEYS if meta["format"] == INPUT_PAIR_FORMAT else BITS_PAIR_KEYS
    missing = sorted(set(keys) - set(meta))
    if missing:
        raise CheckpointError(f"{meta_path} lacks {missing}; {advice}")
    return meta


def _load_policy(run_dir: Path) -> BasePolicy:
    """The bit-width policy of `policy.zip` (an SB3 PPO model)."""
    path = run_dir / POLICY_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: the pair in {run_dir} is incomplete; {retrain_advice(run_dir)}"
        )
    try:
        return PPO.load(path, device="cpu").policy.eval()
    except Exception as exc:  # SB3 raises many kinds for a broken zip
        raise CheckpointError(
            f"{path} is corrupt or not an SB3 PPO model ({type(exc).__name__}); "
            f"{retrain_advice(run_dir)}"
        ) from exc


def save_pair(
    out: Path,
    kind: str,
    quantized: nn.Module,
    ppo: PPO,
    decoder: BitsDecoder,
    quant: QuantConfig,
    spec: dict[str, Any],
    inputs: InputSpec,
) -> None:
    """Write `network.pt`, `policy.zip` and `pair.json` (the last one marks a complete pair)."""
    save_model(out / NETWORK_FILE, float_model(quantized).eval(), spec, inputs)
    atomic_write(out / POLICY_FILE, ppo.save)  # the temporary name has a suffix: SB3 keeps it
    meta = {
        "format": PAIR_FORMAT,
        "kind": kind,
        "quant": quant.to_dict(),
        "bits_set": [int(b) for b in decoder.levels],
        "bits_budget": decoder.budget,
        "layer_names": layer_names(quantized),
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
