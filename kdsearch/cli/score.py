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
    teacher: o.Teacher = None,
    data: o.Data = None,
    data_dir: o.DataDir = None,
    subset: o.Subset = None,
    image_size: o.ImageSize = None,
    space: Annotated[Optional[str], typer.Option("--space", help="Search space: a built-in name (default resnet_cifar) or a YAML file.", rich_help_panel=o.SEARCH)] = None,
    arch: Annotated[Optional[List[Path]], typer.Option("--arch", help="Arch JSON file to score (repeatable).", rich_help_panel=o.SEARCH)] = None,
    sample: Annotated[Optional[int], typer.Option("--sample", help="Score N archs sampled from the space.", rich_help_panel=o.SEARCH)] = None,
    proxy: Annotated[Optional[str], typer.Option("--proxy", help="Comma list of proxies (default: the search proxy, params, flops; see `kdsearch proxies`).", rich_help_panel=o.SEARCH)] = None,
    teacher_init: Annotated[Optional[str], typer.Option("--teacher-init", help="random (default): a freshly initialised teacher of the same architecture (DisWOT's procedure), or pretrained: the trained weights.", rich_help_panel=o.SEARCH)] = None,
    teacher_feature: Annotated[Optional[str], typer.Option("--teacher-feature", help="Module path of the teacher's last 4-D feature map.", rich_help_panel=o.SEARCH)] = None,
    teacher_classifier: Annotated[Optional[str], typer.Option("--teacher-classifier", help="Module path of the teacher's final linear layer.", rich_help_panel=o.SEARCH)] = None,
    proxy_batch: Annotated[Optional[int], typer.Option("--proxy-batch", help="Images scored per candidate (default 64).", rich_help_panel=o.SEARCH)] = None,
    seed: o.Seed = None,
    config_file: o.Config = None,
    json_out: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Score archs against a teacher with training-free proxies (higher is better; params/flops are costs).

    Teacher, data and the search section's proxy options may come from --config; flags override them.

    Example: kdsearch score --teacher resnet56 --data fashion-mnist --space resnet_cifar --sample 5 --proxy diswot,snip --json
    """
    from kdsearch.arch import Arch
    from kdsearch.cli._common import base_config, data_flags, override, require_teacher
    from kdsearch.errors import UsageError
    from kdsearch.spaces.model_files import load_teacher
    from kdsearch.pipeline import load_run_dataset
    from kdsearch.proxies.scoring import sample_archs, score_archs
    from kdsearch.spaces import load_space

    if bool(arch) == (sample is not None):
        raise UsageError("give either --arch FILE.json (repeatable) or --sample N")
    config = override(base_config(config_file), data=data_flags(data, data_dir, subset, image_size), top={"teacher": teacher},
                      search={"space": space, "teacher_init": teacher_init, "teacher_feature": teacher_feature,
                              "teacher_classifier": teacher_classifier, "proxy_batch": proxy_batch, "seed": seed})
    s = config.search
    if s.teacher_init not in {"pretrained", "random"}:
        raise UsageError(f"unknown --teacher-init {s.teacher_init!r}; use pretrained or random")
    names = [p.strip() for p in (proxy or f"{s.proxy},params,flops").split(",") if p.strip()]
    spec = require_teacher(config)
    dataset = load_run_dataset(config)
    the_space = load_space(s.space)
    archs = [Arch.load(p) for p in arch] if arch else sample_archs(the_space, sample or 0, s.seed, dataset.image_size)
    t = load_teacher(spec, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                     image_size=dataset.image_size)
    module = t.module if s.teacher_init == "pretrained" else t.fresh_copy(s.seed)
    progress = make_progress(quiet, json_out)
    try:
        results = score_archs(module, dataset, the_space, archs, names, batch_size=s.proxy_batch, seed=s.seed,
                              teacher_feature=s.teacher_feature, teacher_classifier=s.teacher_classifier,
                              progress=progress)
    finally:
        close(progress)
    if json_out:
        print_json(results)
        return
    table = Table(title=f"scores against {spec} ({s.teacher_init})")
    table.add_column("arch genes")
    for name in dict.fromkeys(names):
        table.add_column(name, justify="right")
    for r in results:
        import json

        table.add_row(json.dumps(r["arch"]["genes"], separators=(",", ":")), *(f"{r['scores'][n]:.5g}" for n in dict.fromkeys(names)))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("score", rich_help_panel="Information")(score)
