"""``kdsearch correlate``: distil a stratified sample of a space and rank every proxy against accuracy."""
from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Optional

import typer

from kdsearch.cli import _options as o
from kdsearch.cli._console import close, console, make_progress, print_json
from kdsearch.logs import capture_library_noise

__all__ = ["register"]


def _csv(text: str | None, kind=str) -> tuple | None:
    return tuple(kind(x.strip()) for x in text.split(",") if x.strip()) if text else None


def correlate(
    out: o.Out,
    teacher: o.Teacher = None,
    data: o.Data = None,
    data_dir: o.DataDir = None,
    subset: o.Subset = None,
    image_size: o.ImageSize = None,
    space: Annotated[Optional[str], typer.Option("--space", help="Search space to sample (default resnet_cifar; name or YAML file).", rich_help_panel=o.SEARCH)] = None,
    archs: Annotated[Optional[int], typer.Option("--archs", help="Architectures to distil, spread evenly over log-parameters (default 30).", rich_help_panel=o.SEARCH)] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Distillation epochs per architecture (default 2).", rich_help_panel=o.TRAIN)] = None,
    repeats: Annotated[Optional[int], typer.Option("--repeats", help="Training seeds per architecture (default 1); with 2 or more, accuracy is their mean, and how well one seed's accuracies rank the archs for another seed is reported: a measure of training noise in the ground truth, not an upper bound on a proxy's correlation with the mean.", rich_help_panel=o.TRAIN)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Training batch size (default 64).", rich_help_panel=o.TRAIN)] = None,
    proxies: Annotated[Optional[str], typer.Option("--proxies", help="Comma list of proxies (default: all; params and flops always).", rich_help_panel=o.SEARCH)] = None,
    proxy_batch: Annotated[Optional[int], typer.Option("--proxy-batch", help="Images per proxy score, main variant (default 64).", rich_help_panel=o.SEARCH)] = None,
    extra_batches: Annotated[Optional[str], typer.Option("--extra-batches", help="Other batch sizes the teacher-aware proxies are scored at (default 16,256).", rich_help_panel=o.SEARCH)] = None,
    teacher_init: Annotated[Optional[str], typer.Option("--teacher-init", help="Teacher variants scored, main first (default random,pretrained).", rich_help_panel=o.SEARCH)] = None,
    max_params: o.MaxParams = None,
    edges: Annotated[Optional[str], typer.Option("--edges", help="Budget edges, e.g. params=34000,flops=2e7: two thirds of the archs are drawn near them (0.7-1.1 × each edge), where a winner rule's choice is decided; the rest spread over sizes.", rich_help_panel=o.SEARCH)] = None,
    seed: o.Seed = None,
    device: o.Device = None,
    config_file: o.Config = None,
    json_out: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Does the proxy pick well? Distil N archs and report Kendall τ, size-controlled τ, top-5 hits and regret per proxy.

    Resumable: finished students are kept in OUT/correlate/students.jsonl and never trained twice.
    Options may come from --config (teacher, data and its correlate section); flags override them.

    Example: kdsearch correlate --teacher runs/quick/teacher --data fashion-mnist --subset 5000 --archs 30 --epochs 1 --out runs/corr
    """
    from kdsearch.cli._common import base_config, data_flags, override, require_teacher
    from kdsearch.spaces.model_files import load_teacher
    from kdsearch.pipeline import load_run_dataset, save_run_config
    from kdsearch.pipeline.workspace import opened_run_dir
    from kdsearch.rundir import RunDir
    from kdsearch.search.correlate import run_correlate, with_train

    extra = () if extra_batches is not None and not extra_batches.strip() else _csv(extra_batches, int)
    config = override(base_config(config_file), data=data_flags(data, data_dir, subset, image_size), top={"teacher": teacher},
                      correlate={"space": space, "archs": archs, "proxies": _csv(proxies), "proxy_batch": proxy_batch,
                                 "extra_batches": extra, "teacher_inits": _csv(teacher_init),
                                 "max_params": max_params, "edges": _csv(edges), "seed": seed, "repeats": repeats})
    c = with_train(config.correlate, epochs=epochs, batch_size=batch_size, seed=seed, device=device)
    spec = require_teacher(config)
    progress = make_progress(quiet, json_out)
    try:
        dataset = load_run_dataset(config)
        t = load_teacher(spec, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                         image_size=dataset.image_size)
        with opened_run_dir(out, resume=True, force=False):  # refused before any student: nothing left behind
            save_run_config(out, replace(config, correlate=c))
            with capture_library_noise(RunDir(out).log):
                result = run_correlate(t, dataset, out / "correlate", c, progress=progress)
    finally:
        close(progress)
    if json_out:
        print_json({"out": str(result.out_dir), "archs": len(result.students), "trained_now": result.trained_now,
                    "metrics": result.metrics, "reliability": result.reliability})
        return
    from rich.table import Table

    table = Table(title=f"proxies vs distilled accuracy ({len(result.students)} archs)")
    for col in ("proxy", "Kendall τ", "Spearman ρ", "size-ctrl τ", "top-5 hit", "mean regret"):
        table.add_column(col, justify="left" if col == "proxy" else "right")
    for m in result.metrics:
        if "@" in m["proxy"] or "[" in m["proxy"]:
            continue  # variants are in correlate.csv
        table.add_row(m["proxy"], *(f"{m[k]:.3f}" for k in ("kendall_tau", "spearman_rho", "size_controlled_tau",
                                                             "top5_hit", "mean_regret")))
    console.print(table)
    r = result.reliability
    if r:
        console.print(f"training noise — one training seed ranking another ({r['seeds']} seeds): Kendall τ {r['kendall_tau']:.3f}, "
                      f"size-ctrl τ {r['size_controlled_tau']:.3f}, regret {r['mean_regret']:.3f}; accuracy sd "
                      f"{r['acc_sd_within_arch']:.4f} between seeds, {r['acc_sd_between_archs']:.4f} between archs")
    console.print(f"all variants → {result.out_dir / 'correlate.csv'}; plots → {result.out_dir / 'scatter.png'}")


def register(app: typer.Typer) -> None:
    app.command("correlate", rich_help_panel="Stages")(correlate)
