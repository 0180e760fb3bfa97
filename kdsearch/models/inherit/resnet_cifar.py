"""``resnet_cifar`` students cut from a ResNet teacher (zoo ResNets, model directories of the family).

Per stage, the student's ``d`` blocks are the teacher's first block and its ``d - 1`` most
important other blocks, in order (a block's importance: the mean ``|gamma|`` of its last BN).
Channels: each residual stream keeps the teacher channels with the largest summed ``|gamma|``
over every BN that adds into it (stem, each block's last BN, projection shortcuts), the same
subset for every tensor on that stream; a block's inner channels keep the top ``|gamma|`` of
their own BN. Both forms (CIFAR: 3x3 stem; ImageNet: 7x7 stem and max-pool), any number of
stages, basic or bottleneck blocks, as long as teacher and student agree on those.
"""
from __future__ import annotations

from torch import nn

from kdsearch.models.inherit._base import INHERITORS, Inheritor
from kdsearch.models.inherit._copy import (STEM, ChannelPlan, WeightCopier, bn_scale, keep_blocks, stage_streams,
                                           stages_problem, top_channels)
from kdsearch.models.resnet_cifar import Bottleneck, ResNetCifar

__all__ = ["ResNetInheritor"]


def _blocks(model: ResNetCifar) -> list[list[nn.Module]]:
    stages = [getattr(model, path) for path in model.stage_paths]
    return [list(stage) if isinstance(stage, nn.Sequential) else [] for stage in stages]


def _layers(block: nn.Module) -> list[tuple[str, str]]:
    """The block's (conv, BN) pairs from input to residual sum."""
    pairs = [("conv1", "bn1"), ("conv2", "bn2")]
    return pairs + [("conv3", "bn3")] if isinstance(block, Bottleneck) else pairs


def _last_bn(block: nn.Module) -> nn.BatchNorm2d:
    """The BN whose output the block adds to its shortcut."""
    return getattr(block, _layers(block)[-1][1])


def _adds_input(block: nn.Module) -> bool:
    return len(block.shortcut) == 0  # an identity shortcut


def _form(model: ResNetCifar) -> str:
    return "imagenet" if model.stem[0].kernel_size[0] == 7 else "cifar"


@INHERITORS.register("resnet_cifar")
class ResNetInheritor(Inheritor):
    family = "resnet_cifar"
    network = ResNetCifar
    teachers = "a zoo resnet or a model directory of the resnet_cifar family"

    def problem(self, teacher: nn.Module, student: nn.Module) -> str | None:
        assert isinstance(teacher, ResNetCifar) and isinstance(student, ResNetCifar)
        stages = stages_problem(_blocks(teacher), _blocks(student))
        if stages is not None:
            return stages
        if _form(teacher) != _form(student):
            return f"the teacher is of the {_form(teacher)} form (stem) and the student of the {_form(student)} form"
        kinds = {type(b).__name__ for m in (teacher, student) for stage in _blocks(m) for b in stage}
        if len(kinds) > 1:
            return f"teacher and student mix block kinds ({', '.join(sorted(kinds))})"
        return None

    def copy(self, teacher: nn.Module, student: nn.Module, copier: WeightCopier) -> None:
        assert isinstance(teacher, ResNetCifar) and isinstance(student, ResNetCifar)
        t_blocks, s_blocks = _blocks(teacher), _blocks(student)
        t_streams, t_inputs = stage_streams(t_blocks, _adds_input)
        s_streams, s_inputs = stage_streams(s_blocks, _adds_input)
        importance = {STEM: bn_scale(teacher.stem[1])}
        for i, blocks in enumerate(t_blocks):
            for j, block in enumerate(blocks):
                importance[(i, j)] = bn_scale(_last_bn(block)) + (bn_scale(block.shortcut[1]) if len(block.shortcut) else 0)
        widths = {STEM: student.stem[1].num_features}
        for i, blocks in enumerate(s_blocks):
            for j, block in enumerate(blocks):
                widths[(i, j)] = _last_bn(block).num_features
        plan = ChannelPlan(t_streams, s_streams, importance, widths)

        stem = plan.select(STEM, STEM)
        copier.conv("stem.0", "stem.0", stem)
        copier.norm("stem.1", "stem.1", stem)
        last = (STEM, STEM)  # the student's and the teacher's positions feeding the classifier
        for i, (path, t_path) in enumerate(zip(student.stage_paths, teacher.stage_paths)):
            scores = [bn_scale(_last_bn(b)).mean().item() for b in t_blocks[i]]
            kept = keep_blocks(scores, len(s_blocks[i]))
            for j, tj in enumerate(kept):
                s_block, t_block = s_blocks[i][j], t_blocks[i][tj]
                s_prefix, t_prefix = f"{path}.{j}", f"{t_path}.{tj}"
                inputs = plan.select(s_inputs[i][j], t_inputs[i][tj])
                outputs = plan.select((i, j), (i, tj))
                channels = inputs
                pairs = _layers(s_block)
                for k, (conv, bn) in enumerate(pairs):
                    if k == len(pairs) - 1:
                        out = outputs
                    else:  # inner channels: the block's own, chosen by their BN
                        out = top_channels(bn_scale(getattr(t_block, bn)), getattr(s_block, bn).num_features)
                    copier.conv(f"{s_prefix}.{conv}", f"{t_prefix}.{conv}", out, channels)
                    copier.norm(f"{s_prefix}.{bn}", f"{t_prefix}.{bn}", out)
                    channels = out
                if len(s_block.shortcut) and len(t_block.shortcut):
                    copier.conv(f"{s_prefix}.shortcut.0", f"{t_prefix}.shortcut.0", outputs, inputs)
                    copier.norm(f"{s_prefix}.shortcut.1", f"{t_prefix}.shortcut.1", outputs)
            if s_blocks[i]:  # blocks past the teacher's depth are fresh, on the same stream
                j = len(s_blocks[i]) - 1
                last = ((i, j), (i, kept[min(j, len(kept) - 1)]))
        copier.linear("classifier", "classifier", None, plan.select(*last))
