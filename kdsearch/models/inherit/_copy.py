"""The machinery every inheritor shares: choosing channels and blocks, and copying slices.

A student tensor takes the teacher's values through one *index* per dimension:

- a ``LongTensor`` of teacher positions, placed at the student's first positions (a student
  wider than the teacher keeps its fresh values past them);
- a pair ``(student positions, teacher positions)`` for interleaved layouts (attention heads);
- ``None``: the dimension is aligned on its centre (kernels: a 5x5 student takes the middle
  of a 7x7 teacher kernel, a 7x7 one holds a 3x3 teacher kernel in its middle; equal sizes copy
  whole).
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence, Union

import torch
from torch import nn

__all__ = ["Index", "WeightCopier", "Streams", "ChannelPlan", "STEM", "stage_streams", "top_channels", "keep_blocks",
           "bn_scale", "stages_problem"]

Index = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor], None]


def top_channels(importance: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` most important positions (all of them when there are fewer), in their original order.

    Ties go to the lower position, so a teacher whose scales are all equal gives its first ``k``.
    """
    order = torch.sort(importance.detach().float().cpu(), descending=True, stable=True).indices
    return order[: min(k, importance.numel())].sort().values


def keep_blocks(importance: Sequence[float], depth: int) -> list[int]:
    """The teacher blocks a stage of ``depth`` blocks keeps, in order: the first block (it changes
    stride and width, as the student's first block does), then the ``depth - 1`` most important of
    the others (ties to the earlier block). A student deeper than the teacher keeps them all."""
    if depth <= 0 or not importance:
        return []
    rest = sorted(range(1, len(importance)), key=lambda j: (-importance[j], j))[: depth - 1]
    return [0, *sorted(rest)]


def bn_scale(bn: nn.Module) -> torch.Tensor:
    """``|gamma|`` of a norm layer, the importance of the channels it scales (Liu et al. 2017, network slimming)."""
    return bn.weight.detach().abs().float().cpu()


class WeightCopier:
    """Copies slices of the teacher's tensors into the student's state dict and counts what came over.

    Args:
        teacher: the network whose values are read (never changed).
        student: the network written to, through its ``state_dict()`` (the tensors share storage).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        self.source = teacher.state_dict()
        self.target = student.state_dict()
        self.parameters = {name: p.numel() for name, p in student.named_parameters()}
        self.copied: dict[str, int] = {}  # student tensor name -> values taken from the teacher

    def tensor(self, target: str, source: str, index: Sequence[Index]) -> None:
        """Copy ``source`` (teacher name) into ``target`` (student name) through one index per dimension."""
        dst, src = self.target[target], self.source[source]
        assert dst.dim() == src.dim() == len(index), (target, source)  # the inheritor matched the layers
        src_index, dst_index = [], []
        for d, (idx, n_dst, n_src) in enumerate(zip(index, dst.shape, src.shape)):
            if idx is None:  # centred
                n = min(n_dst, n_src)
                src_index.append(torch.arange(n) + (n_src - n) // 2)
                dst_index.append(torch.arange(n) + (n_dst - n) // 2)
            elif isinstance(idx, tuple):
                dst_index.append(idx[0].long())
                src_index.append(idx[1].long())
            else:
                src_index.append(idx.long())
                dst_index.append(torch.arange(len(idx)))
            assert len(src_index[-1]) == len(dst_index[-1]) and len(dst_index[-1]) <= n_dst, (target, d)
        values = src.detach().cpu()
        for d, idx in enumerate(src_index):
            values = values.index_select(d, idx)
        with torch.no_grad():
            dst.index_put_(torch.meshgrid(*[i.to(dst.device) for i in dst_index], indexing="ij"),
                           values.to(dst.device, dst.dtype))
        self.copied[target] = self.copied.get(target, 0) + values.numel()

    # ---- the layers kdsearch's families are made of -------------------------------------------

    def conv(self, target: str, source: str, out: Index, inp: Index = None) -> None:
        """A conv's weight ``(out, in/groups, kh, kw)`` (kernel centred) and bias; ``inp`` None: a depthwise conv."""
        self.tensor(f"{target}.weight", f"{source}.weight", (out, inp, None, None))
        if f"{target}.bias" in self.target and f"{source}.bias" in self.source:
            self.tensor(f"{target}.bias", f"{source}.bias", (out,))

    def norm(self, target: str, source: str, channels: Index) -> None:
        """A BatchNorm or LayerNorm: scale, shift and running statistics of ``channels``."""
        for name in ("weight", "bias", "running_mean", "running_var"):
            if f"{target}.{name}" in self.target:
                self.tensor(f"{target}.{name}", f"{source}.{name}", (channels,))
        if f"{target}.num_batches_tracked" in self.target:
            self.target[f"{target}.num_batches_tracked"].copy_(self.source[f"{source}.num_batches_tracked"])

    def linear(self, target: str, source: str, out: Index, inp: Index) -> None:
        """A linear layer's weight ``(out, in)`` and bias."""
        self.tensor(f"{target}.weight", f"{source}.weight", (out, inp))
        if f"{target}.bias" in self.target:
            self.tensor(f"{target}.bias", f"{source}.bias", (out,))


class Streams:
    """Positions of a network (:data:`STEM`, ``(stage, block)``...) grouped into residual streams:
    the positions whose outputs are added together share one channel space (union-find)."""

    def __init__(self) -> None:
        self._parent: dict[Hashable, Hashable] = {}

    def add(self, position: Hashable, same_as: Hashable | None = None) -> None:
        """A new position; ``same_as``: it adds into that position's stream (an identity shortcut)."""
        self._parent[position] = position
        if same_as is not None:
            self._parent[position] = self.root(same_as)

    def root(self, position: Hashable) -> Hashable:
        while self._parent[position] != position:
            self._parent[position] = self._parent[self._parent[position]]
            position = self._parent[position]
        return position


class ChannelPlan:
    """Which teacher channels each student stream keeps, the same subset wherever they add together.

    A student position ``s`` standing for teacher position ``t`` keeps the ``width(s)`` most
    important channels of ``t``'s stream; the choice is made once per pair of streams, so every
    tensor that reads or writes one residual stream is sliced alike.

    Args:
        teacher: the teacher's streams.
        student: the student's streams.
        importance: per teacher position, the importance of the channels it writes; summed over
            each stream (every BN that adds into a stream has a say).
        widths: per student position, its channel count.
    """

    def __init__(self, teacher: Streams, student: Streams, importance: dict[Hashable, torch.Tensor],
                 widths: dict[Hashable, int]) -> None:
        self.teacher, self.student, self.widths = teacher, student, widths
        self.importance: dict[Hashable, torch.Tensor] = {}
        for position, scores in importance.items():
            root = teacher.root(position)
            self.importance[root] = self.importance.get(root, 0) + scores
        self._chosen: dict[tuple[Hashable, Hashable], torch.Tensor] = {}

    def select(self, student_position: Hashable, teacher_position: Hashable) -> torch.Tensor:
        s, t = self.student.root(student_position), self.teacher.root(teacher_position)
        if (s, t) not in self._chosen:
            self._chosen[s, t] = top_channels(self.importance[t], self.widths[s])
        return self._chosen[s, t]


STEM = (-1, 0)  # the position of a CNN's stem in :func:`stage_streams`; blocks are (stage, block)


def stage_streams(stages: Sequence[Sequence[nn.Module]],
                  adds_input: Callable[[nn.Module], bool]) -> tuple[Streams, list[list[tuple[int, int]]]]:
    """The residual streams of a stem followed by stages of blocks, and each block's input position.

    ``adds_input(block)``: the block adds its input, as it is, to its output (an identity shortcut),
    so its output lies in its input's stream.
    """
    streams, inputs, previous = Streams(), [], STEM
    streams.add(STEM)
    for i, blocks in enumerate(stages):
        inputs.append([])
        for j, block in enumerate(blocks):
            inputs[i].append(previous)
            streams.add((i, j), same_as=previous if adds_input(block) else None)
            previous = (i, j)
    return streams, inputs


def stages_problem(teacher: Sequence[Sequence[nn.Module]], student: Sequence[Sequence[nn.Module]]) -> str | None:
    """Why a stem-and-stages student cannot be matched stage by stage with the teacher, or None."""
    if len(teacher) != len(student):
        return f"the teacher has {len(teacher)} stages and the student {len(student)}"
    if any(not blocks for blocks in teacher):
        return "the teacher has a stage without blocks"
    return None
