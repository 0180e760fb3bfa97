"""QAT-KD: quantization-aware training of the distilled student with the teacher (PT2E).

Names are resolved on first use, so ``import kdsearch.quant.config`` (and the CLI reading a
:class:`QatConfig`) does not import torch.
"""
from __future__ import annotations

from kdsearch.lazy import lazy_attributes

__all__ = ["QAT_META", "QAT_WEIGHTS", "QUANTIZERS", "QatConfig", "load_qat_model", "quantize_student"]

__getattr__ = lazy_attributes(__name__, {
    "QAT_META": "qat",
    "QAT_WEIGHTS": "qat",
    "QUANTIZERS": "recipes",
    "QatConfig": "config",
    "load_qat_model": "qat",
    "quantize_student": "qat",
})
