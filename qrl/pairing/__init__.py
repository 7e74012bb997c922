"""Network-policy pairs: save and load them, train them (Stage B), evaluate them (Stage C)."""

from qrl.pairing.input_store import InputPair
from qrl.pairing.store import (
    KINDS,
    NETWORK_FILE,
    PAIR_FILE,
    PAIR_FORMAT,
    POLICY_FILE,
    Pair,
    load_pair,
    save_pair,
    weights_sha256,
)

__all__ = [
    "KINDS",
    "NETWORK_FILE",
    "PAIR_FILE",
    "PAIR_FORMAT",
    "POLICY_FILE",
    "InputPair",
    "Pair",
    "load_pair",
    "save_pair",
    "weights_sha256",
]
