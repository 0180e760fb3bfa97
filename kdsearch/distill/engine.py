"""The one training engine: teacher training, distillation and QAT-KD run through :func:`fit`.

What differs between those boxes is the model handed in, the loss and a few
:class:`Phases` hooks (QAT freezes observers and BatchNorm per epoch); the loop itself —
batching, the step, checkpoint and resume, the NaN and Ctrl-C paths — exists once, here.
The module reads top to bottom the way the loop runs:

1. batches: :func:`epoch_batches`, the one batcher (shuffle, shard per rank), and :func:`load_batch`;
2. set-up: :func:`build_criterion`, :func:`build_optimizer`, :class:`TeacherTargets` (live or cached);
3. the checkpoint: :class:`TrainState`, saved and restored in one place;
4. one step: :func:`train_step`; one epoch: :func:`train_epoch` (both read the :class:`Setup` built once);
5. evaluation: :func:`evaluate`;
6. the loop: :func:`fit`.

On CUDA a step runs under AMP (bf16 where supported, else fp16 with a GradScaler) in
channels_last; uint8 batches are pinned, copied with ``non_blocking=True`` and normalised on
the GPU; the teacher runs under ``inference_mode``. Under ``torchrun`` the model is wrapped in
DDP (see :mod:`kdsearch.distill.distributed`). Known per-step host syncs: the NaN check and
the logged loss terms and accuracy (``.item()``).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from kdsearch.data import Augment, Dataset, ImageSet, augment_batch, normalize
from kdsearch.distill.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from kdsearch.distill.config import TrainConfig, loss_options_for
from kdsearch.distill.distributed import DistributedContext
from kdsearch.distill.evaluate import predict_logits, topk_accuracy
from kdsearch.distill.losses import CombinedLoss, LossInputs, parse_loss_spec
from kdsearch.errors import Interrupted, TrainingError, UsageError
from kdsearch.models.features import FeatureTap
from kdsearch.progress import NULL_PROGRESS, Progress

__all__ = [
    "Phases",
    "Setup",
    "TeacherTargets",
    "TrainState",
    "build_criterion",
    "build_optimizer",
    "dts_temperature",
    "epoch_batches",
    "evaluate",
    "fit",
    "load_batch",
    "param_groups",
    "train_epoch",
    "train_step",
]

CHECKPOINT = "last.ckpt"


# ---- 1. batches -----------------------------------------------------------------------------


def epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1
) -> Iterator[torch.Tensor]:
    """Shuffled index batches of one epoch; every rank draws the same permutation and takes its shard.

    Indices (not images) so that a teacher cache can be read at the same rows.
    """
    perm = torch.randperm(n, generator=generator)
    per_rank = n // world_size
    shard = perm[rank * per_rank : (rank + 1) * per_rank]
    for start in range(0, per_rank - batch_size + 1, batch_size):  # drop_last keeps BN batches full
        yield shard[start : start + batch_size]


def load_batch(
    data: ImageSet,
    idx: torch.Tensor,
    dataset: Dataset,
    augment: Augment | None,
    generator: torch.Generator,
    device: torch.device,
    channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels at ``idx``: augmented on the CPU with ``generator``, normalised on ``device``."""
    images = data.images[idx]  # (B, C, H, W) uint8
    if augment is not None:
        images = augment_batch(images, augment, generator)
    labels = data.labels[idx]  # (B,)
    if device.type == "cuda":  # page-locked uint8 copies overlap with compute; normalise on the GPU
        images, labels = images.pin_memory(), labels.pin_memory()
    x = normalize(images.to(device, non_blocking=True), dataset.mean, dataset.std)  # (B, C, H, W) float32
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels.to(device, non_blocking=True)


# ---- 2. set-up ------------------------------------------------------------------------------


def build_criterion(config: TrainConfig) -> CombinedLoss:
    """The weighted losses of ``config.loss`` with their options (temperature, smoothing, --loss-option)."""
    terms = parse_loss_spec(config.loss)
    return CombinedLoss(terms, loss_options_for(config, [name for name, _ in terms]))


def param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer groups: weights decay, norms and biases (1-D) do not."""
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)  # norms and biases are 1-D
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up over ``warmup_steps``, then cosine to 0 at ``total_steps`` (0 warm-up: plain cosine)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(
    config: TrainConfig, modules: list[nn.Module], steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (Nesterov) or AdamW over ``modules``, with a per-step one-cycle or warm-up + cosine schedule."""
    total_steps = steps_per_epoch * config.epochs
    groups = param_groups(modules, config.weight_decay)
    lr = config.resolved_lr
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr)
    if config.schedule == "onecycle":
        return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    warmup = min(total_steps // 2, int(config.warmup_epochs * steps_per_epoch))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup))


_CACHE_ON_GPU_BYTES = 2**30  # a larger teacher cache stays in host memory


class TeacherTargets:
    """The teacher's logits ``(B, K)`` and features for a batch: from a live teacher, or a cache built once.

    Use as a context manager: the live teacher's feature hooks stay registered for the whole run.
    """

    def __init__(
        self, teacher: nn.Module, paths: list[str], amp_dtype: torch.dtype | None, cache: _TeacherCache | None = None
    ) -> None:
        self.teacher, self.paths, self.amp_dtype, self.cache = teacher, paths, amp_dtype, cache
        self._tap = FeatureTap(teacher, paths if cache is None else [])

    @classmethod
    def cached(
        cls, teacher: nn.Module, paths: list[str], data: ImageSet, dataset: Dataset, device: torch.device, batch_size: int
    ) -> TeacherTargets:
        """Run the teacher once over ``data`` (unaugmented) and keep its outputs."""
        logits, feats = [], [[] for _ in paths]
        with torch.inference_mode():
            for start in range(0, len(data), batch_size):
                x = normalize(data.images[start : start + batch_size].to(device), dataset.mean, dataset.std)
                with FeatureTap(teacher, paths) as tap:
                    logits.append(teacher(x).float().cpu())
                for i, p in enumerate(paths):
                    feats[i].append(tap[p].float().cpu())
        cache = _TeacherCache(torch.cat(logits), [torch.cat(f) for f in feats])
        if device.type == "cuda" and cache.nbytes() <= _CACHE_ON_GPU_BYTES:  # no per-step host copies
            cache = _TeacherCache(cache.logits.to(device), [f.to(device) for f in cache.feats])
        return cls(teacher, paths, None, cache)

    def __enter__(self) -> TeacherTargets:
        self._tap.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._tap.__exit__(*exc)

    def __call__(self, idx: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.cache is not None:
            cidx = idx.to(self.cache.logits.device)
            return (self.cache.logits[cidx].to(x.device, non_blocking=True),  # (B, K)
                    [f[cidx].to(x.device, non_blocking=True) for f in self.cache.feats])
        with torch.inference_mode(), _autocast(x.device, self.amp_dtype):
            t_logits = self.teacher(x)  # (B, K)
        # clone() outside inference mode: ordinary tensors autograd may save
        return t_logits.float().clone(), [self._tap[p].float().clone() for p in self.paths]


@dataclass
class _TeacherCache:
    logits: torch.Tensor  # (N, K)
    feats: list[torch.Tensor] = field(default_factory=list)  # each (N, C, H, W)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [self.logits, *self.feats])


class Phases:
    """The hooks a training box gives :func:`fit`; the defaults train a plain ``nn.Module``.

    Attributes:
        label: put before "epoch" in progress titles and notes (``"QAT "``: "QAT epoch 1/2: ...").
    """

    label: str = ""

    def start_epoch(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        """Called before epoch ``epoch`` (0-based) trains; returns entries for that epoch's history."""
        model.train()
        return {}

    def before_eval(self, model: nn.Module) -> None:
        """Called before every epoch's validation pass, on rank 0."""


# ---- 3. the checkpoint ----------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything ``last.ckpt`` holds; :meth:`checkpoint` and :meth:`restore` are the only two places it is read or written."""

    model: nn.Module
    criterion: CombinedLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # batch order and augmentation
    temperature: float  # moves under --temperature-schedule dts
    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)

    _KEYS = ("model", "criterion", "optimizer", "scheduler", "scaler", "generator", "torch_rng", "epoch", "history")

    def checkpoint(self, path: Path, settings: dict[str, Any]) -> None:
        """Write the state atomically; ``settings`` is what a resume must match."""
        save_checkpoint(path, {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "history": self.history,
            "temperature": self.temperature,
            "config": settings,
        })

    def restore(self, path: Path, settings: dict[str, Any]) -> None:
        """Continue from ``path``; a checkpoint written with other ``settings`` is refused."""
        state = load_checkpoint(path)
        if state.get("config") != settings:
            raise UsageError(
                f"{path} was written with different settings; resume with the same options or start over with --force"
            )
        missing = [k for k in self._KEYS if k not in state]
        if missing:
            raise UsageError(f"{path} lacks {', '.join(missing)} (an older kdsearch wrote it); start over with --force")
        load_module_state(self.model, state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.history = state["epoch"], list(state["history"])
        self.temperature = state.get("temperature", self.temperature)


# ---- 4. one step, one epoch -----------------------------------------------------------------


@dataclass
class Setup:
    """The set-up :func:`fit` builds once and every step reads; never checkpointed."""

    config: TrainConfig
    dataset: Dataset
    device: torch.device
    dist: DistributedContext
    amp_dtype: torch.dtype | None
    channels_last: bool
    augment: Augment | None
    train_model: nn.Module  # the model as the step calls it (DDP- or compile-wrapped)
    student_tap: FeatureTap
    student_paths: list[str]
    teacher: TeacherTargets | None  # None: no loss reads the teacher
    steps_per_epoch: int
    ckpt_path: Path


def train_step(
    run: Setup, state: TrainState, x: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor | None,
    t_feats: list[torch.Tensor], where: str,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward, loss, NaN check, backward, clip, optimizer and schedule step; returns the logits and loss terms."""
    config, criterion = run.config, state.criterion
    with _autocast(run.device, run.amp_dtype):
        logits = run.train_model(x)  # (B, K)
    s_feats = [run.student_tap[p].float() for p in run.student_paths]
    loss, parts = criterion(LossInputs(logits.float(), t_logits, y, s_feats, t_feats, temperature=state.temperature))
    if not torch.isfinite(loss):
        clip = "" if config.grad_clip else " or enable --grad-clip"
        raise TrainingError(
            f"the loss became {loss.item()} at {where}; lower --lr (now {config.resolved_lr:g}){clip}. "
            f"The last good checkpoint is kept at {run.ckpt_path}"
        )
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    run.dist.average_grads(list(criterion.parameters()))  # DDP averages only the model's
    if config.grad_clip:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_([*state.model.parameters(), *criterion.parameters()], config.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    return logits, parts


def train_epoch(run: Setup, state: TrainState, epoch: int, phases: Phases, progress: Progress) -> dict[str, Any]:
    """One epoch over this rank's shard; returns the epoch's training entries, summed over ranks."""
    config, dist, train_set = run.config, run.dist, run.dataset.train
    extra = phases.start_epoch(run.train_model, epoch)
    progress.start("batches", f"{phases.label}epoch {epoch + 1}/{config.epochs}", run.steps_per_epoch)
    sums: dict[str, float] = {}
    seen, correct = 0, 0
    t0 = time.perf_counter()
    for step, idx in enumerate(epoch_batches(len(train_set), config.batch_size, state.generator, dist.rank,
                                             dist.world_size)):
        x, y = load_batch(train_set, idx, run.dataset, run.augment, state.generator, run.device, run.channels_last)
        t_logits, t_feats = run.teacher(idx, x) if run.teacher is not None else (None, [])
        logits, parts = train_step(run, state, x, y, t_logits, t_feats, f"epoch {epoch + 1}, step {step + 1}")
        if config.temperature_schedule == "dts" and t_logits is not None:
            gap = _ce_gap(logits.detach().float(), t_logits, y)
            gap = dist.sum([gap], run.device)[0] / dist.world_size  # one temperature on every rank
            state.temperature = dts_temperature(state.temperature, gap, config.temperature)
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + value * len(y)
        seen += len(y)
        correct += (logits.detach().argmax(1) == y).sum().item()
        elapsed = time.perf_counter() - t0
        progress.advance("batches", loss=sum(parts.values()), acc=correct / seen,
                         ips=seen * dist.world_size / max(elapsed, 1e-9))
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    train_time = time.perf_counter() - t0
    progress.finish("batches")
    names = list(sums)  # the spec's order, the same on every rank
    totals = dist.sum([sums[n] for n in names] + [seen, correct], run.device)
    seen_all, correct_all = totals[-2], totals[-1]
    return {
        "epoch": epoch + 1,
        "train_loss": {n: v / max(seen_all, 1) for n, v in zip(names, totals)},
        "train_acc": correct_all / max(seen_all, 1),
        "train_images": int(seen_all),
        "images_per_s": seen_all / max(train_time, 1e-9),
        "lr": state.scheduler.get_last_lr()[0],
        "temperature": state.temperature,
        "world_size": dist.world_size,
        **extra,
    }


@contextlib.contextmanager
def _autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield


def _ce_gap(s_logits: torch.Tensor, t_logits: torch.Tensor, y: torch.Tensor) -> float:
    """CE(student, labels) − CE(teacher, labels) on one batch: how far the student trails."""
    with torch.no_grad():
        return (nn.functional.cross_entropy(s_logits, y) - nn.functional.cross_entropy(t_logits, y)).item()


def dts_temperature(current: float, gap: float, base: float, momentum: float = 0.9) -> float:
    """One step of the dynamic temperature schedule (``--temperature-schedule dts``).

    In the spirit of DTS (Islam et al., "Dynamic Temperature Scheduler for Knowledge
    Distillation", arXiv 2511.13767): the temperature follows the cross-entropy gap
    ``gap = CE(student, y) − CE(teacher, y)`` — soft targets while the student trails the
    teacher, sharper ones as it catches up::

        target = base · (1 + tanh(gap))          # in (0, 2·base); gap 0 gives base
        T_new  = momentum · T + (1 − momentum) · max(target, 0.01)

    This is kdsearch's rule, not the paper's exact schedule; the moving average keeps one
    noisy batch from jerking the temperature.
    """
    target = base * (1.0 + math.tanh(gap))
    return momentum * current + (1.0 - momentum) * max(target, 1e-2)


# ---- 5. evaluation --------------------------------------------------------------------------


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int,
    channels_last: bool = False,
    teacher_val_logits: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Validation top-1 and top-5 of ``model``; with the teacher's logits, its top-1 and the agreement."""
    logits = predict_logits(model, dataset.val.images, dataset.mean, dataset.std, device=device,
                            batch_size=batch_size, channels_last=channels_last)
    labels = dataset.val.labels
    metrics: dict[str, Any] = {"val_acc": topk_accuracy(logits, labels, 1), "val_top5": topk_accuracy(logits, labels, 5)}
    if teacher_val_logits is not None:
        metrics["teacher_val_acc"] = topk_accuracy(teacher_val_logits, labels, 1)
        metrics["agreement"] = (logits.argmax(1) == teacher_val_logits.argmax(1)).float().mean().item()
    return metrics


# ---- 6. the loop ----------------------------------------------------------------------------


def fit(
    model: nn.Module,
    criterion: CombinedLoss,
    dataset: Dataset,
    out_dir: Path,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    feature_paths: tuple[list[str], list[str]] = ([], []),
    phases: Phases = Phases(),
    settings: dict[str, Any],
    resume: bool = False,
    progress: Progress = NULL_PROGRESS,
    device: torch.device,
    dist: DistributedContext | None = None,
) -> dict[str, Any]:
    """Train ``model`` with ``criterion`` for ``config.epochs``, checkpointing ``out_dir/last.ckpt`` every epoch.

    Args:
        criterion: set up already (feature adapters sized); its parameters train with the model.
        teacher: read when ``criterion`` uses the teacher; evaluated once for the agreement metric.
        feature_paths: module paths of the (student, teacher) features the criterion compares.
        phases: the box's hooks (:class:`Phases`).
        device: where to train (under ``torchrun`` on CUDA: this rank's GPU instead).
        dist: the process group (:meth:`DistributedContext.from_env`); None: a single process.
        settings: what decides the run, saved in the checkpoint; a resume must match it.
        resume: continue from ``out_dir/last.ckpt`` when it exists.

    Returns:
        The last epoch's metrics with the per-epoch ``history``; ``model`` holds the final
        weights, on the CPU. Under ``torchrun`` rank 0 alone evaluates and writes, and every
        rank returns rank 0's metrics.

    Raises:
        UsageError: a loss needs the missing teacher, too little data, a checkpoint with other settings.
        TrainingError: the loss stopped being finite (the last checkpoint is kept).
        Interrupted: Ctrl-C; the last finished epoch is in ``last.ckpt``.
    """
    # -- set-up: devices, data, optimizer, state (restored when resuming)
    dist = dist or DistributedContext()
    cuda = device.type == "cuda"
    if cuda and dist.active:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_main:
        progress = NULL_PROGRESS  # one display, from rank 0
    channels_last = cuda and config.channels_last
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT
    if criterion.uses_teacher and teacher is None:
        raise UsageError(f"--loss {config.loss} needs a teacher; give --teacher or use --loss ce")
    augment = dataset.augment if config.augment else None
    if config.cache_teacher and augment is not None and (augment.pad or augment.flip):
        raise UsageError("--cache-teacher needs deterministic inputs: add --no-augment (random crops change the teacher's view)")
    steps_per_epoch = (len(dataset.train) // dist.world_size) // config.batch_size
    if steps_per_epoch == 0:
        raise UsageError(
            f"the training set has {len(dataset.train)} images, fewer than one batch of {config.batch_size} per process; "
            "lower --batch-size or use more data"
        )

    model.to(device)
    criterion.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if teacher is not None:
        teacher.to(device).eval()
        if channels_last:
            teacher.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(config, [model, criterion], steps_per_epoch)
    amp_dtype = None
    if cuda and config.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    state = TrainState(model, criterion, optimizer, scheduler, scaler, torch.Generator().manual_seed(config.seed),
                       config.temperature)
    if resume and ckpt_path.exists():
        state.restore(ckpt_path, settings)
        progress.note(f"resumed from {ckpt_path} after epoch {state.epoch}")

    train_model: nn.Module = model
    if dist.active:
        # BatchNorm: each rank normalises with its own batch statistics; DDP broadcasts rank 0's
        # running statistics before every forward, so the saved (rank 0) model is consistent.
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if config.compile:
        train_model = torch.compile(train_model)

    # -- the teacher: validation logits once, training targets live or cached
    s_paths, t_paths = feature_paths
    teacher_val_logits = None
    if teacher is not None and dist.is_main:
        teacher_val_logits = predict_logits(teacher, dataset.val.images, dataset.mean, dataset.std, device=device,
                                            batch_size=config.eval_batch_size, channels_last=channels_last)
    targets = None
    if teacher is not None and config.cache_teacher:
        progress.note("caching the teacher's outputs for the training set")
        targets = TeacherTargets.cached(teacher, t_paths, dataset.train, dataset, device, config.eval_batch_size)
    elif teacher is not None and criterion.uses_teacher:
        targets = TeacherTargets(teacher, t_paths, amp_dtype)

    # hooks stay registered for the whole run: re-registering them every step would make
    # torch.compile recompile every step
    run = Setup(config, dataset, device, dist, amp_dtype, channels_last, augment, train_model,
               FeatureTap(model, s_paths), s_paths, targets, steps_per_epoch, ckpt_path)

    # -- the loop: train, evaluate, checkpoint; NaN stops it (above), Ctrl-C leaves the last epoch saved
    progress.start("epochs", f"{phases.label}epochs", config.epochs)
    progress.advance("epochs", state.epoch)
    try:
        with run.student_tap, (targets or contextlib.nullcontext()):
            for epoch in range(state.epoch, config.epochs):
                train_metrics = train_epoch(run, state, epoch, phases, progress)
                metrics: dict[str, Any] | None = None
                if dist.is_main:
                    phases.before_eval(model)
                    metrics = {**evaluate(model, dataset, device, config.eval_batch_size, channels_last,
                                          teacher_val_logits), **train_metrics}
                metrics = dist.broadcast(metrics)
                assert metrics is not None
                state.history.append(metrics)
                state.epoch = epoch + 1
                if dist.is_main:
                    state.checkpoint(ckpt_path, settings)
                dist.barrier()
                progress.advance("epochs", val_acc=metrics["val_acc"])
                progress.note(
                    f"{phases.label}epoch {epoch + 1}/{config.epochs}: loss {sum(metrics['train_loss'].values()):.4f} "
                    f"val top-1 {metrics['val_acc']:.4f} ({metrics['images_per_s']:.0f} img/s)"
                )
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped by Ctrl-C; the last finished epoch is saved in {ckpt_path}: run the same command with --resume"
        ) from None
    finally:
        progress.finish("epochs")
    model.to("cpu")
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    final = dict(state.history[-1]) if state.history else {}
    final["history"] = state.history
    return final
