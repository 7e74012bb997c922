"""Environment throughput on the digits victim, measured side by side in one run.

    python benchmarks/env_throughput.py [--seconds 5]

- `QuantFailure-v0` steps per second (each step: a 256-input batch through T, S and S_q);
- `QuantBits-v0` single-input steps per second (= inputs per second);
- `QuantBitsVecEnv` inputs per second at N = 64 and 256 (each step: N inputs in one pass),
  and its ratio to the single-input form (target >= 10x).

Uses the cached default victim (distilled on first use, under a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from qrl.envs.quant_bits import QuantBitsEnv, QuantBitsVecEnv
from qrl.envs.quant_failure import QuantFailureEnv
from qrl.quant import preset
from qrl.victim import default_victim


def rate(step: Callable[[], None], seconds: float) -> float:
    """Calls per second of `step`, over at least `seconds` after two warm-up calls."""
    step()
    step()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        calls += 1
    return calls / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    victim = default_victim(preset("int4_dynamic"))
    rng = np.random.default_rng(0)

    failure = QuantFailureEnv(victim, mode="joint")
    failure.reset(seed=0)
    failure_rate = rate(
        lambda: failure.step(rng.uniform(-1, 1, failure.action_space.shape)), args.seconds
    )

    single = QuantBitsEnv(victim)
    single.reset(seed=0)
    single_rate = rate(
        lambda: single.step(rng.uniform(-1, 1, single.action_space.shape)), args.seconds
    )

    print(
        f"QuantFailure-v0 (joint, batch 256)      {failure_rate:8.1f} steps/s  "
        f"({failure_rate * 256:8.0f} inputs/s)"
    )
    print(
        f"QuantBits-v0 single input               {single_rate:8.1f} steps/s  "
        f"({single_rate:8.0f} inputs/s)"
    )
    for n in (64, 256):
        venv = QuantBitsVecEnv(num_envs=n, seed=0, victim=victim)
        venv.reset()
        shape = (n, venv.action_space.shape[0])
        vec_rate = rate(
            lambda venv=venv, shape=shape: venv.step(rng.uniform(-1, 1, shape)), args.seconds
        )
        ratio = vec_rate * n / single_rate
        print(
            f"QuantBitsVecEnv N={n:<4d}                  {vec_rate:8.1f} steps/s  "
            f"({vec_rate * n:8.0f} inputs/s)  {ratio:6.1f}x single-input  target >= 10x: "
            f"{'met' if ratio >= 10 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
