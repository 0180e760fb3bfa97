"""The ``pruned`` family: students cut from the user's own teacher by structured pruning.

Its genes are a pruning recipe (:class:`~kdsearch.models.prune.PruneRecipe`): ``keep``, the share of
channels each prunable channel group keeps, and ``remove``, whether each removable residual block is
dropped whole. Which groups and blocks exist depends on the teacher, so the space is made from it
(:func:`pruned_space`, at search start) and its YAML keeps them, with the teacher it cuts, under
``prune:``::

    prune:
      teacher: /abs/path/model-dir   # a zoo name, a model directory, a .pt2 or TorchScript file
      teacher_sha256: 9f...          # of its weights file(s) (of its state_dict for a zoo name)
      groups: [stem.0, layer1.0.conv1, ...]   # one keep gene per group, in this order
      blocks: [layer1.0, layer1.1, ...]       # one remove gene per block, in this order
      input_shape: [1, 3, 32, 32]    # what the teacher is traced on (a .pt2 export's fixed size)
      num_classes: 10
      importance: magnitude

:meth:`PrunedSpace.build` loads that teacher (once per space), refuses it if its digest changed,
and cuts it: a pruned network starts from its teacher's weights, so they are what a student
distilled from this space inherits.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
from torch import nn

from kdsearch.arch import form_for_image_size
from kdsearch.errors import KdsearchWarning, ModelError, SpaceError
from kdsearch.spaces.base import SPACES, GeneSpec, SearchSpace

if TYPE_CHECKING:
    from kdsearch.models.prune import PruneRecipe
    from kdsearch.models.teacher import Teacher

__all__ = ["PRUNED_SPACE", "KEEP_CHOICES", "PrunedSpace", "pruned_space", "prunable_teacher"]

PRUNED_SPACE = "pruned"  # --space pruned: made from the teacher, not read from a YAML
KEEP_CHOICES = (0.25, 0.375, 0.5, 0.625, 0.75, 1.0)  # kept share of a channel group
_PRUNE_KEYS = ("teacher", "teacher_sha256", "groups", "blocks", "input_shape", "num_classes", "importance")


def prunable_teacher(teacher: "Teacher") -> tuple[nn.Module, list[Path]]:
    """The network Torch-Pruning cuts for ``teacher`` and the weights file(s) its digest is taken of.

    A ``.pt2`` teacher's unflattened program is lifted back into layers inside its module hierarchy
    (:func:`~kdsearch.models.prune.lift_layers`), so its residual blocks can be removed by path; when
    that fails, its flat graph is, with one warning (its students then only get narrower). A
    TorchScript teacher is converted into such a program first
    (:func:`~kdsearch.models.prune.torchscript_program`, traced on inputs of the size it was loaded
    for), the submodule each call ran in restored. A zoo teacher has no file (its digest is of its
    state_dict).

    Raises:
        ModelError: a TorchScript teacher the converter cannot convert (naming what failed), or one whose
            weights are frozen into its graph.
    """
    path = Path(teacher.source).expanduser()
    if path.is_dir():
        return teacher.module, [path / "model.safetensors"]
    if path.suffix == ".pt2" and path.is_file():
        return _lifted(lambda: teacher.module, teacher.exportable, teacher.source), [path]
    if path.is_file():  # TorchScript
        return _prunable_script(path, teacher.source, teacher.info["in_channels"], teacher.info["image_size"]), [path]
    return teacher.module, []


def _prunable_script(path: Path, source: str, in_channels: int, image_size: Sequence[int]) -> nn.Module:
    """The TorchScript file's network as :func:`prunable_teacher` gives it, converted on inputs of ``image_size``."""
    from kdsearch.models.prune import torchscript_program, unflattened
    from kdsearch.models.teacher import load_torchscript

    script = load_torchscript(path)
    what = f"the pruned space (--space pruned) cannot cut the TorchScript teacher {source}"
    if not any(True for _ in script.parameters()):
        raise ModelError(f"{what}: its weights are frozen into its graph (torch.jit.freeze), so it has no layer "
                         "to cut; save it before freezing, or as .pt2")
    size = (2, in_channels, *image_size)  # a batch of one would be fixed
    try:
        program = torchscript_program(script, torch.zeros(size))
    except ModelError as e:
        raise ModelError(f"{what}: {e}") from None
    return _lifted(lambda: unflattened(program), program.module, source)


def _lifted(tree: Callable[[], nn.Module], flat: Callable[[], nn.Module], source: str) -> nn.Module:
    """The program's layers lifted inside its module hierarchy (``tree()``), else in its flat graph (``flat()``)."""
    from kdsearch.models.prune import lift_layers

    try:
        return lift_layers(tree())
    except ModelError as e:
        warnings.warn(f"teacher {source}: {e}; pruning its flat graph instead, whose students only get "
                      "narrower (no residual block to remove)", KdsearchWarning, stacklevel=3)
        return lift_layers(flat())


@SPACES.register("pruned")
class PrunedSpace(SearchSpace):
    """Students cut from your teacher by Torch-Pruning, starting from its weights: a kept share of each
    channel group and which residual blocks to drop; made from --teacher (``kdsearch run`` without one:
    from the teacher it trains), the quick preset's space.

    Genes ``keep`` (kept share per channel group) and, when the teacher has removable residual
    blocks, ``remove`` (drop each block or not); see the module docstring."""

    family = "pruned"
    family_keys = ("prune",)
    timed_by_parts = False  # a cut teacher is no chain of known blocks: the latency model times it whole
    gene_specs: Mapping[str, GeneSpec]  # per space: one position per group and block of its teacher

    def __init__(self, config: Mapping[str, Any], source: str = "<config>") -> None:
        prune = config.get("prune") if isinstance(config, Mapping) else None
        if not isinstance(prune, Mapping) or sorted(prune) != sorted(_PRUNE_KEYS):
            raise SpaceError(f"search space {source}: a pruned space needs 'prune:' with exactly the keys "
                             f"{', '.join(_PRUNE_KEYS)} (make it with --space pruned)")
        groups, blocks = prune["groups"], prune["blocks"]
        if (not isinstance(groups, list) or not groups or not isinstance(blocks, list)
                or not all(isinstance(n, str) and n for n in [*groups, *blocks])):
            raise SpaceError(f"search space {source}: prune.groups must be a non-empty list of module paths, "
                             "prune.blocks a list of them")
        shape = prune["input_shape"]
        if (not isinstance(shape, list) or len(shape) != 4
                or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
            raise SpaceError(f"search space {source}: prune.input_shape must be [1, C, H, W], got {shape!r}")
        self.gene_specs = {"keep": GeneSpec(float, is_list=True, length=len(groups), minimum=0.0, maximum=1.0)}
        if blocks:
            self.gene_specs["remove"] = GeneSpec(bool, is_list=True, length=len(blocks))
        self.prune: dict[str, Any] = dict(prune)
        self._teacher: nn.Module | None = None  # loaded at the first build
        super().__init__(config, source)

    @property
    def groups(self) -> list[str]:
        return list(self.prune["groups"])

    @property
    def blocks(self) -> list[str]:
        return list(self.prune["blocks"])

    def combination_problem(self, genes: Mapping[str, Any]) -> str | None:
        if any(share <= 0 for share in genes["keep"]):
            return "every group keeps a share above 0"
        return None

    def recipe(self, genes: Mapping[str, Any]) -> "PruneRecipe":
        """The pruning recipe these genes stand for."""
        from kdsearch.models.prune import PruneRecipe

        removed = tuple(b for b, drop in zip(self.blocks, genes.get("remove", [])) if drop)
        return PruneRecipe(self.prune["teacher_sha256"], dict(zip(self.groups, genes["keep"])),
                           self.prune["importance"], removed)

    def teacher_module(self) -> nn.Module:
        """The teacher this space cuts, loaded from ``prune.teacher`` once and checked against its digest.

        Raises:
            ModelError: the teacher's weights have changed since the space was made from them.
        """
        if self._teacher is None:
            from kdsearch.models.prune import teacher_digest
            from kdsearch.models.teacher import TORCHSCRIPT_SUFFIXES
            from kdsearch.spaces.model_files import load_teacher

            _, in_channels, h, w = self.prune["input_shape"]
            path = Path(self.prune["teacher"]).expanduser()
            with torch.device("cpu"):  # also when built inside a meta-device context (parameter counts)
                if path.suffix in TORCHSCRIPT_SUFFIXES and path.is_file():
                    # converted once, for pruning: load_teacher would first cut it into hookable parts
                    module, files = _prunable_script(path, self.prune["teacher"], in_channels, (h, w)), [path]
                else:
                    teacher = load_teacher(self.prune["teacher"], num_classes=self.prune["num_classes"],
                                           in_channels=in_channels, image_size=(h, w))
                    module, files = prunable_teacher(teacher)
                digest = teacher_digest(module, files)
            if digest != self.prune["teacher_sha256"]:
                raise ModelError(f"teacher {self.prune['teacher']} has changed since the pruned space was made from it "
                                 f"(sha256 {self.prune['teacher_sha256'][:12]}... then, {digest[:12]}... now); "
                                 "search again with the new teacher")
            self._teacher = module
        return self._teacher

    def build_model(self, genes: Mapping[str, Any], num_classes: int, in_channels: int, form: str) -> nn.Module:
        from kdsearch.models.prune import apply_recipe

        shape = self.prune["input_shape"]
        if (num_classes, in_channels) != (self.prune["num_classes"], shape[1]):
            raise ModelError(f"the pruned space cuts a teacher of {self.prune['num_classes']} classes and {shape[1]} "
                             f"input channels, not {num_classes} and {in_channels}; use data of the teacher's kind")
        teacher = self.teacher_module()
        with torch.device("cpu"):
            return apply_recipe(teacher, self.recipe(genes), torch.zeros(shape)).train()


def pruned_space(teacher: "Teacher", *, num_classes: int, in_channels: int, image_size: tuple[int, int],
                 keep_choices: tuple[float, ...] = KEEP_CHOICES) -> PrunedSpace:
    """The space of structured prunings of ``teacher``, for inputs of ``image_size``.

    Raises:
        ModelError: Torch-Pruning cannot trace the teacher, or finds no channel group it can cut.
    """
    from kdsearch.models.prune import prunable_groups, removable_blocks, teacher_digest

    module, files = prunable_teacher(teacher)
    x = torch.zeros(1, in_channels, *image_size)  # (1, C, H, W)
    groups = [g.name for g in prunable_groups(module, x)]
    blocks = removable_blocks(module, x)
    path = Path(teacher.source).expanduser()
    source = str(path.resolve()) if path.exists() else teacher.source  # later stages may run elsewhere
    genes: dict[str, Any] = {"keep": {"choices": list(keep_choices), "length": len(groups)}}
    whole: dict[str, Any] = {"keep": [1.0] * len(groups)}
    if blocks:
        genes["remove"] = {"choices": [False, True], "length": len(blocks)}
        whole["remove"] = [False] * len(blocks)
    space = PrunedSpace({
        "name": PRUNED_SPACE,
        "family": "pruned",
        "description": f"structured prunings of teacher {teacher.source}",
        "form": form_for_image_size(image_size),
        "genes": genes,
        "teacher": whole,
        "prune": {"teacher": source, "teacher_sha256": teacher_digest(module, files), "groups": groups,
                  "blocks": blocks, "input_shape": list(x.shape), "num_classes": num_classes,
                  "importance": "magnitude"},
    }, f"--space pruned (teacher {teacher.source})")
    space._teacher = module  # already loaded: the first build need not read it again
    return space
