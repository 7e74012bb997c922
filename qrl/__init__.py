"""qrl: find the inputs and bit-width policies under which dynamically quantized networks fail."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
