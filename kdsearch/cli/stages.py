"""One command per stage: teach, search, distill, export."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from kdsearch.cli import _options as o
from kdsearch.cli._common import base_config, data_flags, override
from kdsearch.cli._console import close, console, make_progress, print_json

__all__ = ["register"]

Space = Annotated[Optional[str], typer.Option("--space", help="Search space: a built-in name (see `kdsearch spaces`), a YAML file, or pruned (structured prunings of --teacher, starting from its weights).", rich_help_panel=o.SEARCH)]
Lr = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (default 0.1·batch/128 for SGD).", rich_help_panel=o.TRAIN)]
Batch = Annotated[Optional[int], typer.Option("--batch-size", help="Training batch size.", rich_help_panel=o.TRAIN)]
MaxMemory = Annotated[Optional[str], typer.Option("--max-memory", help="Memory the training may hold, e.g. 6GB or 512MB (default: 70% of what is free; on CUDA, GPU memory); on the CPU what the process holds already is taken off. Past it batches train as micro-batches with gradient accumulation, evaluation runs fewer images at a time and the teacher cache is skipped.", rich_help_panel=o.TRAIN)]
ExportMaxMemory = Annotated[Optional[str], typer.Option("--max-memory", help="Memory the export may hold, e.g. 4GB or 512MB (default: 70% of what is free); what it holds already is taken off, and accuracy and PTQ calibration run as many images at a time as the rest allows.", rich_help_panel=o.OUT)]


def teach(
    out: o.Out,
    model: Annotated[Optional[str], typer.Option("--model", help="Zoo model to train (default resnet20; see `kdsearch models`).", rich_help_panel=o.RUN)] = None,
    data: o.Data = None,
    data_dir: o.DataDir = None,
    subset: o.Subset = None,
    image_size: o.ImageSize = None,
    epochs: o.Epochs = None,
    batch_size: Batch = None,
    max_memory: MaxMemory = None,
    lr: Lr = None,
    seed: o.Seed = None,
    device: o.Device = None,
    config_file: o.Config = None,
    resume: o.Resume = False,
    force: o.Force = False,
    json_out: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Train a teacher from scratch (there is no pretrained teacher offline) into a model directory.

    Example: kdsearch teach --model resnet56 --data fashion-mnist --out teachers/r56
    """
    from kdsearch.pipeline import teach_command

    config = base_config(config_file)
    config = override(config, data=data_flags(data, data_dir, subset, image_size),
                      teach={"epochs": epochs, "batch_size": batch_size, "max_memory": max_memory, "lr": lr, "seed": seed,
                             "device": device},
                      top={"teacher_model": model})
    progress = make_progress(quiet, json_out)
    try:
        metrics = teach_command(out, config, resume=resume, force=force, progress=progress)  # --out is the model directory
    finally:
        close(progress)
    model = config.teacher_model
    result = {"model_dir": str(out), "model": model, "val_acc": metrics.val_acc, "test_acc": metrics.test_acc,
              "params": metrics.params}
    if json_out:
        print_json(result)
    else:
        test = "no test split" if metrics.test_acc is None else f"test top-1 {metrics.test_acc:.4f}"
        console.print(f"teacher {model}: val top-1 {metrics.val_acc:.4f}, {test}, "
                      f"{metrics.params:,} params → {out}  (use --teacher {out})")


Race = Annotated[Optional[int], typer.Option("--race", help="After the search, distil this many diverse finalists nearest the budget's edge in a successive-halving race (eta 3) and let it pick the winner, whose run goes on into its distillation; 0: no race.", rich_help_panel=o.SEARCH)]
RaceRank = Annotated[Optional[str], typer.Option("--race-rank", help="What each rung ranks the finalists by: tse (default: the lowest sum of training losses so far, which picked better on the race benchmark) or val (validation top-1).", rich_help_panel=o.SEARCH)]
RaceBudget = Annotated[Optional[float], typer.Option("--race-budget", help="The race and the winner's distillation together cost at most this many distillations, in optimizer steps (default 1.25): the winner's race run goes on into its distillation, so only the other finalists' steps are extra.", rich_help_panel=o.SEARCH)]


def search(
    out: o.Out,
    teacher: o.Teacher = None,
    data: o.Data = None,
    data_dir: o.DataDir = None,
    subset: o.Subset = None,
    image_size: o.ImageSize = None,
    space: Space = None,
    proxy: Annotated[Optional[str], typer.Option("--proxy", help="Proxy that ranks candidates (see `kdsearch proxies`).", rich_help_panel=o.SEARCH)] = None,
    objectives: Annotated[Optional[str], typer.Option("--objectives", help="Comma list: a proxy, then costs (params, flops, latency) for a Pareto search; under --pick largest params is maximised within the budget.", rich_help_panel=o.SEARCH)] = None,
    trials: o.Trials = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="evolution (NSGA-II), nsga3, tpe or random.", rich_help_panel=o.SEARCH)] = None,
    population: Annotated[Optional[int], typer.Option("--population", help="Candidates in the first generation, drawn from inside the budgets (every sampler); the NSGA population size.", rich_help_panel=o.SEARCH)] = None,
    mutation_prob: Annotated[Optional[float], typer.Option("--mutation-prob", help="NSGA-II mutation probability (default 1/genes); --sampler evolution only.", rich_help_panel=o.SEARCH)] = None,
    crossover_prob: Annotated[Optional[float], typer.Option("--crossover-prob", help="NSGA-II crossover probability (default 0.9); --sampler evolution only.", rich_help_panel=o.SEARCH)] = None,
    max_params: o.MaxParams = None,
    max_flops: Annotated[Optional[int], typer.Option("--max-flops", help="Hard budget: most FLOPs at batch 1.", rich_help_panel=o.SEARCH)] = None,
    max_latency_ms: Annotated[Optional[float], typer.Option("--max-latency-ms", help="Hard budget: ONNX Runtime latency at batch 1 on this machine, in ms (predicted per candidate, measured for the winner).", rich_help_panel=o.SEARCH)] = None,
    speedup: o.Speedup = None,
    latency_batch: o.LatencyBatch = None,
    latency_threads: o.LatencyThreads = None,
    pick: Annotated[Optional[str], typer.Option("--pick", help="Winner rule: largest (default: the most params within the budgets, the proxy breaking ties — what won the correlate studies), best (trust the proxy: highest score) or knee (of the Pareto front).", rich_help_panel=o.SEARCH)] = None,
    teacher_init: Annotated[Optional[str], typer.Option("--teacher-init", help="random (default): score against a freshly initialised teacher of the same architecture, DisWOT's reference procedure and the better of the two in both correlate studies; pretrained: against the trained weights.", rich_help_panel=o.SEARCH)] = None,
    teacher_feature: Annotated[Optional[str], typer.Option("--teacher-feature", help="Module path of the teacher's last 4-D feature map (default: found automatically).", rich_help_panel=o.SEARCH)] = None,
    teacher_classifier: Annotated[Optional[str], typer.Option("--teacher-classifier", help="Module path of the teacher's final linear layer (default: found automatically).", rich_help_panel=o.SEARCH)] = None,
    proxy_batch: Annotated[Optional[int], typer.Option("--proxy-batch", help="Images scored per candidate.", rich_help_panel=o.SEARCH)] = None,
    seed_arch: Annotated[Optional[List[Path]], typer.Option("--seed-arch", help="Arch JSON to evaluate first (repeatable).", rich_help_panel=o.SEARCH)] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Optuna RDB URL (default: SQLite in the run directory).", rich_help_panel=o.SEARCH)] = None,
    study_name: Annotated[Optional[str], typer.Option("--study-name", help="Study name in the storage.", rich_help_panel=o.SEARCH)] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Worker processes sharing the study on this machine; on other machines run the same command with --storage URL --resume.", rich_help_panel=o.SEARCH)] = None,
    race: Race = None,
    race_budget: RaceBudget = None,
    race_rank: RaceRank = None,
    seed: o.Seed = None,
    config_file: o.Config = None,
    resume: o.Resume = False,
    force: o.Force = False,
    json_out: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Search a space for the student that scores best against the teacher, training-free.

    Example: kdsearch search --teacher teachers/r20 --data fashion-mnist --max-params 60000 --trials 100 --out runs/s1
    """
    from kdsearch.arch import Arch
    from kdsearch.pipeline import search_command
    from kdsearch.rundir import RunDir

    config = base_config(config_file)
    objs = tuple(x.strip() for x in objectives.split(",") if x.strip()) if objectives else None
    search_flags = {
        "space": space, "proxy": proxy or (objs[0] if objs else None), "objectives": objs, "trials": trials,
        "sampler": sampler, "population": population, "mutation_prob": mutation_prob, "crossover_prob": crossover_prob,
        "max_params": max_params, "max_flops": max_flops, "max_latency_ms": max_latency_ms, "pick": pick,
        "speedup": speedup, "latency_batch": latency_batch, "latency_threads": latency_threads,
        "teacher_init": teacher_init, "teacher_feature": teacher_feature, "teacher_classifier": teacher_classifier,
        "proxy_batch": proxy_batch, "storage": storage, "study_name": study_name, "seed": seed,
        "workers": workers, "race": race, "race_budget": race_budget,
        "race_rank": race_rank,
    }
    if proxy and not objs:
        search_flags["objectives"] = (proxy, *config.search.objectives[1:])
    config = override(config, data=data_flags(data, data_dir, subset, image_size), search=search_flags, top={"teacher": teacher})
    seeds = [Arch.load(p) for p in seed_arch or []]
    progress = make_progress(quiet, json_out)
    try:
        outcome = search_command(out, config, seed_archs=seeds, resume=resume, force=force, progress=progress)
    finally:
        close(progress)
    winner = outcome.winner
    if json_out:
        print_json({"winner": winner.arch, "params": winner.params, "flops": winner.flops, "score": winner.score,
                    "rule": winner.rule, "reason": winner.reason, "trials": len(outcome.rows),
                    "feasible": outcome.feasible, "storage": outcome.storage_url, "study_name": outcome.study_name})
    else:
        from kdsearch.report.tables import leaderboard_table

        console.print(leaderboard_table(outcome.rows, config.search.proxy, outcome.winner_row))
        why = f": {winner.reason}" if winner.reason else ""
        console.print(f"winner by --pick {winner.rule}{why} → {RunDir(out).winner}")
        console.print(f"view the study: optuna-dashboard {outcome.storage_url}", highlight=False)


def distill(
    run_dir: Annotated[Optional[Path], typer.Argument(help="A run directory with search/winner.json (or give --teacher, --student, --out).")] = None,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="Teacher spec (default: the run's).", rich_help_panel=o.RUN)] = None,
    student: Annotated[Optional[Path], typer.Option("--student", help="Arch JSON of the student (default: the run's search/winner.json).", rich_help_panel=o.RUN)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run directory to write (default: RUN_DIR).", rich_help_panel=o.OUT)] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Dataset NAME[:PATH] (default: the run's).", rich_help_panel=o.DATA)] = None,
    data_dir: o.DataDir = None,
    subset: o.Subset = None,
    image_size: o.ImageSize = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="Losses by name and weight, e.g. kd:1,ce:1 (see `kdsearch losses`).", rich_help_panel=o.TRAIN)] = None,
    epochs: o.Epochs = None,
    batch_size: Batch = None,
    max_memory: MaxMemory = None,
    lr: Lr = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="KD temperature.", rich_help_panel=o.TRAIN)] = None,
    cache_teacher: Annotated[Optional[bool], typer.Option("--cache-teacher/--no-cache-teacher", help="Compute the teacher's outputs once and reuse them every epoch; applies only with --no-augment (inputs must not change between epochs).", rich_help_panel=o.TRAIN)] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="The dataset's standard augmentation (random crop, flip).", rich_help_panel=o.TRAIN)] = None,
    optimizer: Annotated[Optional[str], typer.Option("--optimizer", help="sgd (Nesterov) or adamw.", rich_help_panel=o.TRAIN)] = None,
    schedule: Annotated[Optional[str], typer.Option("--schedule", help="Learning-rate schedule: cosine (with warm-up) or onecycle.", rich_help_panel=o.TRAIN)] = None,
    warmup_epochs: Annotated[Optional[float], typer.Option("--warmup-epochs", help="Linear warm-up before the cosine decay, in epochs (may be fractional).", rich_help_panel=o.TRAIN)] = None,
    grad_clip: Annotated[Optional[float], typer.Option("--grad-clip", help="Clip the global gradient norm to this (0: no clipping).", rich_help_panel=o.TRAIN)] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="Weight decay (never applied to norms and biases).", rich_help_panel=o.TRAIN)] = None,
    label_smoothing: Annotated[Optional[float], typer.Option("--label-smoothing", help="Label smoothing of the ce term, in [0, 1).", rich_help_panel=o.TRAIN)] = None,
    temperature_schedule: Annotated[Optional[str], typer.Option("--temperature-schedule", help="fixed, or dts: the KD temperature follows the student-teacher cross-entropy gap.", rich_help_panel=o.TRAIN)] = None,
    loss_option: Annotated[Optional[List[str]], typer.Option("--loss-option", help="A loss option NAME.KEY=VALUE, e.g. dkd.beta=2 (repeatable).", rich_help_panel=o.TRAIN)] = None,
    compile_model: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the student (pays off on a GPU over long runs).", rich_help_panel=o.TRAIN)] = None,
    init: o.Init = None,
    space: Annotated[Optional[str], typer.Option("--space", help="The space the student's arch belongs to, a built-in name or a YAML file: needed for an arch of your own space without a RUN_DIR (a run directory keeps its space).", rich_help_panel=o.RUN)] = None,
    assistant: Annotated[Optional[str], typer.Option("--assistant", help="Teacher-assistant distillation through ARCH.json, or auto: the search front's arch sized between teacher and student.", rich_help_panel=o.TRAIN)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of initialisation, shuffling and augmentation (default 0); the train/val split follows data.seed in --config.", rich_help_panel=o.RUN)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda.", rich_help_panel=o.RUN)] = None,
    config_file: o.Config = None,
    resume: o.Resume = False,
    force: o.Force = False,
    json_out: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Distil a student from the teacher (GPU when present), checkpointing every epoch.

    Several processes: torchrun --nproc-per-node 2 -m kdsearch distill RUN_DIR (rank 0 writes the files).

    Example: kdsearch distill runs/quick --epochs 10   or
    kdsearch distill --teacher teachers/r20 --student winner.json --data fashion-mnist --out runs/d1
    """
    from kdsearch.arch import Arch
    from kdsearch.cli._common import run_config
    from kdsearch.distill.distributed import is_main_process
    from kdsearch.errors import UsageError
    from kdsearch.pipeline import distill_command
    from kdsearch.rundir import RunDir

    flags = {"loss": loss, "epochs": epochs, "batch_size": batch_size, "max_memory": max_memory, "lr": lr, "temperature": temperature,
             "cache_teacher": cache_teacher, "augment": augment, "seed": seed, "device": device,
             "optimizer": optimizer, "schedule": schedule, "warmup_epochs": warmup_epochs,
             "grad_clip": grad_clip, "weight_decay": weight_decay, "label_smoothing": label_smoothing,
             "temperature_schedule": temperature_schedule, "compile": compile_model,
             "loss_options": tuple(loss_option) if loss_option else None, "init": init}
    data_section = data_flags(data, data_dir, subset, image_size)
    if run_dir is not None:
        # the run's run.yaml, then --config, then the flags
        config = run_config(run_dir, config_file, data=data_section, distill=flags, search={"space": space},
                            top={"teacher": teacher})
        out = out or run_dir
        arch_file = student or RunDir(run_dir).winner
        if not arch_file.exists():
            raise UsageError(f"{run_dir} has no search/winner.json; run `kdsearch search` first or give --student")
        if config.teacher is None:
            config = replace(config, teacher=str(run_dir / "teacher"))
    else:
        if teacher is None or student is None or out is None:
            raise UsageError("give a RUN_DIR, or all of --teacher, --student and --out")
        config = override(base_config(config_file), data=data_section, distill=flags, search={"space": space},
                          top={"teacher": teacher})
        arch_file = student
    arch = Arch.load(arch_file)
    main = is_main_process()  # under torchrun, rank 0 alone prints
    progress = make_progress(quiet or not main, json_out)
    try:
        metrics = distill_command(out, config, arch, run_dir=run_dir, assistant=assistant, resume=resume,
                                  force=force, progress=progress)
    finally:
        close(progress)
    if metrics is None:  # not rank 0
        return
    if json_out:
        print_json({k: v for k, v in metrics.to_dict().items() if k != "history"})
    else:
        console.print(f"student val top-1 {metrics.val_acc:.4f} (teacher {metrics.teacher_val_acc or float('nan'):.4f}), "
                      f"{metrics.params:,} params → {out / 'distill'}")


def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with distill/student.json.")],
    int8: Annotated[Optional[str], typer.Option("--int8", help="none, ptq (post-training static), qat (from `kdsearch quantize`) or ptq,qat; int8 files of the same student made earlier are kept.", rich_help_panel=o.OUT)] = None,
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset (18 or more).", rich_help_panel=o.OUT)] = None,
    provider: Annotated[Optional[str], typer.Option("--provider", help="ONNX Runtime provider: cpu, cuda or tensorrt (falls back to cpu with a warning).", rich_help_panel=o.OUT)] = None,
    calib_images: Annotated[Optional[int], typer.Option("--calib-images", help="Training images that calibrate PTQ.", rich_help_panel=o.OUT)] = None,
    latency_runs: Annotated[Optional[int], typer.Option("--latency-runs", help="Timed rounds per batch size; each round runs the teacher and every file once, interleaved.", rich_help_panel=o.OUT)] = None,
    latency_batch: Annotated[Optional[int], typer.Option("--latency-batch", help="Throughput batch timed beside batch 1 (default: the run's search.latency_batch, 32).", rich_help_panel=o.OUT)] = None,
    latency_threads: Annotated[Optional[int], typer.Option("--latency-threads", help="ONNX Runtime threads when timing (default: the run's search.latency_threads, 1: one core of an edge CPU).", rich_help_panel=o.OUT)] = None,
    max_memory: ExportMaxMemory = None,
    config_file: o.Config = None,
    json_out: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Export the distilled student to ONNX, verify it against PyTorch and measure it in ONNX Runtime.

    Options come from RUN_DIR/run.yaml's export section, then --config, then flags; the result is saved back.

    Example: kdsearch export runs/quick --int8 ptq
    """
    from kdsearch.cli._common import run_config
    from kdsearch.pipeline import export_command

    config = run_config(run_dir, config_file, export={"int8": int8, "opset": opset, "provider": provider, "calib_images": calib_images,
                                      "latency_runs": latency_runs, "latency_batch": latency_batch,
                                      "latency_threads": latency_threads, "max_memory": max_memory})
    progress = make_progress(quiet, json_out)
    try:
        record = export_command(run_dir, config, progress=progress)
    finally:
        close(progress)
    if json_out:
        print_json(record.to_dict())
    else:
        from kdsearch.report.tables import export_table

        console.print(export_table(record.to_dict()))


def register(app: typer.Typer) -> None:
    app.command("teach", rich_help_panel="Stages")(teach)
    app.command("search", rich_help_panel="Stages")(search)
    app.command("distill", rich_help_panel="Stages")(distill)
    app.command("export", rich_help_panel="Stages")(export)
