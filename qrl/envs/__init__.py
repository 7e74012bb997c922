"""Gymnasium environments, registered under the `qrl/` namespace when `qrl` is imported.

import gymnasium as gym
import qrl  # noqa: F401  (registers the environments)

env = gym.make("qrl/QuantFailure-v0")  # trains and caches the digits victim on first use
env = gym.make("qrl/QuantBits-v0", reward="robust")
"""

from __future__ import annotations

QUANT_FAILURE_ID = "qrl/QuantFailure-v0"
QUANT_BITS_ID = "qrl/QuantBits-v0"


def register_envs() -> None:
    """Register the environments with Gymnasium (idempotent; imports no torch)."""
    from gymnasium.envs.registration import register, registry

    if QUANT_FAILURE_ID not in registry:
        register(
            id=QUANT_FAILURE_ID,
            entry_point="qrl.envs.quant_failure:QuantFailureEnv",
            max_episode_steps=8,
        )
    if QUANT_BITS_ID not in registry:
        register(
            id=QUANT_BITS_ID,
            entry_point="qrl.envs.quant_bits:QuantBitsEnv",
            max_episode_steps=32,
        )


register_envs()
