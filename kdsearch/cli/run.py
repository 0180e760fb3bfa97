"""``kdsearch run``: the whole chain into one run directory."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kdsearch.cli import _options as o
from kdsearch.cli._common import base_config, override
from kdsearch.cli._console import close, console, make_progress, print_json
from kdsearch.cli.stages import Race, RaceBudget, RaceRank

__all__ = ["register"]


def run(
    out: o.Out = Path("runs/quick"),
    data: Annotated[Optional[str], typer.Option("--data", help="Dataset NAME[:PATH] (default fashion-mnist).", rich_help_panel=o.DATA)] = None,
    data_dir: o.DataDir = None,
    subset: o.Subset = None,
    image_size: o.ImageSize = None,
    teacher: o.OptTeacher = None,
    preset_name: Annotated[str, typer.Option("--preset", help="quick (students pruned from the teacher; about 4 min on 2 CPU cores with --teacher, 10 min when it trains the teacher too), tiny (seconds) or standard.", rich_help_panel=o.RUN)] = "quick",
    config_file: o.Config = None,
    space: Annotated[Optional[str], typer.Option("--space", help="Search space name, YAML file, or pruned (structured prunings of the teacher; the quick preset's).", rich_help_panel=o.SEARCH)] = None,
    trials: o.Trials = None,
    speedup: o.Speedup = None,
    latency_batch: o.LatencyBatch = None,
    latency_threads: o.LatencyThreads = None,
    max_params: o.MaxParams = None,
    race: Race = None,
    race_budget: RaceBudget = None,
    race_rank: RaceRank = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Distillation epochs of the student; the teacher's (teach) and QAT's epochs stay the preset's or --config's.", rich_help_panel=o.TRAIN)] = None,
    init: o.Init = None,
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", help="Memory each stage may use, e.g. 6GB (default: 70% of what is free); on the CPU it caps the process, what it holds already included: past it a training batch runs as micro-batches with gradient accumulation, and evaluation, calibration and the export's accuracy run fewer images at a time.", rich_help_panel=o.RUN)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of every stage's training and search (the train/val split follows data.seed in --config).", rich_help_panel=o.RUN)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Where teach, distill and QAT train: auto, cpu or cuda.", rich_help_panel=o.RUN)] = None,
    qat: Annotated[Optional[bool], typer.Option("--qat/--no-qat", help="Add quantization-aware training with KD and an int8 export.", rich_help_panel=o.RUN)] = None,
    resume: o.Resume = False,
    force: o.Force = False,
    json_out: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Run teach (when no --teacher) → search → distill → export into one run directory.

    Example: kdsearch run --data fashion-mnist --preset quick --out runs/quick
    """
    from kdsearch.pipeline import run_pipeline

    config = base_config(config_file, preset_name)
    dev = {"device": device} if device else {}
    sd = {"seed": seed} if seed is not None else {}
    config = override(
        config,
        data={"spec": data, "data_dir": str(data_dir) if data_dir else None, "subset": subset, "image_size": image_size},
        search={"space": space, "trials": trials, "max_params": max_params, "race": race, "race_budget": race_budget,
                "speedup": speedup, "latency_batch": latency_batch, "latency_threads": latency_threads,
                "race_rank": race_rank, **sd},
        distill={"epochs": epochs, "max_memory": max_memory, "init": init, **dev, **sd},
        teach={"max_memory": max_memory, **dev, **sd},
        quantize={"max_memory": max_memory, **dev, **sd},
        export={"max_memory": max_memory},
        top={"teacher": teacher, "qat": qat},
    )
    progress = make_progress(quiet, json_out)
    try:
        summary = run_pipeline(config, out, resume=resume, force=force, progress=progress)
    finally:
        close(progress)
    if json_out:
        print_json(summary)
    else:
        from kdsearch.report.tables import summary_table

        console.print(summary_table(summary))


def register(app: typer.Typer) -> None:
    app.command("run", rich_help_panel="Pipeline")(run)
