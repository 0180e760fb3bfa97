"""TorchScript teachers made hookable: ``body → head → classifier`` modules over the same graph.

A loaded TorchScript module runs its compiled graph, so forward hooks on its submodules never
fire and features cannot be captured. :func:`hookable_torchscript` converts it to a
``torch.export`` graph (``TS2EPConverter``) and cuts that graph at the last 4-D feature map and
at the final ``linear``: ``body`` (image → feature map), ``head`` (feature map → classifier
input), ``classifier`` (a real ``nn.Linear`` sharing the file's weights) and ``tail``, the
activation a file may apply to its logits (ReLU, softmax...; nothing for most files). The
user's file is only read; the result computes the same output (checked) and every kdsearch
feature tap works on it by module path, the classifier's tap giving the pre-activation logits.
"""
from __future__ import annotations

import contextlib
import logging
import operator
import warnings
from typing import Iterator

import torch
from torch import fx, nn

from kdsearch.errors import ModelError

__all__ = ["GraphTeacher", "hookable_torchscript", "quiet_converter"]


class GraphTeacher(nn.Module):
    """``tail(classifier(head(body(x))))``: a TorchScript teacher's graph in hookable parts."""

    feature_path = "body"

    def __init__(self, body: fx.GraphModule, head: fx.GraphModule, classifier: nn.Linear,
                 tail: fx.GraphModule | None = None, weights_frozen: bool = False) -> None:
        super().__init__()
        self.body, self.head, self.classifier = body, head, classifier
        self.tail = tail if tail is not None else nn.Identity()
        # True for a frozen graph (torch.jit.freeze): its weights are constants, not parameters,
        # so they cannot be re-initialised
        self.weights_frozen = weights_frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.classifier(self.head(self.body(x))))


# Activations a file may apply to its logits; the graph is cut before them, at the final linear.
_ACTIVATIONS = {
    torch.ops.aten.relu.default, torch.ops.aten.relu_.default, torch.ops.aten.sigmoid.default,
    torch.ops.aten.tanh.default, torch.ops.aten.gelu.default, torch.ops.aten.silu.default,
    torch.ops.aten.hardtanh.default, torch.ops.aten.leaky_relu.default, torch.ops.aten.elu.default,
    torch.ops.aten.softmax.int, torch.ops.aten.log_softmax.int,
    torch.ops.aten._softmax.default, torch.ops.aten._log_softmax.default,
}


def _activation_chain(nodes: list[fx.Node], start: fx.Node, out: fx.Node) -> bool:
    """Whether ``nodes`` (those after ``start``) are activations, each of the one before, ending at ``out``."""
    prev = start
    for n in nodes:
        if n.op == "get_attr":
            continue
        if n.op != "call_function" or n.target not in _ACTIVATIONS or n.args[0] is not prev:
            return False
        prev = n
    return prev is out


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """Silence the TorchScript converter's own warnings and logs while it runs."""
    # The converter warns and logs ("dimension ... specialized") about its own guesses: not the user's business.
    log = logging.getLogger("torch._export")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _is_4d_map(node: fx.Node) -> bool:
    v = node.meta.get("val")
    return isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[-1] * v.shape[-2] > 1


_STATISTICS = {"running_mean", "running_var", "num_batches_tracked"}


def _weights_as_parameters(gm: fx.GraphModule) -> None:
    """The converter lifts every weight as a buffer; make them parameters again (statistics stay buffers)."""
    for name, buf in list(gm.named_buffers()):
        prefix, _, leaf = name.rpartition(".")
        if leaf not in _STATISTICS and buf.is_floating_point():
            module = gm.get_submodule(prefix)
            del module._buffers[leaf]
            module.register_parameter(leaf, nn.Parameter(buf.detach().clone()))


def _as_parameter(t: torch.Tensor) -> nn.Parameter:
    """``t`` itself when it is a parameter; a frozen graph's constant becomes one (gradients need it)."""
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach().clone())


def _subgraph(root: fx.GraphModule, nodes: list[fx.Node], inp: fx.Node, out: fx.Node) -> fx.GraphModule:
    """A graph computing ``out`` from ``inp`` with copies of ``nodes``; parameters are shared with ``root``."""
    g = fx.Graph()
    env = {inp: g.placeholder("x")}

    def arg(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op != "get_attr":
                raise ModelError("the TorchScript graph does not split at its last feature map "
                                 "(a later layer reads an earlier one)")
            env[n] = g.node_copy(n)
        return env[n]

    for n in nodes:
        if n is not inp and n.op not in ("placeholder", "output", "get_attr"):  # attributes: copied when used
            env[n] = g.node_copy(n, arg)
    g.output(env[out])
    return fx.GraphModule(root, g)


def hookable_torchscript(script: torch.jit.ScriptModule, sample: torch.Tensor) -> GraphTeacher:
    """Convert a TorchScript classifier into a :class:`GraphTeacher` (raises ``ModelError`` when it cannot)."""
    from torch._export.converter import TS2EPConverter

    try:
        with quiet_converter():
            gm = TS2EPConverter(script, (sample,)).convert().module()
    except Exception as e:  # noqa: BLE001 - the converter fails on unsupported TorchScript
        raise ModelError(f"cannot convert this TorchScript graph ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    _weights_as_parameters(gm)
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    linears = [n for n in nodes if n.op == "call_function" and n.target is torch.ops.aten.linear.default]
    if len(inputs) != 1 or not linears:
        raise ModelError("the TorchScript graph is not one image in, logits of a final linear layer out")
    lin = linears[-1]
    (result,) = [n for n in nodes if n.op == "output"]
    outs = result.args[0] if isinstance(result.args[0], (tuple, list)) else (result.args[0],)
    i_lin = nodes.index(lin)
    i_out = nodes.index(result)
    if len(outs) != 1 or not _activation_chain(nodes[i_lin + 1 : i_out], lin, outs[0]):
        raise ModelError("the TorchScript graph's output is not the final linear layer's (logits), "
                         "nor an activation of them")
    weight, bias = (list(lin.args) + [None])[1:3]
    if weight is None or weight.op != "get_attr" or (bias is not None and bias.op != "get_attr"):
        raise ModelError("the TorchScript graph's final linear layer has no stored weight")
    maps = [n for n in nodes[:i_lin] if _is_4d_map(n)]
    if not maps:
        raise ModelError("the TorchScript graph has no 4-D feature map before its classifier")
    feat, i_feat = maps[-1], nodes.index(maps[-1])
    stored = {name for name, _ in gm.named_parameters()} | {name for name, _ in gm.named_buffers()}
    frozen = any(n.op == "get_attr" and n.target not in stored for n in nodes)
    w = operator.attrgetter(weight.target)(gm)
    classifier = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    classifier.weight = _as_parameter(w)
    if bias is not None:
        classifier.bias = _as_parameter(operator.attrgetter(bias.target)(gm))
    tail = _subgraph(gm, nodes[i_lin + 1 : i_out], lin, outs[0]) if outs[0] is not lin else None
    model = GraphTeacher(_subgraph(gm, nodes[: i_feat + 1], inputs[0], feat),
                         _subgraph(gm, nodes[i_feat + 1 : i_lin], feat, lin.args[0]), classifier, tail,
                         weights_frozen=frozen)
    model.eval()
    with torch.no_grad():
        expected, got = script(sample), model(sample)
    if not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        raise ModelError("the converted TorchScript graph does not reproduce the file's output")
    return model
