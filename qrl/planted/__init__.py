"""Planted failures: models exact in float whose dynamic-quantized copies collapse in a known
region of the input-distribution space. They calibrate searches: a search that cannot find a
planted failure will not find a subtle one.

- `outlier`: the first one, a brightness-triggered outlier unit in a digits MLP.
- `plant`: linear image statistics and the weight edit that plants a band detector on them
  (MLP and CNN).
- `bases`: the trained digits models members are planted into (trained once, cached).
- `family`: members generated from a seed (architecture, quantizer, region), each knowing its
  region, so whether a search found it is a fact; a tuning / held-out split.
"""

from qrl.planted.outlier import plant_brightness_outlier, planted_digits_mlp

__all__ = ["plant_brightness_outlier", "planted_digits_mlp"]
