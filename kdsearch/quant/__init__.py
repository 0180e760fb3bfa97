"""QAT-KD: quantization-aware training of the distilled student with the teacher (PT2E).

Names are resolved on first use, so ``import kdsearch.quant.config`` (and the CLI reading a
:class:`QatConfig`) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["QAT_META", "QAT_WEIGHTS", "QUANTIZERS", "QatConfig", "load_qat_model", "quantize_student"]

_WHERE = {
    "QAT_META": "kdsearch.quant.qat",
    "QAT_WEIGHTS": "kdsearch.quant.qat",
    "QUANTIZERS": "kdsearch.quant.recipes",
    "QatConfig": "kdsearch.quant.config",
    "load_qat_model": "kdsearch.quant.qat",
    "quantize_student": "kdsearch.quant.qat",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
