"""``vit`` students cut from a ``vit`` teacher.

A ViT has one residual stream: its embedding channels keep the teacher's largest summed
``|gamma|`` over every LayerNorm, the same subset for the patch embedding, position embedding,
every block and the classifier. Blocks: the student's ``d`` are the teacher's first ``d``
(first-N layer selection, which Xu et al. 2024, "Initializing Models with Larger Ones", found
the best for transformers: pre-norm blocks have no norm whose scale says what a block adds).
Attention keeps the heads with the most outgoing projection weight and each head's first
dimensions; the MLP keeps the hidden units with the most outgoing weight. Patch size and
token grid must match (the position embedding is not resampled).
"""
from __future__ import annotations

import torch
from torch import nn

from kdsearch.models.inherit._base import INHERITORS, Inheritor
from kdsearch.models.inherit._copy import WeightCopier, top_channels
from kdsearch.models.vit import ViT

__all__ = ["VitInheritor"]


def _attention_index(t_heads: torch.Tensor, t_dim: int, s_dim: int, parts: int = 1,
                     t_width: int = 0, s_width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) positions of a layout ``(parts, heads, head_dim)`` flattened: the
    student's head ``h`` takes teacher head ``t_heads[h]``, its first ``min`` dimensions."""
    dims = torch.arange(min(t_dim, s_dim))
    student, teacher = [], []
    for part in range(parts):
        for h, th in enumerate(t_heads.tolist()):
            student.append(part * s_width + h * s_dim + dims)
            teacher.append(part * t_width + th * t_dim + dims)
    return torch.cat(student), torch.cat(teacher)


@INHERITORS.register("vit")
class VitInheritor(Inheritor):
    family = "vit"
    network = ViT
    teachers = "a zoo vit_tiny or a model directory of the vit family"

    def problem(self, teacher: nn.Module, student: nn.Module) -> str | None:
        assert isinstance(teacher, ViT) and isinstance(student, ViT)
        t_embed, s_embed = teacher.patch_embed, student.patch_embed
        if t_embed.kernel_size != s_embed.kernel_size:
            return f"the teacher's patches are {t_embed.kernel_size[0]} px and the student's {s_embed.kernel_size[0]} px"
        if teacher.pos_embed.shape[-2:] != student.pos_embed.shape[-2:]:
            return "the teacher's position embedding is sized for another token grid"
        return None

    def copy(self, teacher: nn.Module, student: nn.Module, copier: WeightCopier) -> None:
        assert isinstance(teacher, ViT) and isinstance(student, ViT)
        norms = [m for m in teacher.modules() if isinstance(m, nn.LayerNorm)]
        importance = sum(m.weight.detach().abs().float().cpu() for m in norms)
        embed = top_channels(importance, student.classifier.in_features)
        copier.conv("patch_embed", "patch_embed", embed)
        copier.tensor("pos_embed", "pos_embed", (None, embed, None, None))
        t_width, s_width = teacher.classifier.in_features, student.classifier.in_features
        for j in range(min(len(student.blocks), len(teacher.blocks))):
            s, t = student.blocks[j], teacher.blocks[j]
            sp = tp = f"blocks.{j}"
            copier.norm(f"{sp}.norm1", f"{tp}.norm1", embed)
            copier.norm(f"{sp}.norm2", f"{tp}.norm2", embed)
            t_dim, s_dim = t_width // t.attn.heads, s_width // s.attn.heads
            per_head = t.attn.proj.weight.detach().abs().sum(0).view(t.attn.heads, t_dim).sum(1)  # (heads,)
            heads = top_channels(per_head, s.attn.heads)
            qkv = _attention_index(heads, t_dim, s_dim, parts=3, t_width=t_width, s_width=s_width)
            copier.linear(f"{sp}.attn.qkv", f"{tp}.attn.qkv", qkv, embed)
            copier.linear(f"{sp}.attn.proj", f"{tp}.attn.proj", embed, _attention_index(heads, t_dim, s_dim))
            hidden = top_channels(t.mlp[2].weight.detach().abs().sum(0), s.mlp[0].out_features)
            copier.linear(f"{sp}.mlp.0", f"{tp}.mlp.0", hidden, embed)
            copier.linear(f"{sp}.mlp.2", f"{tp}.mlp.2", embed, hidden)
        copier.norm("norm", "norm", embed)
        copier.linear("classifier", "classifier", None, embed)
