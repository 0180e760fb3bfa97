"""The PT2E steps of QAT on a plain ``nn.Module``: capture, prepare, freeze, convert.

``torch.ao.quantization`` is deprecated; torchao's PT2E flow works on a ``torch.export``
graph: :func:`prepare_for_qat` inserts fake-quantizers (and simulates conv+BN folding),
training adjusts weights and ranges, :func:`convert` produces the int8 (Q/DQ) model that
``torch.onnx.export`` turns into a QDQ ONNX graph.
"""
from __future__ import annotations

import torch
from torch import nn

from kdsearch.errors import ModelError

__all__ = ["MAX_BATCH", "prepare_for_qat", "set_phase", "freeze_batchnorm", "convert", "count_fake_quantizers"]

MAX_BATCH = 65536  # torch.export needs a finite bound on the symbolic batch; ONNX keeps it symbolic
_BATCH_NORMS = ("aten.batch_norm.default", "aten._native_batch_norm_legit.default", "aten.cudnn_batch_norm.default")


def prepare_for_qat(model: nn.Module, sample: torch.Tensor, recipe: str = "onnx") -> torch.fx.GraphModule:
    """Capture ``model`` (a copy is not made: pass one) with a dynamic batch and insert fake-quantizers.

    Strict capture (TorchDynamo) is used because it names every call of a module apart; the
    non-strict capture groups the two calls of a shared ``nn.ReLU`` into one partition, which
    the X86 quantizer rejects ("Input partition has more than one output node").

    Args:
        sample: ``(B, C, H, W)`` input, ``B >= 2`` so the batch stays symbolic.

    Returns:
        The prepared GraphModule in train mode; ``.train()``/``.eval()`` work on it.
    """
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from kdsearch.quant.recipes import QUANTIZERS

    quantizer = QUANTIZERS.get(recipe)()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        captured = torch.export.export(model.train(), (sample,), dynamic_shapes=({0: batch},), strict=True).module()
        prepared = prepare_qat_pt2e(captured, quantizer)
    except Exception as e:  # noqa: BLE001 - capture and annotation failures alike
        raise ModelError(
            f"{type(model).__name__} cannot be prepared for quantization-aware training ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); the model must be capturable by "
            "torch.export(strict=True) - or skip QAT and export with --int8 ptq"
        ) from e
    return allow_exported_model_train_eval(prepared)


def freeze_batchnorm(model: torch.fx.GraphModule) -> int:
    """Make every BatchNorm of an exported graph use (and stop updating) its running statistics.

    PT2E has no ``freeze_bn_stats``: the ``training`` argument of the graph's batch-norm ops is
    set to False. :func:`set_phase` re-applies it, because moving the graph to train mode
    switches every batch norm back.

    Returns:
        How many batch-norm ops were frozen.
    """
    frozen = 0
    for node in model.graph.nodes:
        if node.op == "call_function" and str(node.target) in _BATCH_NORMS and node.args[5] is True:
            args = list(node.args)
            args[5] = False  # (input, weight, bias, running_mean, running_var, training, momentum, eps, ...)
            node.args = tuple(args)
            frozen += 1
    if frozen:
        model.recompile()
    return frozen


def set_phase(model: torch.fx.GraphModule, *, training: bool, freeze_bn: bool, observe: bool) -> None:
    """Put a prepared graph in train or eval mode, BatchNorm frozen or not, observers on or off."""
    from torchao.quantization.pt2e import disable_observer, enable_observer

    model.train(training)
    if training and freeze_bn:
        freeze_batchnorm(model)
    model.apply(enable_observer if observe else disable_observer)


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Fold BatchNorm, quantize the weights and return the int8 model in eval mode, on the CPU."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared.to("cpu")
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    return allow_exported_model_train_eval(converted)


def count_fake_quantizers(model: nn.Module) -> int:
    """How many fake-quantize modules a prepared graph holds (0: nothing will be quantized)."""
    from torchao.quantization.pt2e import FakeQuantizeBase

    return sum(isinstance(m, FakeQuantizeBase) for m in model.modules())
