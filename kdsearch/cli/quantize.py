"""``kdsearch quantize``: QAT-KD of a run's distilled student into RUN_DIR/qat."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kdsearch.cli import _options as o
from kdsearch.cli._console import close, console, make_progress, print_json
from kdsearch.cli.stages import MaxMemory

__all__ = ["register", "quantize"]


def quantize(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with distill/student.json.")],
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="QAT epochs (default 2).", rich_help_panel=o.TRAIN)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate, cosine decay (default 0.005: QAT fine-tunes).", rich_help_panel=o.TRAIN)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Training batch size (default 128).", rich_help_panel=o.TRAIN)] = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="Logit losses by name and weight (default kd:1,ce:1).", rich_help_panel=o.TRAIN)] = None,
    freeze_bn_after: Annotated[Optional[int], typer.Option("--freeze-bn-after", help="Epochs on batch statistics before BatchNorm uses its running ones (default 1).", rich_help_panel=o.TRAIN)] = None,
    freeze_observers_after: Annotated[Optional[int], typer.Option("--freeze-observers-after", help="Epochs the quantization ranges adapt before they are fixed (default 1).", rich_help_panel=o.TRAIN)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for shuffling and augmentation (default 0).", rich_help_panel=o.RUN)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto (CUDA when present), cpu or cuda.", rich_help_panel=o.RUN)] = None,
    max_memory: MaxMemory = None,
    config_file: o.Config = None,
    resume: o.Resume = False,
    force: o.Force = False,
    json_out: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Quantization-aware training of the distilled student, guided by the teacher; then int8.

    Options come from RUN_DIR/run.yaml's quantize section, then --config, then flags; the result is saved back.

    Example: kdsearch quantize runs/quick --epochs 2 && kdsearch export runs/quick --int8 qat
    """
    from kdsearch.cli._common import run_config
    from kdsearch.errors import UsageError
    from kdsearch.pipeline import quantize_command
    from kdsearch.rundir import RunDir

    if not RunDir(run_dir).config.exists():
        raise UsageError(f"{run_dir} is not a kdsearch run directory (no run.yaml); give the --out of a `kdsearch run`")
    config = run_config(run_dir, config_file, quantize={
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "loss": loss, "freeze_bn_after": freeze_bn_after,
        "freeze_observers_after": freeze_observers_after, "seed": seed, "device": device, "max_memory": max_memory})
    progress = make_progress(quiet, json_out)
    try:
        metrics = quantize_command(run_dir, config, resume=resume, force=force, progress=progress)
    finally:
        close(progress)
    if json_out:
        print_json({k: v for k, v in metrics.to_dict().items() if k != "history"})
    else:
        console.print(
            f"QAT-KD: val top-1 fp32 {metrics.fp32_val_acc:.4f} → fake-quant {metrics.fake_quant_val_acc:.4f} "
            f"→ int8 {metrics.int8_val_acc:.4f}  → {RunDir(run_dir).qat}  (then: kdsearch export {run_dir} --int8 qat)"
        )


def register(app: typer.Typer) -> None:
    app.command("quantize", rich_help_panel="Stages")(quantize)
