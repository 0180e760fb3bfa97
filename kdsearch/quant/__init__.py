"""QAT-KD: quantization-aware training of the distilled student with the teacher (PT2E)."""
from __future__ import annotations

from kdsearch.quant.qat import QAT_META, QAT_WEIGHTS, QatConfig, load_qat_model, quantize_student
from kdsearch.quant.recipes import QUANTIZERS

__all__ = ["QAT_META", "QAT_WEIGHTS", "QUANTIZERS", "QatConfig", "load_qat_model", "quantize_student"]
