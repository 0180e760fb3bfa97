"""A ``.pt2`` teacher's layers lifted back into modules, so Torch-Pruning can follow them.

``torch.export.load(path).module()`` is a flat graph that calls ``aten.conv2d``, ``aten.linear``
and ``aten.batch_norm`` on bare parameters: Torch-Pruning, which hooks ``nn.Conv2d`` /
``nn.Linear`` / ``nn.BatchNorm*`` modules, finds nothing to cut in it. :func:`lift_layers`
rewrites each such call into a call of a module built around the same parameters, placed at the
path the parameters already had (``layer1.0.conv1.weight`` becomes the weight of the
``nn.Conv2d`` at ``layer1.0.conv1``), so the state_dict keeps its keys and groups keep their
layers' original names.

Given ``torch.export.unflatten(program)`` instead, whose submodules (``layer1.0``) each run a graph
of their own, it lifts every submodule's graph the same way and keeps the hierarchy: a residual
block is then a module again, which a recipe can remove by its path.
"""
from __future__ import annotations

import copy
import operator
import warnings
from typing import Any, Callable

import torch
from torch import fx, nn

from kdsearch.errors import ModelError
from kdsearch.models.prune._depgraph import first_line

__all__ = ["lift_layers"]

_aten = torch.ops.aten


def _pair(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _arg(node: fx.Node, index: int, default: Any) -> Any:
    return node.args[index] if len(node.args) > index else default


def _tensor(root: nn.Module, node: Any, parameter: bool = True) -> torch.Tensor | None:
    """The parameter (or, unless ``parameter``, buffer) a ``get_attr`` node reads; None for a missing optional argument."""
    if node is None:
        return None
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        raise _Skip
    tensor = operator.attrgetter(node.target)(root)
    if parameter and not isinstance(tensor, nn.Parameter):
        raise _Skip  # a constant: a module could not train it
    return tensor


class _Skip(Exception):
    """This call cannot be lifted (its weights are computed, shared or live beside other state); it stays as it is."""


def _owner(nodes: list[Any]) -> str:
    """The module path holding the weights ``nodes`` read, each read by this call alone ("": the graph's own module)."""
    targets = [n.target for n in nodes if n is not None]
    owners = {t.rpartition(".")[0] for t in targets}
    if len(owners) != 1 or any(len(n.users) != 1 for n in nodes if n is not None):
        raise _Skip
    return owners.pop()


def _conv(root: nn.Module, node: fx.Node) -> tuple[str, nn.Module, tuple[str, ...]]:
    # conv2d(input, weight, bias, stride, padding, dilation, groups)
    return _conv2d(root, node, _arg(node, 3, 1), _arg(node, 4, 0), _arg(node, 5, 1), _arg(node, 6, 1))


def _convolution(root: nn.Module, node: fx.Node) -> tuple[str, nn.Module, tuple[str, ...]]:
    # convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups): what a
    # converted TorchScript graph calls
    stride, padding, dilation, transposed, _, groups = node.args[3:9]
    if transposed:
        raise _Skip  # no nn.Conv2d computes it
    return _conv2d(root, node, stride, padding, dilation, groups)


def _conv2d(root: nn.Module, node: fx.Node, stride: Any, padding: Any, dilation: Any,
            groups: int) -> tuple[str, nn.Module, tuple[str, ...]]:
    w, b = node.args[1], _arg(node, 2, None)
    weight, bias = _tensor(root, w), _tensor(root, b)
    if weight.dim() != 4:
        raise _Skip
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=_pair(stride),
                     padding=_pair(padding), dilation=_pair(dilation), groups=groups, bias=bias is not None,
                     device="meta")
    conv.weight = weight
    if bias is not None:
        conv.bias = bias
    return _owner([w, b]), conv, ("weight", "bias")


def _linear(root: nn.Module, node: fx.Node) -> tuple[str, nn.Module, tuple[str, ...]]:
    w, b = node.args[1], _arg(node, 2, None)
    weight, bias = _tensor(root, w), _tensor(root, b)
    if weight.dim() != 2:
        raise _Skip
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = weight
    if bias is not None:
        linear.bias = bias
    return _owner([w, b]), linear, ("weight", "bias")


def _batch_norm(root: nn.Module, node: fx.Node) -> tuple[str, nn.Module, tuple[str, ...]]:
    # batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
    w, b, mean, var = node.args[1:5]
    training, momentum, eps = node.args[5:8]
    value = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    if training or None in (w, b, mean, var) or value is None or value.dim() not in (2, 3, 4):
        raise _Skip  # batch statistics in the graph itself, or a rank no BatchNorm module takes
    kind = nn.BatchNorm2d if value.dim() == 4 else nn.BatchNorm1d
    weight = _tensor(root, w)
    bn = kind(weight.shape[0], eps=eps, momentum=momentum, device="meta")
    bn.weight, bn.bias = weight, _tensor(root, b)
    bn.running_mean, bn.running_var = _tensor(root, mean, parameter=False), _tensor(root, var, parameter=False)
    path = _owner([w, b, mean, var])
    counted = getattr(root.get_submodule(path), "num_batches_tracked", None)
    bn.num_batches_tracked = counted if counted is not None else torch.zeros((), dtype=torch.long)
    return path, bn, ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


_LIFTS: dict[Any, Callable[[nn.Module, fx.Node], tuple[str, nn.Module, tuple[str, ...]]]] = {
    _aten.conv2d.default: _conv,
    _aten.convolution.default: _convolution,
    _aten.linear.default: _linear,
    _aten.batch_norm.default: _batch_norm,
}


def _holds_only(module: nn.Module, names: tuple[str, ...]) -> bool:
    held = {n for n, _ in module.named_parameters(recurse=False)} | {n for n, _ in module.named_buffers(recurse=False)}
    return not any(True for _ in module.children()) and held <= set(names)


def _lift_calls(root: nn.Module, graph: fx.Graph) -> None:
    """Rewrite in place each liftable call of ``graph`` (run by ``root``) whose weights a submodule of ``root``
    holds, and nothing else, into a call of a module put at that submodule's path."""
    lifted_paths = []
    for node in list(graph.nodes):
        lift = _LIFTS.get(node.target) if node.op == "call_function" else None
        if lift is None or node.kwargs:
            continue
        try:
            path, module, names = lift(root, node)
        except _Skip:
            continue
        if not path:
            continue  # weights of ``root`` itself: only its parent can put a module in its place (_as_layer)
        parent, _, leaf = path.rpartition(".")
        holder = root.get_submodule(parent)
        if not _holds_only(getattr(holder, leaf), names):
            continue
        setattr(holder, leaf, module)
        lifted_paths.append(path)
        reads = [a for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"]
        with graph.inserting_before(node):
            call = graph.call_module(path, (node.args[0],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        for read in reads:
            if not read.users:
                graph.erase_node(read)
    for node in list(graph.nodes):  # unused reads (num_batches_tracked) of what the lifted modules now hold
        if node.op == "get_attr" and not node.users and node.target.rpartition(".")[0] in lifted_paths:
            graph.erase_node(node)
    graph.lint()


def _as_layer(module: nn.Module, graph: fx.Graph) -> nn.Module | None:
    """The layer ``module`` is, when its ``graph`` is one liftable call of its one input on weights it alone holds."""
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    calls = [n for n in graph.nodes if n.op not in ("placeholder", "get_attr", "output")]
    outputs = [n.args[0] for n in graph.nodes if n.op == "output"]
    if len(inputs) != 1 or len(calls) != 1 or outputs != calls:
        return None
    node = calls[0]
    lift = _LIFTS.get(node.target) if node.op == "call_function" else None
    if lift is None or node.kwargs or node.args[0] is not inputs[0]:
        return None
    try:
        path, layer, names = lift(module, node)
    except _Skip:
        return None
    return layer if path == "" and _holds_only(module, names) else None


def _local_sizes(graph: fx.Graph) -> list[int]:
    """Take the sizes a submodule's caller passes it (a dynamic batch size) from its tensor inputs instead,
    so that it takes tensors only (a residual block then takes its stream alone); the positions of the
    inputs it no longer takes."""
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    dims = [(node, dim, size.node.expr) for node in inputs if isinstance(node.meta.get("val"), torch.Tensor)
            for dim, size in enumerate(node.meta["val"].shape) if isinstance(size, torch.SymInt)]
    first = next((n for n in graph.nodes if n.op != "placeholder"), None)
    if not dims or first is None:
        return []
    dropped = []
    for position, node in enumerate(inputs):
        value = node.meta.get("val")
        if not isinstance(value, torch.SymInt):
            continue
        source = next(((t, dim) for t, dim, expr in dims if expr == value.node.expr), None)
        if source is None:
            continue
        with graph.inserting_before(first):
            size = graph.call_function(_aten.sym_size.int, source)
        size.meta = dict(node.meta)
        node.replace_all_uses_with(size)
        graph.erase_node(node)
        dropped.append(position)
    return dropped


def _lift_tree(module: nn.Module, dropped: dict[int, list[int]], *, root: bool = False) -> nn.Module:
    """``module``, a submodule of an unflattened program, as a layer or a ``GraphModule`` with its graph lifted
    (children first); its parameters are shared with ``module``, its children and their order kept.

    ``dropped`` collects, by ``id`` of each lifted submodule, the positions of the inputs (sizes) it
    no longer takes; its callers' calls are rewritten to match.
    """
    graph = getattr(module, "graph", None)
    if isinstance(graph, fx.Graph):
        graph = copy.deepcopy(graph)
        layer = _as_layer(module, graph)
        if layer is not None:
            return layer
        lifted: nn.Module = fx.GraphModule(nn.Module(), fx.Graph(),
                                           class_name="LiftedProgram" if root else "LiftedModule")
    elif type(module) is nn.Module:  # holds attributes for its children, runs nothing
        lifted = nn.Module()
    else:
        raise ModelError(f"cannot lift its submodule of type {type(module).__name__}")
    for name, child in module.named_children():
        lifted.add_module(name, _lift_tree(child, dropped))
    for name, parameter in module.named_parameters(recurse=False):
        lifted.register_parameter(name, parameter)
    for name, buffer in module.named_buffers(recurse=False):
        lifted.register_buffer(name, buffer, persistent=name not in module._non_persistent_buffers_set)
    if graph is None:
        return lifted
    for node in graph.nodes:
        if node.op == "get_attr":  # constants the graph reads (neither parameters nor buffers)
            parent, _, leaf = node.target.rpartition(".")
            if not hasattr(lifted.get_submodule(parent), leaf):
                setattr(lifted.get_submodule(parent), leaf, getattr(module.get_submodule(parent), leaf))
        elif node.op == "call_module" and dropped.get(id(lifted.get_submodule(node.target))):
            if node.kwargs:
                raise ModelError(f"cannot lift the call of {node.target} by keyword")
            positions = dropped[id(lifted.get_submodule(node.target))]
            node.args = tuple(a for i, a in enumerate(node.args) if i not in positions)
    if not root:  # the program's own inputs stay as the user passes them
        dropped[id(lifted)] = _local_sizes(graph)
    _lift_calls(lifted, graph)
    lifted.graph = graph  # compiles its forward
    return lifted


def _lift_unflattened(program: nn.Module) -> fx.GraphModule:
    try:
        signature = program.module_call_graph[0].signature
        in_spec, out_spec = signature.in_spec, signature.out_spec
        names = signature.forward_arg_names or [f"arg_{i}" for i in range(in_spec.child(0).num_children)]
        lifted = _lift_tree(program, {}, root=True)
        # the root flattens its inputs and rebuilds its outputs as the exported module does
        lifted.graph._codegen = fx.graph._PyTreeCodeGen(fx.graph._PyTreeInfo(names, in_spec, out_spec))
        lifted._in_spec, lifted._out_spec = in_spec, out_spec
        lifted.recompile()
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - a program unflatten split in a way this does not follow
        raise ModelError(f"cannot lift its module tree ({first_line(e)})") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
        return copy.deepcopy(lifted)  # its own parameters: cutting or training it leaves the teacher as it was


def lift_layers(program_module: nn.Module) -> fx.GraphModule:
    """A copy of an exported program's module whose conv, linear and batch-norm calls are modules.

    ``program_module`` is ``torch.export.load(path).module()`` (one flat graph: the layers come
    back, the module hierarchy does not) or ``torch.export.unflatten(torch.export.load(path))``
    (the hierarchy comes back too: ``layer1.0`` is a module again, its own layers inside it).
    Calls that cannot be lifted (weights computed in the graph, shared by two calls, or kept beside
    other state; batch norm in training mode) stay as they are. The copy, in eval mode, runs the
    same computation; unlike the exported module it also takes ``train()`` (its lifted BatchNorms
    then normalise with batch statistics, like any network in training).

    Raises:
        ModelError: ``program_module`` is not the module of an exported program, or an unflattened
            one holds a submodule this cannot lift (one called with several signatures).
    """
    if isinstance(program_module, torch.export.UnflattenedModule):
        return _lift_unflattened(program_module).eval()
    if not isinstance(program_module, fx.GraphModule) or not hasattr(program_module, "_in_spec"):
        raise ModelError(f"expected the module of a torch.export program (torch.export.load(path).module()), "
                         f"got a {type(program_module).__name__}")
    with warnings.catch_warnings():
        # copying the program's tree specs trips torch's own pytree deprecation ("isinstance(treespec, LeafSpec)")
        warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
        source = copy.deepcopy(program_module)
    graph = source.graph
    root = nn.Module()
    for name, child in source.named_children():
        root.add_module(name, child)
    for name, tensor in [*source.named_parameters(recurse=False), *source.named_buffers(recurse=False)]:
        setattr(root, name, tensor)
    _lift_calls(root, graph)
    lifted = fx.GraphModule(root, graph, class_name="LiftedProgram")
    lifted._in_spec, lifted._out_spec = source._in_spec, source._out_spec
    return lifted.eval()  # the exported graph normalised with running statistics: so does the lifted one, until train()
