"""The Torch-Pruning side: a teacher's dependency graph, its channel groups, and cutting them.

A channel group is what Torch-Pruning's ``DependencyGraph`` couples to the output channels of
one convolution or linear layer: the BN after it, the inputs of every layer that reads it, and,
through residual adds, every other layer writing the same stream. A group is named by the module
path of its first layer (in module order) whose output channels it cuts. Groups that reach the
network's output (the classifier's classes) are never offered.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from kdsearch.errors import ModelError

__all__ = ["ChannelGroup", "channel_groups", "cut_channels", "dependency_graph", "first_line", "forward_outputs",
           "output_shapes", "check_forward", "scratch_copy", "working_groups", "IMPORTANCES"]

# The importance criteria a recipe may name, each a Torch-Pruning importance class (see _importance).
IMPORTANCES = ("magnitude", "bn_scale")


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable group of a network, as Torch-Pruning couples it."""

    name: str  # module path of the group's first conv or linear (in module order) whose output channels it cuts
    channels: int  # the root's output channels before any cut
    layers: tuple[str, ...]  # module paths of every layer with weights the group cuts (in or out), in module order

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "channels": self.channels, "layers": list(self.layers)}


def first_line(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 160 characters), for a one-line report."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


def forward_outputs(model: nn.Module, example_input: torch.Tensor) -> list[torch.Tensor]:
    """``model(example_input)`` under ``no_grad``, as a flat list of tensors."""
    with torch.no_grad():
        out = model(example_input)
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
        return list(out)
    if isinstance(out, dict) and all(isinstance(o, torch.Tensor) for o in out.values()):
        return list(out.values())
    raise ModelError(f"the teacher returns a {type(out).__name__}, not tensors; only a network returning tensors can be pruned")


def scratch_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` to cut, failing clearly for networks that cannot be copied."""
    try:
        with warnings.catch_warnings():
            # copying a lifted .pt2 program's tree specs trips torch's own pytree deprecation ("LeafSpec")
            warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
            return copy.deepcopy(model)
    except Exception as e:  # noqa: BLE001 - an unflattened .pt2 program, a module holding a lock...
        raise ModelError(f"the teacher cannot be copied for pruning ({first_line(e)}); "
                         "give it as a model directory or a zoo model") from None


def dependency_graph(model: nn.Module, example_input: torch.Tensor):
    """Torch-Pruning's ``DependencyGraph`` of ``model`` traced on ``example_input`` (leaves it in eval mode).

    Raises:
        ModelError: Torch-Pruning cannot trace the network.
    """
    import torch_pruning as tp

    model.eval()  # tracing runs a forward: BN statistics must not move
    try:
        with torch.enable_grad():  # the graph is read from autograd
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except Exception as e:  # noqa: BLE001 - whatever the tracer trips on is the network's shape
        raise ModelError(f"Torch-Pruning cannot trace this network's channel dependencies ({first_line(e)})") from None


def _roots() -> tuple[type[nn.Module], ...]:
    import torch_pruning as tp

    return (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)


def _reaches_output(graph, group) -> bool:
    """Whether cutting ``group`` would change the network's output width (it cuts output channels of
    a node nothing reads: the classifier, or an activation or reshape right after it)."""
    return any(graph.is_out_channel_pruning_fn(dep.handler) and not dep.target.outputs for dep, _ in group)


def _root_group(graph, root: nn.Module):
    """The group of every channel of ``root``'s output, on the network as it is now."""
    pruner = graph.get_pruner_of_module(root)
    return graph.get_pruning_group(root, pruner.prune_out_channels, list(range(pruner.get_out_channels(root))))


def channel_groups(model: nn.Module, graph) -> list[ChannelGroup]:
    """Every group of ``model`` (traced into ``graph``) a recipe may name, in module order, without checking
    that cutting it works; groups that reach the output and single channels are left out.

    A group is named by the first layer, in ``model.named_modules()`` order, whose output channels it
    cuts (a block's expansion conv, a stage's first conv writing the residual stream): a name that
    depends on the network, not on the order Torch-Pruning visits it.
    """
    order = {module: (i, name) for i, (name, module) in enumerate(model.named_modules())}
    found = []
    for group in graph.get_all_groups(root_module_types=_roots()):
        if _reaches_output(graph, group):
            continue
        targets = [(d.target.module, d.handler) for d, _ in group if d.target.module in order]
        writers = sorted(order[m] for m, handler in targets
                         if isinstance(m, _roots()) and graph.is_out_channel_pruning_fn(handler))
        if not writers:
            continue
        root = group[0].dep.target.module
        channels = graph.get_out_channels(root)
        if channels < 2:
            continue
        layers = sorted({order[m] for m, _ in targets if any(True for _ in m.parameters(recurse=False))})
        found.append((writers[0], ChannelGroup(writers[0][1], channels, tuple(name for _, name in layers))))
    return [group for _, group in sorted(found, key=lambda pair: pair[0])]


def _importance(criterion: str):
    import torch_pruning as tp

    if criterion == "bn_scale":  # Network Slimming (Liu et al., 2017): |gamma| of the group's BNs
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)  # L2 norm of each channel's weights, averaged over the group


def output_shapes(model: nn.Module, example_input: torch.Tensor) -> list[torch.Size]:
    return [o.shape for o in forward_outputs(model, example_input)]


def check_forward(model: nn.Module, example_input: torch.Tensor, shapes: list[torch.Size], what: str,
                   fix: str = "") -> None:
    """Fail, saying ``what`` broke it (then ``fix``), when ``model`` no longer runs or its outputs changed shape."""
    try:
        now = output_shapes(model, example_input)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - the network's own code fails on the cut shapes
        raise ModelError(f"{what} breaks the network's forward ({first_line(e)}){fix}") from None
    if now != shapes:
        raise ModelError(f"{what} changes the shape of the network's output{fix}")


def cut_channels(model: nn.Module, graph, keep: dict[str, int], criterion: str, example_input: torch.Tensor, *,
                 check_each: bool = False) -> None:
    """Cut ``model`` in place so group ``name`` keeps ``keep[name]`` channels, the most important by ``criterion``.

    ``keep`` names groups of :func:`channel_groups`, in an order that must be the same for the same
    network (so a recipe rebuilds the same shapes); groups it does not name keep every channel. The
    forward on ``example_input`` is checked after every cut with ``check_each`` (so the error names
    the layer), else once at the end.

    Raises:
        ModelError: Torch-Pruning cannot cut a group, or the cut network fails or changes its output's shape.
    """
    modules = dict(model.named_modules())
    shapes = output_shapes(model, example_input)
    importance, fallback = _importance(criterion), _importance("magnitude")
    for name, kept in keep.items():
        root = modules[name]
        group = _root_group(graph, root)
        n_cut = graph.get_out_channels(root) - kept
        if n_cut <= 0:
            continue
        try:
            with torch.no_grad():
                scores = importance(group)
                if scores is None:  # bn_scale on a group without BN (a ViT's MLP): weight magnitude decides
                    scores = fallback(group)
                cut = sorted(torch.argsort(scores.cpu(), stable=True)[:n_cut].tolist())
                graph.get_pruning_group(root, group[0].dep.handler, cut).prune()
        except Exception as e:  # noqa: BLE001 - Torch-Pruning trips on a layer it cannot handle
            raise ModelError(f"Torch-Pruning cannot cut the channels of layer {name} ({first_line(e)}); "
                             "keep that group whole") from None
        if check_each:
            check_forward(model, example_input, shapes, f"cutting the channels of layer {name}", "; keep that group whole")
    if not check_each:
        check_forward(model, example_input, shapes, "the cut")


def working_groups(model: nn.Module, example_input: torch.Tensor) -> tuple[list[ChannelGroup], dict[str, str]]:
    """The groups of ``model`` whose cut leaves the forward working, and why each other group fails.

    Every group loses its least important channel on a copy of ``model`` (``model`` is untouched), all
    at once; only when that fails is each group tried alone, on a fresh copy after each failure.
    """
    scratch = scratch_copy(model)
    graph = dependency_graph(scratch, example_input)
    groups = channel_groups(scratch, graph)
    try:
        cut_channels(scratch, graph, {g.name: g.channels - 1 for g in groups}, "magnitude", example_input)
        return groups, {}
    except ModelError:
        pass
    works, problems = [], {}
    scratch, graph = None, None
    for group in groups:
        if scratch is None:
            scratch = scratch_copy(model)
            graph = dependency_graph(scratch, example_input)
        try:
            cut_channels(scratch, graph, {group.name: group.channels - 1}, "magnitude", example_input,
                         check_each=True)
            works.append(group)
        except ModelError as e:
            problems[group.name] = str(e)
            scratch = None  # the failed cut may have left it half cut
    return works, problems
