"""``kdsearch correlate``: distil a stratified sample of a space and rank every proxy against accuracy."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kdsearch.cli import _options as o
from kdsearch.cli._console import close, console, make_progress, print_json

__all__ = ["register"]


def _csv(text: str | None, kind=str) -> tuple | None:
    return tuple(kind(x.strip()) for x in text.split(",") if x.strip()) if text else None


def correlate(
    teacher: o.Teacher,
    out: o.Out,
    data: o.Data = "fashion-mnist",
    data_dir: o.DataDir = None,
    subset: o.Subset = None,
    space: Annotated[str, typer.Option("--space", help="Search space to sample (name or YAML file).", rich_help_panel=o.SEARCH)] = "resnet_cifar",
    archs: Annotated[int, typer.Option("--archs", help="Architectures to distil, spread evenly over log-parameters.", rich_help_panel=o.SEARCH)] = 30,
    epochs: Annotated[int, typer.Option("--epochs", help="Distillation epochs per architecture.", rich_help_panel=o.TRAIN)] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.", rich_help_panel=o.TRAIN)] = 64,
    proxies: Annotated[Optional[str], typer.Option("--proxies", help="Comma list of proxies (default: all; params and flops always).", rich_help_panel=o.SEARCH)] = None,
    proxy_batch: Annotated[int, typer.Option("--proxy-batch", help="Images per proxy score (main variant).", rich_help_panel=o.SEARCH)] = 64,
    extra_batches: Annotated[str, typer.Option("--extra-batches", help="Other batch sizes the teacher-aware proxies are scored at.", rich_help_panel=o.SEARCH)] = "16,256",
    teacher_init: Annotated[str, typer.Option("--teacher-init", help="Teacher variants scored, main first: pretrained,random.", rich_help_panel=o.SEARCH)] = "pretrained,random",
    max_params: o.MaxParams = None,
    seed: o.Seed = 0,
    device: o.Device = "auto",
    json_out: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Does the proxy pick well? Distil N archs and report Kendall τ, size-controlled τ, top-5 hits and regret per proxy.

    Resumable: finished students are kept in OUT/correlate/students.jsonl and never trained twice.

    Example: kdsearch correlate --teacher runs/quick/teacher --data fashion-mnist --subset 5000 --archs 30 --epochs 1 --out runs/corr
    """
    from kdsearch.data import load_dataset
    from kdsearch.models.teacher import load_teacher
    from kdsearch.search.correlate import CorrelateConfig, run_correlate, with_train

    config = CorrelateConfig(space=space, archs=archs, proxies=_csv(proxies), proxy_batch=proxy_batch,
                             extra_batches=_csv(extra_batches, int) or (), teacher_inits=_csv(teacher_init) or (),
                             max_params=max_params, seed=seed)
    config = with_train(config, epochs=epochs, batch_size=batch_size, seed=seed, device=device)
    progress = make_progress(quiet, json_out)
    try:
        dataset = load_dataset(data, data_dir=data_dir, subset=subset, seed=seed)
        t = load_teacher(teacher, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                         image_size=dataset.image_size)
        result = run_correlate(t, dataset, out / "correlate", config, progress=progress)
    finally:
        close(progress)
    if json_out:
        print_json({"out": str(result.out_dir), "archs": len(result.students), "trained_now": result.trained_now,
                    "metrics": result.metrics})
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
    console.print(f"all variants → {result.out_dir / 'correlate.csv'}; plots → {result.out_dir / 'scatter.png'}")


def register(app: typer.Typer) -> None:
    app.command("correlate", rich_help_panel="Stages")(correlate)
