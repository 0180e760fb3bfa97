"""kdsearch: find, distil, quantize and export the student that learns best from your teacher."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
