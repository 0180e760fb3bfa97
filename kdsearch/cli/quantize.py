"""``kdsearch quantize``: QAT-KD of a run's distilled student into RUN_DIR/qat."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer

from kdsearch.cli import _options as o
from kdsearch.cli._console import close, console, make_progress, print_json

__all__ = ["register", "quantize"]


def quantize(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with distill/student.json.")],
    epochs: Annotated[int, typer.Option("--epochs", help="QAT epochs.", rich_help_panel=o.TRAIN)] = 2,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (cosine decay); small: QAT fine-tunes.", rich_help_panel=o.TRAIN)] = 5e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.", rich_help_panel=o.TRAIN)] = 128,
    loss: Annotated[str, typer.Option("--loss", help="Logit losses by name and weight, e.g. kd:1,ce:1.", rich_help_panel=o.TRAIN)] = "kd:1,ce:1",
    freeze_bn_after: Annotated[int, typer.Option("--freeze-bn-after", help="Epochs on batch statistics before BatchNorm uses its running ones.", rich_help_panel=o.TRAIN)] = 1,
    freeze_observers_after: Annotated[int, typer.Option("--freeze-observers-after", help="Epochs the quantization ranges adapt before they are fixed.", rich_help_panel=o.TRAIN)] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed for shuffling and augmentation.", rich_help_panel=o.RUN)] = 0,
    device: o.Device = "auto",
    resume: o.Resume = False,
    force: o.Force = False,
    json_out: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Quantization-aware training of the distilled student, guided by the teacher; then int8.

    Example: kdsearch quantize runs/quick --epochs 2 && kdsearch export runs/quick --int8 qat
    """
    from kdsearch.errors import UsageError
    from kdsearch.quant import QatConfig, quantize_student

    config = QatConfig(epochs=epochs, lr=lr, batch_size=batch_size, loss=loss, freeze_bn_after=freeze_bn_after,
                       freeze_observers_after=freeze_observers_after, seed=seed, device=device)
    if not (run_dir / "distill" / "student.json").exists():
        raise UsageError(f"{run_dir} has no distilled student (distill/student.json); run `kdsearch distill` first")
    out = run_dir / "qat"
    if out.exists() and any(out.iterdir()):
        if force and not resume:
            shutil.rmtree(out)
        elif not resume:
            raise UsageError(f"{out} already exists; add --resume to continue it or --force to start over")
    progress = make_progress(quiet, json_out)
    try:
        metrics = quantize_student(run_dir, config, resume=resume, progress=progress)
    finally:
        close(progress)
    if json_out:
        print_json({k: v for k, v in metrics.items() if k != "history"})
    else:
        console.print(
            f"QAT-KD: val top-1 fp32 {metrics['fp32_val_acc']:.4f} → fake-quant {metrics['fake_quant_val_acc']:.4f} "
            f"→ int8 {metrics['int8_val_acc']:.4f}  → {out}  (then: kdsearch export {run_dir} --int8 qat)"
        )


def register(app: typer.Typer) -> None:
    app.command("quantize", rich_help_panel="Stages")(quantize)
