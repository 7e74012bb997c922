"""Policies that choose what the quantized network sees: input distributions and bit-widths."""

from qrl.policies.bits import (
    DEFAULT_BITS_SET,
    DEFAULT_BUDGET,
    BitsDecoder,
    BitsPolicy,
    LearnedBits,
    RandomBits,
    StaticBits,
)
from qrl.policies.input import CORRUPTIONS, DEFAULT_CORRUPTIONS, InputDistribution

__all__ = [
    "CORRUPTIONS",
    "DEFAULT_BITS_SET",
    "DEFAULT_BUDGET",
    "DEFAULT_CORRUPTIONS",
    "BitsDecoder",
    "BitsPolicy",
    "InputDistribution",
    "LearnedBits",
    "RandomBits",
    "StaticBits",
]
