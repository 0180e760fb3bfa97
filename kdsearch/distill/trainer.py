"""The training loop shared by teacher training and distillation.

One loop, one checkpoint format: ``train(student, dataset, out_dir, config, teacher=...)``.
Without a teacher it is plain supervised training (``--loss ce``); with one, the losses of
:mod:`kdsearch.distill.losses` combine by name and weight.

On CUDA a step runs under AMP (bf16 where supported, else fp16 with a GradScaler) in
channels_last; uint8 batches are pinned, copied with ``non_blocking=True`` and normalised on
the GPU; the teacher runs under ``inference_mode``. Under ``torchrun`` the student is wrapped
in DDP (see :mod:`kdsearch.distill.distributed`). Known per-step host syncs: the NaN check and
the logged loss terms and accuracy (``.item()``).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from kdsearch.data import Dataset, augment_batch, normalize
from kdsearch.devices import resolve_device
from kdsearch.distill.checkpoint import load_checkpoint, save_checkpoint
from kdsearch.distill.distributed import DistributedContext
from kdsearch.distill.evaluate import predict_logits, topk_accuracy
from kdsearch.distill.losses import CombinedLoss, LossInputs, parse_loss_spec
from kdsearch.errors import Interrupted, TrainingError, UsageError
from kdsearch.models.features import FeatureTap, locate_parts
from kdsearch.progress import NULL_PROGRESS, Progress

__all__ = ["TrainConfig", "train", "feature_pairs", "parse_loss_options", "loss_options_for", "dts_temperature"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved in every checkpoint."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adamw
    lr: float | None = None  # None: 0.1·batch/128 for SGD, 2e-3 for AdamW
    momentum: float = 0.9
    weight_decay: float = 5e-4  # never applied to norms and biases
    schedule: str = "cosine"  # cosine | onecycle
    warmup_epochs: float = 0.3  # linear warm-up before the cosine decay
    grad_clip: float | None = 5.0  # max global grad norm; None: no clipping
    loss: str = "kd:1,ce:1"
    loss_options: tuple[str, ...] = ()  # "name.key=value" items, e.g. "dkd.beta=2" (--loss-option)
    label_smoothing: float = 0.0  # ε of the ce term (0: plain cross entropy)
    temperature: float = 4.0  # KD temperature (the start value under --temperature-schedule dts)
    temperature_schedule: str = "fixed"  # fixed | dts
    augment: bool = True  # the dataset's standard augmentation (crop + flip)
    cache_teacher: bool = False  # teacher outputs computed once; needs augment=False
    amp: bool = True  # CUDA only: bf16 where supported, else fp16 with a scaler
    channels_last: bool = True  # CUDA only
    compile: bool = False
    eval_batch_size: int = 512
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise UsageError(f"--epochs must be positive (got {self.epochs})")
        if self.batch_size <= 0:
            raise UsageError(f"--batch-size must be positive (got {self.batch_size})")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number (got {self.lr})")
        if self.optimizer not in {"sgd", "adamw"}:
            raise UsageError(f"unknown optimizer {self.optimizer!r}; use sgd or adamw")
        if self.schedule not in {"cosine", "onecycle"}:
            raise UsageError(f"unknown schedule {self.schedule!r}; use cosine or onecycle")
        if self.temperature_schedule not in {"fixed", "dts"}:
            raise UsageError(f"unknown temperature schedule {self.temperature_schedule!r}; use fixed or dts")
        if self.temperature <= 0:
            raise UsageError(f"--temperature must be positive (got {self.temperature})")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise UsageError("--weight-decay and --warmup-epochs must be >= 0")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise UsageError(f"--grad-clip must be >= 0 (0 turns clipping off; got {self.grad_clip})")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        # build the losses once so unknown names and bad options fail before any work
        CombinedLoss(self.loss, loss_options_for(self, [name for name, _ in parse_loss_spec(self.loss)]))

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.1 * self.batch_size / 128 if self.optimizer == "sgd" else 2e-3


def parse_loss_options(items: tuple[str, ...] | list[str]) -> dict[str, dict[str, str]]:
    """``["dkd.beta=2", "kd.temperature=3"]`` -> ``{"dkd": {"beta": "2"}, "kd": {"temperature": "3"}}``.

    Values stay strings; each loss converts and checks its own options.
    """
    options: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        name, dot, option = key.strip().partition(".")
        if not (sep and dot and name and option.strip() and value.strip()):
            raise UsageError(f"--loss-option {item!r} is not NAME.KEY=VALUE; write it like 'dkd.beta=2'")
        options.setdefault(name, {})[option.strip()] = value.strip()
    return options


def loss_options_for(config: TrainConfig, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per-loss options: --temperature for kd/dkd, --label-smoothing for ce, then --loss-option items."""
    options: dict[str, dict[str, Any]] = {n: {"temperature": config.temperature} for n in names if n in ("kd", "dkd")}
    if config.label_smoothing:
        if "ce" not in names:
            raise UsageError(f"--label-smoothing applies to the ce loss, which is not in --loss {config.loss}; add ce:1")
        options["ce"] = {"label_smoothing": config.label_smoothing}
    for name, values in parse_loss_options(config.loss_options).items():
        if name not in names:
            raise UsageError(f"--loss-option names loss {name!r}, which is not in --loss {config.loss}; add it or drop the option")
        options.setdefault(name, {}).update(values)
    return options


def feature_pairs(student: nn.Module, teacher: nn.Module, sample: torch.Tensor) -> tuple[list[str], list[str]]:
    """Pair the last stages of student and teacher by module path (as many as both have)."""
    s_paths = list(getattr(student, "stage_paths", ()) or [locate_parts(student, sample).feature])
    t_paths = list(getattr(teacher, "stage_paths", ()) or [locate_parts(teacher, sample).feature])
    n = min(len(s_paths), len(t_paths))
    return s_paths[-n:], t_paths[-n:]


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)  # norms and biases are 1-D
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, rank: int, world_size: int
) -> Iterator[torch.Tensor]:
    """Shuffled index batches; every rank draws the same permutation and takes its shard."""
    perm = torch.randperm(n, generator=generator)
    per_rank = n // world_size
    shard = perm[rank * per_rank : (rank + 1) * per_rank]
    for start in range(0, per_rank - batch_size + 1, batch_size):  # drop_last keeps BN batches full
        yield shard[start : start + batch_size]


_CACHE_ON_GPU_BYTES = 2**30  # a larger teacher cache stays in host memory


@dataclass
class _TeacherCache:
    logits: torch.Tensor  # (N, K)
    feats: list[torch.Tensor] = field(default_factory=list)  # each (N, C, H, W)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [self.logits, *self.feats])


def train(
    student: nn.Module,
    dataset: Dataset,
    out_dir: Path,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    resume: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, Any]:
    """Train ``student`` on ``dataset`` (distilling from ``teacher`` when given).

    Writes ``out_dir/last.ckpt`` after every epoch and returns the final metrics with the
    per-epoch ``history``. ``student`` holds the final weights on return (on the CPU).
    Under ``torchrun`` every rank trains on its shard of each epoch; rank 0 alone evaluates
    and writes, and every rank returns rank 0's metrics.
    """
    device = resolve_device(config.device)
    dist = DistributedContext.from_env(device)
    ok = False
    try:
        result = _train(student, dataset, out_dir, config, teacher, resume, progress, device, dist)
        ok = True
        return result
    finally:
        dist.close(wait=ok)  # after a failure the other ranks may never reach a barrier


def _train(
    student: nn.Module,
    dataset: Dataset,
    out_dir: Path,
    config: TrainConfig,
    teacher: nn.Module | None,
    resume: bool,
    progress: Progress,
    device: torch.device,
    dist: DistributedContext,
) -> dict[str, Any]:
    cuda = device.type == "cuda"
    if cuda and dist.active:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_main:
        progress = NULL_PROGRESS  # one display, from rank 0
    channels_last = cuda and config.channels_last
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "last.ckpt"

    terms = parse_loss_spec(config.loss)
    criterion = CombinedLoss(terms, loss_options_for(config, [name for name, _ in terms]))
    if criterion.uses_teacher and teacher is None:
        raise UsageError(f"--loss {config.loss} needs a teacher; give --teacher or use --loss ce")
    augment = dataset.augment if config.augment else None
    if config.cache_teacher and augment is not None and (augment.pad or augment.flip):
        raise UsageError("--cache-teacher needs deterministic inputs: add --no-augment (random crops change the teacher's view)")

    train_set = dataset.train
    mean, std = dataset.mean, dataset.std
    sample = normalize(train_set.images[:2], mean, std)
    s_paths: list[str] = []
    t_paths: list[str] = []
    if criterion.uses_features:
        assert teacher is not None
        s_paths, t_paths = feature_pairs(student, teacher, sample)
        with torch.no_grad(), FeatureTap(student, s_paths) as s_tap, FeatureTap(teacher, t_paths) as t_tap:
            student.eval(), teacher.eval()
            student(sample), teacher(sample)
        student.train()
        criterion.setup([s_tap[p].shape[1] for p in s_paths], [t_tap[p].shape[1] for p in t_paths])

    student.to(device)
    criterion.to(device)
    if channels_last:
        student.to(memory_format=torch.channels_last)
    if teacher is not None:
        teacher.to(device).eval()
        if channels_last:
            teacher.to(memory_format=torch.channels_last)

    steps_per_epoch = (len(train_set) // dist.world_size) // config.batch_size
    if steps_per_epoch == 0:
        raise UsageError(
            f"the training set has {len(train_set)} images, fewer than one batch of {config.batch_size} per process; "
            "lower --batch-size or use more data"
        )
    total_steps = steps_per_epoch * config.epochs
    optimizer: torch.optim.Optimizer
    groups = _param_groups([student, criterion], config.weight_decay)
    lr = config.resolved_lr
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr)
    if config.schedule == "onecycle":
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=total_steps
        )
    else:
        warmup = min(total_steps // 2, int(config.warmup_epochs * steps_per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, max(1, warmup)))
    amp_dtype = None
    if cuda and config.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    generator = torch.Generator().manual_seed(config.seed)
    start_epoch, history = 0, []
    temperature = config.temperature
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if state.get("config") != asdict(config):
            raise UsageError(
                f"{ckpt_path} was written with different settings; resume with the same options or start with --force"
            )
        student.load_state_dict(state["model"])
        criterion.load_state_dict(state["criterion"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, history = state["epoch"], list(state["history"])
        temperature = state.get("temperature", temperature)
        progress.note(f"resumed from {ckpt_path} after epoch {start_epoch}")

    train_model: nn.Module = student
    if dist.active:
        # BatchNorm: each rank normalises with its own batch statistics; DDP broadcasts rank 0's
        # running statistics before every forward, so the saved (rank 0) model is consistent.
        train_model = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if cuda else None)
    if config.compile:
        train_model = torch.compile(train_model)
    clip_params = list(student.parameters()) + list(criterion.parameters())

    teacher_val_logits = None
    if teacher is not None and dist.is_main:
        teacher_val_logits = predict_logits(
            teacher, dataset.val.images, mean, std, device=device, batch_size=config.eval_batch_size, channels_last=channels_last
        )
    cache = None
    if teacher is not None and config.cache_teacher:
        progress.note("caching the teacher's outputs for the training set")
        cache = _teacher_cache(teacher, train_set.images, mean, std, t_paths, device, config.eval_batch_size)
        if cuda and cache.nbytes() <= _CACHE_ON_GPU_BYTES:  # index on the GPU: no per-step host copies
            cache = _TeacherCache(cache.logits.to(device), [f.to(device) for f in cache.feats])
    live_teacher = teacher is not None and cache is None and criterion.uses_teacher

    progress.start("epochs", "epochs", config.epochs)
    progress.advance("epochs", start_epoch)
    # hooks stay registered for the whole run: re-registering them every step would make
    # torch.compile recompile every step
    s_tap = FeatureTap(student, s_paths)
    t_tap = FeatureTap(teacher, t_paths if live_teacher else []) if teacher is not None else None
    try:
        with s_tap, (t_tap or contextlib.nullcontext()):
            for epoch in range(start_epoch, config.epochs):
                progress.start("batches", f"epoch {epoch + 1}/{config.epochs}", steps_per_epoch)
                train_model.train()
                sums: dict[str, float] = {}
                seen, correct = 0, 0
                t0 = time.perf_counter()
                for step, idx in enumerate(
                    _epoch_batches(len(train_set), config.batch_size, generator, dist.rank, dist.world_size)
                ):
                    images = train_set.images[idx]  # (B, C, H, W) uint8
                    if augment is not None:
                        images = augment_batch(images, augment, generator)
                    labels = train_set.labels[idx]  # (B,)
                    if cuda:  # page-locked uint8 copies overlap with compute; normalise on the GPU
                        images, labels = images.pin_memory(), labels.pin_memory()
                    x = normalize(images.to(device, non_blocking=True), mean, std)  # (B, C, H, W) float32
                    y = labels.to(device, non_blocking=True)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    t_logits, t_feats = None, []
                    if cache is not None:
                        cidx = idx.to(cache.logits.device)
                        t_logits = cache.logits[cidx].to(device, non_blocking=True)  # (B, K)
                        t_feats = [f[cidx].to(device, non_blocking=True) for f in cache.feats]
                    elif live_teacher:
                        assert teacher is not None and t_tap is not None
                        with torch.inference_mode(), _autocast(device, amp_dtype):
                            t_logits = teacher(x)  # (B, K)
                        # clone() outside inference mode: ordinary tensors autograd may save
                        t_logits = t_logits.float().clone()
                        t_feats = [t_tap[p].float().clone() for p in t_paths]
                    with _autocast(device, amp_dtype):
                        logits = train_model(x)  # (B, K)
                    s_feats = [s_tap[p].float() for p in s_paths]
                    loss, parts = criterion(
                        LossInputs(logits.float(), t_logits, y, s_feats, t_feats, temperature=temperature)
                    )
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; lower --lr "
                            f"(now {lr:g}) or enable --grad-clip. The last good checkpoint is kept at {ckpt_path}"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    dist.average_grads(list(criterion.parameters()))  # DDP averages only the student's
                    if config.grad_clip:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(clip_params, config.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    if config.temperature_schedule == "dts" and t_logits is not None:
                        gap = _ce_gap(logits.detach().float(), t_logits, y)
                        gap = dist.sum([gap], device)[0] / dist.world_size  # one temperature on every rank
                        temperature = dts_temperature(temperature, gap, config.temperature)
                    for name, value in parts.items():
                        sums[name] = sums.get(name, 0.0) + value * len(y)
                    seen += len(y)
                    correct += (logits.detach().argmax(1) == y).sum().item()
                    elapsed = time.perf_counter() - t0
                    progress.advance(
                        "batches", loss=sum(parts.values()), acc=correct / seen,
                        ips=seen * dist.world_size / max(elapsed, 1e-9),
                    )
                if cuda:
                    torch.cuda.synchronize(device)
                train_time = time.perf_counter() - t0
                progress.finish("batches")
                names = list(sums)  # the spec's order, the same on every rank
                totals = dist.sum([sums[n] for n in names] + [seen, correct], device)
                seen_all, correct_all = totals[-2], totals[-1]
                metrics: dict[str, Any] | None = None
                if dist.is_main:
                    metrics = _epoch_metrics(student, dataset, device, config, channels_last, teacher_val_logits)
                    metrics.update(
                        epoch=epoch + 1,
                        train_loss={n: v / max(seen_all, 1) for n, v in zip(names, totals)},
                        train_acc=correct_all / max(seen_all, 1),
                        train_images=int(seen_all),
                        images_per_s=seen_all / max(train_time, 1e-9),
                        lr=scheduler.get_last_lr()[0],
                        temperature=temperature,
                        world_size=dist.world_size,
                    )
                metrics = dist.broadcast(metrics)
                assert metrics is not None
                history.append(metrics)
                if dist.is_main:
                    save_checkpoint(
                        ckpt_path,
                        {
                            "model": {k: v.detach().cpu() for k, v in student.state_dict().items()},
                            "criterion": criterion.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "scaler": scaler.state_dict(),
                            "generator": generator.get_state(),
                            "torch_rng": torch.get_rng_state(),
                            "epoch": epoch + 1,
                            "history": history,
                            "temperature": temperature,
                            "config": asdict(config),
                        },
                    )
                dist.barrier()
                progress.advance("epochs", val_acc=metrics["val_acc"])
                progress.note(
                    f"epoch {epoch + 1}/{config.epochs}: loss {sum(metrics['train_loss'].values()):.4f} "
                    f"val top-1 {metrics['val_acc']:.4f} ({metrics['images_per_s']:.0f} img/s)"
                )
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped by Ctrl-C; the last finished epoch is saved in {ckpt_path}: run the same command with --resume"
        ) from None
    finally:
        progress.finish("epochs")
    student.to("cpu")
    if channels_last:
        student.to(memory_format=torch.contiguous_format)
    final = dict(history[-1]) if history else {}
    final["history"] = history
    return final


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


def _teacher_cache(
    teacher: nn.Module, images: torch.Tensor, mean, std, t_paths: list[str], device: torch.device, batch_size: int
) -> _TeacherCache:
    logits, feats = [], [[] for _ in t_paths]
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size].to(device), mean, std)
            with FeatureTap(teacher, t_paths) as tap:
                logits.append(teacher(x).float().cpu())
            for i, p in enumerate(t_paths):
                feats[i].append(tap[p].float().cpu())
    return _TeacherCache(torch.cat(logits), [torch.cat(f) for f in feats])


def _epoch_metrics(
    student: nn.Module,
    dataset: Dataset,
    device: torch.device,
    config: TrainConfig,
    channels_last: bool,
    teacher_val_logits: torch.Tensor | None,
) -> dict[str, Any]:
    logits = predict_logits(
        student, dataset.val.images, dataset.mean, dataset.std, device=device, batch_size=config.eval_batch_size,
        channels_last=channels_last,
    )
    labels = dataset.val.labels
    metrics: dict[str, Any] = {"val_acc": topk_accuracy(logits, labels, 1), "val_top5": topk_accuracy(logits, labels, 5)}
    if teacher_val_logits is not None:
        metrics["teacher_val_acc"] = topk_accuracy(teacher_val_logits, labels, 1)
        metrics["agreement"] = (logits.argmax(1) == teacher_val_logits.argmax(1)).float().mean().item()
    return metrics
