"""Quantization recipes: which PT2E quantizer decides what is quantized and how.

A recipe is a function returning a fresh torchao PT2E ``Quantizer`` configured for QAT,
registered with ``@QUANTIZERS.register(name)``.
"""
from __future__ import annotations

from typing import Any, Callable

from kdsearch.registry import Registry

__all__ = ["QUANTIZERS", "onnx_runtime_per_channel", "x86_per_channel"]

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


def _onnx_runtime_quantizer_class() -> type:
    import torch
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    class OnnxRuntimeQuantizer(X86InductorQuantizer):
        """X86InductorQuantizer without its conv+add fusions: every conv output gets its own
        Q/DQ, so ONNX Runtime turns each conv into QLinearConv and each residual add into QLinearAdd
        (Inductor fuses conv+add+relu into one int8 kernel; ONNX Runtime cannot, and leaves such convs in fp32)."""

        def _annotate_qat_conv2d_bn_binary_unary(self, *args: Any, **kwargs: Any) -> None:
            return None

        def _annotate_qat_conv2d_bn_binary(self, *args: Any, **kwargs: Any) -> None:
            return None

        def _annotate_conv2d_binary_unary(self, *args: Any, **kwargs: Any) -> None:
            return None

        def _annotate_conv2d_binary(self, *args: Any, **kwargs: Any) -> None:
            return None

        def annotate(self, model: Any) -> Any:
            """Also quantize both inputs of every residual add, so ONNX Runtime runs it as QLinearAdd."""
            from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, get_input_act_qspec

            super().annotate(model)
            if self.global_config is None:
                return model
            qspec = get_input_act_qspec(self.global_config)
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor):
                    continue
                args = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
                if len(args) != 2 or "quantization_annotation" in node.meta:
                    continue
                if not all(getattr(a.meta.get("val"), "dim", lambda: 0)() == 4 for a in args):
                    continue
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={a: qspec for a in args}, _annotated=True)
            return model

    return OnnxRuntimeQuantizer


@QUANTIZERS.register("onnx")
def onnx_runtime_per_channel() -> Any:
    """The x86 recipe's numerics (int8 per-channel weights, uint8 activations) laid out for ONNX Runtime:
    every conv quantized on its own, so the exported QDQ graph runs as QLinearConv / QLinearAdd."""
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import get_default_x86_inductor_quantization_config

    return _onnx_runtime_quantizer_class()().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
