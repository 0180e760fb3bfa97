"""One vocabulary of options: the same name for the same thing in every command."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DATA = "Data"
RUN = "Run"
TRAIN = "Training"
SEARCH = "Search"
OUT = "Output"

Data = Annotated[Optional[str], typer.Option("--data", help="Dataset NAME[:PATH]: fashion-mnist (default), mnist, cifar10, cifar100, imagefolder:DIR, npz:FILE.", rich_help_panel=DATA)]
DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="Where to look for (and download) dataset files.", rich_help_panel=DATA)]
Subset = Annotated[Optional[int], typer.Option("--subset", help="Keep only N training images (quick runs).", rich_help_panel=DATA)]
ImageSize = Annotated[Optional[int], typer.Option("--image-size", help="Square image side in pixels; default: photos (over 64 px) are centre-cropped to 224, small images keep their size.", rich_help_panel=DATA)]
Teacher = Annotated[Optional[str], typer.Option("--teacher", help="Teacher: a zoo name (fresh weights), a model directory, TorchScript .pt or torch.export .pt2 (required here or in --config).", rich_help_panel=RUN)]
OptTeacher = Annotated[Optional[str], typer.Option("--teacher", help="Teacher: a zoo name, a model directory, .pt (TorchScript) or .pt2; default: train one.", rich_help_panel=RUN)]
Out = Annotated[Path, typer.Option("--out", help="Run directory to write.", rich_help_panel=OUT)]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed for every random choice of training and search (default 0): same seed, same run. The train/val split follows data.seed in --config.", rich_help_panel=RUN)]
Device = Annotated[Optional[str], typer.Option("--device", help="auto (default: CUDA when present), cpu or cuda.", rich_help_panel=RUN)]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="Training epochs.", rich_help_panel=TRAIN)]
Trials = Annotated[Optional[int], typer.Option("--trials", help="Candidates to evaluate (complete trials, resumed ones included).", rich_help_panel=SEARCH)]
Speedup = Annotated[Optional[float], typer.Option("--speedup", help="Speed budget: the student must be at least this many times faster than the teacher in ONNX Runtime on this machine, at batch 1 and at --latency-batch (predicted for every candidate by a cached latency model; the winner is timed for real against the teacher).", rich_help_panel=SEARCH)]
LatencyBatch = Annotated[Optional[int], typer.Option("--latency-batch", help="The throughput batch a speed budget is also judged at (default 32).", rich_help_panel=SEARCH)]
LatencyThreads = Annotated[Optional[int], typer.Option("--latency-threads", help="ONNX Runtime threads when timing teacher and students (default 1: one core of an edge CPU).", rich_help_panel=SEARCH)]
MaxParams = Annotated[Optional[int], typer.Option("--max-params", help="Hard budget: most parameters a student may have.", rich_help_panel=SEARCH)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue what an interrupted run left.", rich_help_panel=OUT)]
Force = Annotated[bool, typer.Option("--force", help="Start over, replacing an existing run directory.", rich_help_panel=OUT)]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.", rich_help_panel=OUT)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.", rich_help_panel=OUT)]
Config = Annotated[Optional[Path], typer.Option("--config", help="YAML file of options (run.yaml format: one section per command); flags override it.", rich_help_panel=RUN)]
Init = Annotated[Optional[str], typer.Option("--init", help="How the student starts: auto (default): inherit where it can, else random, saying which; inherit: cut from the teacher's weights (its most important blocks and channels), for a resnet_cifar, mbconv or vit student of a teacher of its family (a zoo model or model directory), refused otherwise; random: fresh weights.", rich_help_panel=TRAIN)]
