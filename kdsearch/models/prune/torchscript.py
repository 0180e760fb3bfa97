"""A TorchScript teacher as an exported program, its module hierarchy restored, so it is pruned like a ``.pt2``.

``TS2EPConverter`` turns a script module's graph into a ``torch.export`` program, but a flat one:
every call sits in the root module and its weights come back as buffers. A traced or scripted
module still knows, for each node of its inlined graph, which submodule it ran in
(``layer1(Sequential).0(BasicBlock).conv1(Conv2d)``); :func:`torchscript_program` carries that path
through the conversion and writes it where ``torch.export`` keeps a node's module stack, so
``torch.export.unflatten`` rebuilds ``layer1.0`` as a module of its own (a residual block a recipe
can remove) and :func:`~kdsearch.models.prune.lift_layers` follows it as it does a ``.pt2`` file.
"""
from __future__ import annotations

import re
import warnings
from unittest import mock

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from kdsearch.errors import ModelError
from kdsearch.models.graph_teacher import quiet_converter
from kdsearch.models.prune._depgraph import first_line

__all__ = ["torchscript_program", "unflattened"]

_MODULE_KEY = "kdsearch_module"  # the node's submodule path, in the node's "custom" meta (which export keeps)
_ROOT = "L__self__"  # how torch.export names the root in a node's nn_module_stack


# Frames of a node's call stack that enter no submodule: another method of the same module, a function
_NOT_SUBMODULES = {"SELF", "UNKNOWN_INSTANCE"}


def _module_path(node: torch._C.Node) -> str:
    """``layer1(Sequential).0(BasicBlock).conv1(Conv2d).SELF(Conv2d)`` → ``layer1.0.conv1`` ("": the root module)."""
    frames = re.findall(r"(\w+)\([^()]*\)", node.getModuleHierarchy() or "")
    return ".".join(name for name in frames if name not in _NOT_SUBMODULES)


def _scoped_converter() -> type:
    from torch._export.converter import TS2FXGraphConverter

    class ScopedConverter(TS2FXGraphConverter):
        """Tags every FX node made from a TorchScript node with the submodule path that node ran in."""

        def convert_node(self, node: torch._C.Node) -> None:
            last = next(reversed(self.fx_graph.nodes), None)
            super().convert_node(node)
            path = _module_path(node)
            for made in reversed(self.fx_graph.nodes):
                if made is last:
                    break
                made.meta.setdefault("custom", {})[_MODULE_KEY] = path

    return ScopedConverter


def _restore_module_stacks(program: ExportedProgram) -> None:
    """Give each call of ``program`` the ``nn_module_stack`` a ``torch.export`` of the original module would:
    ``{"L__self__": ("", ...), "L__self__layer1": ("layer1", ...), ...}``, a module's second call
    (a ReLU applied twice) keyed with ``@1``. Calls export made itself continue the call before them."""
    calls: dict[str, int] = {}
    current: list[tuple[str, str]] = []  # (path, key) of each module in the call being made, outermost first
    stack: dict[str, tuple[str, str]] | None = None
    for node in program.graph.nodes:
        custom = node.meta.get("custom") or {}
        path = custom.pop(_MODULE_KEY, None)
        if not custom:
            node.meta.pop("custom", None)
        if node.op != "call_function":
            continue
        if path is None:
            if stack is not None:
                node.meta["nn_module_stack"] = dict(stack)
            continue
        parts = path.split(".") if path else []
        entered: list[tuple[str, str]] = []
        for depth in range(len(parts)):
            prefix = ".".join(parts[: depth + 1])
            if depth < len(current) and current[depth][0] == prefix and entered == current[:depth]:
                entered.append(current[depth])  # still inside the same call of this module
            else:
                calls[prefix] = calls.get(prefix, -1) + 1
                entered.append((prefix, _ROOT + prefix + (f"@{calls[prefix]}" if calls[prefix] else "")))
        current = entered
        stack = {_ROOT: ("", "torchscript"), **{key: (prefix, "torchscript") for prefix, key in entered}}
        node.meta["nn_module_stack"] = stack


def _weights_as_parameters(program: ExportedProgram, script: nn.Module) -> None:
    """The converter lifts every weight as a buffer: make the script's parameters parameters again (a
    lifted layer trains them), and every tensor a leaf of its own (one a module can be copied with)."""
    parameters = {name for name, _ in script.named_parameters()}
    for spec in program.graph_signature.input_specs:
        if spec.kind not in (InputKind.BUFFER, InputKind.PARAMETER) or spec.target not in program.state_dict:
            continue
        tensor = program.state_dict[spec.target].detach().clone()
        if spec.target in parameters and tensor.is_floating_point():
            spec.kind, spec.persistent = InputKind.PARAMETER, None
            tensor = nn.Parameter(tensor)
        program.state_dict[spec.target] = tensor


def _in_module_order(program: ExportedProgram, script: nn.Module) -> None:
    """Order the program's modules as the script holds them (the converter starts with the ones it reads first),
    so the unflattened module lists its layers, and its state_dict its keys, as the original network did."""
    order = {name: i for i, (name, _) in enumerate(script.named_modules())}
    program._module_call_graph.sort(key=lambda entry: order.get(entry.fqn, len(order)))


def torchscript_program(script: torch.jit.ScriptModule, sample: torch.Tensor) -> ExportedProgram:
    """``script`` as an exported program whose nodes carry the submodule each ran in, its parameters parameters.

    ``sample`` (an input batch of two or more: the converter keeps every size dynamic, except sizes of one)
    is what it is traced on; the program computes what ``script`` does (checked on ``sample``).

    Raises:
        ModelError: the converter cannot convert ``script`` (one line naming what failed), or the program
            does not reproduce its output.
    """
    from torch._export import converter

    try:
        with quiet_converter(), mock.patch.object(converter, "TS2FXGraphConverter", _scoped_converter()):
            program = converter.TS2EPConverter(script, (sample,)).convert()
    except Exception as e:  # noqa: BLE001 - the converter fails on TorchScript it does not support
        cause = e.__cause__ if isinstance(e, RuntimeError) and e.__cause__ is not None else None
        why = f"{first_line(e)}: {first_line(cause)}" if cause else first_line(e)
        raise ModelError(f"cannot convert this TorchScript graph to a torch.export program ({why[:200]})") from None
    _weights_as_parameters(program, script)
    _restore_module_stacks(program)
    _in_module_order(program, script)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, got = script(sample), program.module()(sample)
    if not (isinstance(got, torch.Tensor) and torch.allclose(expected, got, rtol=1e-4, atol=1e-5)):
        raise ModelError("the torch.export program converted from this TorchScript graph does not reproduce its output")
    return program


def unflattened(program: ExportedProgram) -> nn.Module:
    """``torch.export.unflatten(program)``: its module hierarchy, each module running its own graph.

    Raises:
        ModelError: the program's module stacks do not nest into one tree.
    """
    with warnings.catch_warnings():
        # torch's own unflatten trips its pytree deprecation ("isinstance(treespec, LeafSpec)"): not the user's file
        warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
        try:
            return torch.export.unflatten(program)
        except Exception as e:  # noqa: BLE001 - a program whose module stacks unflatten cannot follow
            raise ModelError(f"cannot restore its module tree ({first_line(e)})") from None
