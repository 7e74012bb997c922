"""qrl: find the inputs and bit-width policies under which dynamically quantized networks fail.

Importing qrl registers its Gymnasium environments (`qrl/QuantFailure-v0`, `qrl/QuantBits-v0`).
"""

from __future__ import annotations

__version__ = "0.1.0"

from qrl.envs import register_envs as _register_envs

_register_envs()

__all__ = ["__version__", "audit"]


def __getattr__(name: str) -> object:
    # `qrl.audit(...)` without importing torch at `import qrl`: load the module on first use.
    if name == "audit":
        import importlib

        return importlib.import_module("qrl.audit")
    raise AttributeError(f"module 'qrl' has no attribute {name!r}")
