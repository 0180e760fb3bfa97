"""``kdsearch score``: proxy scores for given or sampled archs."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.table import Table

from kdsearch.cli import _options as o
from kdsearch.cli._console import close, console, make_progress, print_json

__all__ = ["register"]


def score(
    teacher: o.Teacher,
    data: o.Data = "fashion-mnist",
    data_dir: o.DataDir = None,
    subset: o.Subset = None,
    space: Annotated[str, typer.Option("--space", help="Search space: a built-in name or a YAML file.", rich_help_panel=o.SEARCH)] = "resnet_cifar",
    arch: Annotated[Optional[List[Path]], typer.Option("--arch", help="Arch JSON file to score (repeatable).", rich_help_panel=o.SEARCH)] = None,
    sample: Annotated[Optional[int], typer.Option("--sample", help="Score N archs sampled from the space.", rich_help_panel=o.SEARCH)] = None,
    proxy: Annotated[str, typer.Option("--proxy", help="Comma list of proxies (see `kdsearch proxies`).", rich_help_panel=o.SEARCH)] = "diswot,params,flops",
    teacher_init: Annotated[str, typer.Option("--teacher-init", help="pretrained, or random: a freshly initialised teacher of the same architecture (DisWOT's procedure).", rich_help_panel=o.SEARCH)] = "pretrained",
    teacher_feature: Annotated[Optional[str], typer.Option("--teacher-feature", help="Module path of the teacher's last 4-D feature map.", rich_help_panel=o.SEARCH)] = None,
    teacher_classifier: Annotated[Optional[str], typer.Option("--teacher-classifier", help="Module path of the teacher's final linear layer.", rich_help_panel=o.SEARCH)] = None,
    proxy_batch: Annotated[int, typer.Option("--proxy-batch", help="Images scored per candidate.", rich_help_panel=o.SEARCH)] = 64,
    seed: o.Seed = 0,
    json_out: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Score archs against a teacher with training-free proxies (higher is better; params/flops are costs).

    Example: kdsearch score --teacher resnet56 --data fashion-mnist --space resnet_cifar --sample 5 --proxy diswot,snip --json
    """
    from kdsearch.arch import Arch
    from kdsearch.data import load_dataset
    from kdsearch.errors import UsageError
    from kdsearch.models.teacher import load_teacher
    from kdsearch.proxies.scoring import sample_archs, score_archs
    from kdsearch.spaces import load_space

    if bool(arch) == (sample is not None):
        raise UsageError("give either --arch FILE.json (repeatable) or --sample N")
    if teacher_init not in {"pretrained", "random"}:
        raise UsageError(f"unknown --teacher-init {teacher_init!r}; use pretrained or random")
    names = [p.strip() for p in proxy.split(",") if p.strip()]
    dataset = load_dataset(data, data_dir=data_dir, subset=subset, seed=seed)
    the_space = load_space(space)
    archs = [Arch.load(p) for p in arch] if arch else sample_archs(the_space, sample or 0, seed)
    t = load_teacher(teacher, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                         image_size=dataset.image_size)
    module = t.module if teacher_init == "pretrained" else t.fresh_copy(seed)
    progress = make_progress(quiet, json_out)
    try:
        results = score_archs(module, dataset, the_space, archs, names, batch_size=proxy_batch, seed=seed,
                              teacher_feature=teacher_feature, teacher_classifier=teacher_classifier, progress=progress)
    finally:
        close(progress)
    if json_out:
        print_json(results)
        return
    table = Table(title=f"scores against {teacher} ({teacher_init})")
    table.add_column("arch genes")
    for name in dict.fromkeys(names):
        table.add_column(name, justify="right")
    for r in results:
        import json

        table.add_row(json.dumps(r["arch"]["genes"], separators=(",", ":")), *(f"{r['scores'][n]:.5g}" for n in dict.fromkeys(names)))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("score", rich_help_panel="Information")(score)
