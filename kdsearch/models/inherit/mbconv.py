"""``mbconv`` students cut from an ``mbconv`` teacher (MobileNetV2-like inverted residual stages).

Blocks as for ResNets: per stage the teacher's first block and the ``d - 1`` others with the
largest mean ``|gamma|`` of their projection BN, in order. Streams: a block that keeps the shape
adds into its input's stream; each stream keeps the teacher channels with the largest summed
``|gamma|`` of the BNs that write into it (stem BN, projection BNs). A block's hidden channels
keep the top ``|gamma|`` of its depthwise BN (a block without an expansion conv works on its
input stream's channels); squeeze-excitation keeps the reduce channels with the most outgoing
weight; depthwise kernels are centred (a 3x3 student takes the middle of a 5x5 teacher kernel).
Teacher and student must have the same number of stages; expansion, kernel, SE and head may differ
(a layer the teacher lacks stays fresh).
"""
from __future__ import annotations

from torch import nn

from kdsearch.models.inherit._base import INHERITORS, Inheritor
from kdsearch.models.inherit._copy import (STEM, ChannelPlan, WeightCopier, bn_scale, keep_blocks, stage_streams,
                                           stages_problem, top_channels)
from kdsearch.models.mbconv import InvertedResidual, MBConvNet, SqueezeExcite

__all__ = ["MBConvInheritor"]


def _blocks(model: MBConvNet) -> list[list[InvertedResidual]]:
    return [list(stage) for stage in model.stages]


def _adds_input(block: nn.Module) -> bool:
    return block.use_residual


class _Parts:
    """Where the layers of one inverted residual block sit in its ``conv`` Sequential."""

    def __init__(self, block: InvertedResidual) -> None:
        layers = list(block.conv)
        convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Sequential)]  # conv-BN-act units
        self.expand = convs[0] if len(convs) == 2 else None
        self.depthwise = convs[-1]
        self.se = next((i for i, m in enumerate(layers) if isinstance(m, SqueezeExcite)), None)
        self.project, self.project_bn = len(layers) - 2, len(layers) - 1
        self.block = block

    def bn(self, index: int) -> nn.BatchNorm2d:
        return self.block.conv[index][1]


@INHERITORS.register("mbconv")
class MBConvInheritor(Inheritor):
    family = "mbconv"
    network = MBConvNet
    teachers = "a zoo mobilenetv2 or a model directory of the mbconv family"

    def problem(self, teacher: nn.Module, student: nn.Module) -> str | None:
        assert isinstance(teacher, MBConvNet) and isinstance(student, MBConvNet)
        return stages_problem(_blocks(teacher), _blocks(student))

    def copy(self, teacher: nn.Module, student: nn.Module, copier: WeightCopier) -> None:
        assert isinstance(teacher, MBConvNet) and isinstance(student, MBConvNet)
        t_blocks, s_blocks = _blocks(teacher), _blocks(student)
        t_streams, t_inputs = stage_streams(t_blocks, _adds_input)
        s_streams, s_inputs = stage_streams(s_blocks, _adds_input)
        importance = {STEM: bn_scale(teacher.stem[1])}
        importance.update({(i, j): bn_scale(b.conv[-1]) for i, blocks in enumerate(t_blocks) for j, b in enumerate(blocks)})
        widths = {STEM: student.stem[1].num_features}
        widths.update({(i, j): b.conv[-1].num_features for i, blocks in enumerate(s_blocks) for j, b in enumerate(blocks)})
        plan = ChannelPlan(t_streams, s_streams, importance, widths)

        stem = plan.select(STEM, STEM)
        copier.conv("stem.0", "stem.0", stem)
        copier.norm("stem.1", "stem.1", stem)
        last = (STEM, STEM)
        for i in range(len(s_blocks)):
            scores = [bn_scale(b.conv[-1]).mean().item() for b in t_blocks[i]]
            kept = keep_blocks(scores, len(s_blocks[i]))
            for j, tj in enumerate(kept):
                s, t = _Parts(s_blocks[i][j]), _Parts(t_blocks[i][tj])
                sp, tp = f"stages.{i}.{j}.conv", f"stages.{i}.{tj}.conv"
                inputs = plan.select(s_inputs[i][j], t_inputs[i][tj])
                outputs = plan.select((i, j), (i, tj))
                if s.expand is None and t.expand is None:  # both depthwise convs read the input stream
                    hidden = inputs
                else:
                    hidden = top_channels(bn_scale(t.bn(t.depthwise)), s.bn(s.depthwise).num_features)
                if s.expand is not None and t.expand is not None:
                    copier.conv(f"{sp}.{s.expand}.0", f"{tp}.{t.expand}.0", hidden, inputs)
                    copier.norm(f"{sp}.{s.expand}.1", f"{tp}.{t.expand}.1", hidden)
                copier.conv(f"{sp}.{s.depthwise}.0", f"{tp}.{t.depthwise}.0", hidden)
                copier.norm(f"{sp}.{s.depthwise}.1", f"{tp}.{t.depthwise}.1", hidden)
                if s.se is not None and t.se is not None:
                    t_se, s_se = t.block.conv[t.se], s.block.conv[s.se]
                    reduced = top_channels(t_se.expand.weight.detach().abs().sum(dim=(0, 2, 3)), s_se.reduce.out_channels)
                    copier.conv(f"{sp}.{s.se}.reduce", f"{tp}.{t.se}.reduce", reduced, hidden)
                    copier.conv(f"{sp}.{s.se}.expand", f"{tp}.{t.se}.expand", hidden, reduced)
                copier.conv(f"{sp}.{s.project}", f"{tp}.{t.project}", outputs, hidden)
                copier.norm(f"{sp}.{s.project_bn}", f"{tp}.{t.project_bn}", outputs)
            if s_blocks[i]:  # blocks past the teacher's depth are fresh, on the same stream
                j = len(s_blocks[i]) - 1
                last = ((i, j), (i, kept[min(j, len(kept) - 1)]))
        features = plan.select(*last)
        s_head, t_head = isinstance(student.head, nn.Sequential), isinstance(teacher.head, nn.Sequential)
        if s_head and t_head:
            head = top_channels(bn_scale(teacher.head[1]), student.head[1].num_features)
            copier.conv("head.0", "head.0", head, features)
            copier.norm("head.1", "head.1", head)
            copier.linear("classifier", "classifier", None, head)
        elif not (s_head or t_head):
            copier.linear("classifier", "classifier", None, features)
        else:  # the classifiers read different layers: only the class biases carry over
            copier.tensor("classifier.bias", "classifier.bias", (None,))
