"""Quantization recipes: which PT2E quantizer decides what is quantized and how.

A recipe is a function returning a fresh torchao PT2E ``Quantizer`` configured for QAT,
registered with ``@QUANTIZERS.register(name)``.
"""
from __future__ import annotations

from typing import Any, Callable

from kdsearch.registry import Registry

__all__ = ["QUANTIZERS", "x86_per_channel"]

QUANTIZERS: Registry[Callable[[], Any]] = Registry("quantization recipe")


@QUANTIZERS.register("x86")
def x86_per_channel() -> Any:
    """X86InductorQuantizer for QAT: int8 per-channel symmetric weights, uint8 per-tensor activations.

    uint8 activations with int8 weights (U8S8) are what ONNX Runtime's CPU kernels run fastest.
    """
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
