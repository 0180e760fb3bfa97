"""The training loop shared by teacher training and distillation.

One loop, one checkpoint format: ``train(student, dataset, out_dir, config, teacher=...)``.
Without a teacher it is plain supervised training (``--loss ce``); with one, the losses of
:mod:`kdsearch.distill.losses` combine by name and weight.
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
from kdsearch.distill.evaluate import predict_logits, topk_accuracy
from kdsearch.errors import Interrupted, TrainingError, UsageError
from kdsearch.models.features import FeatureTap, locate_parts
from kdsearch.progress import NULL_PROGRESS, Progress

__all__ = ["TrainConfig", "train", "feature_pairs"]


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

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.1 * self.batch_size / 128 if self.optimizer == "sgd" else 2e-3


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


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    active: bool = False

    @classmethod
    def from_env(cls, device: torch.device) -> "_Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), world, True)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def _epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, rank: int, world_size: int
) -> Iterator[torch.Tensor]:
    """Shuffled index batches; every rank draws the same permutation and takes its shard."""
    perm = torch.randperm(n, generator=generator)
    per_rank = n // world_size
    shard = perm[rank * per_rank : (rank + 1) * per_rank]
    for start in range(0, per_rank - batch_size + 1, batch_size):  # drop_last keeps BN batches full
        yield shard[start : start + batch_size]


@dataclass
class _TeacherCache:
    logits: torch.Tensor  # (N, K)
    feats: list[torch.Tensor] = field(default_factory=list)  # each (N, C, H, W)


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
    """
    from kdsearch.distill.losses import CombinedLoss, LossInputs, parse_loss_spec

    device = resolve_device(config.device)
    dist = _Distributed.from_env(device)
    cuda = device.type == "cuda"
    if cuda and dist.active:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    channels_last = cuda and config.channels_last
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "last.ckpt"

    terms = parse_loss_spec(config.loss)
    # --temperature sets the temperature of the logit losses that have one
    options = {name: {"temperature": config.temperature} for name, _ in terms if name in ("kd", "dkd")}
    criterion = CombinedLoss(terms, options)
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
        train_model = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if cuda else None)
    if config.compile:
        train_model = torch.compile(train_model)

    teacher_val_logits = None
    if teacher is not None:
        teacher_val_logits = predict_logits(
            teacher, dataset.val.images, mean, std, device=device, batch_size=config.eval_batch_size, channels_last=channels_last
        )
    cache = None
    if teacher is not None and config.cache_teacher:
        progress.note("caching the teacher's outputs for the training set")
        cache = _teacher_cache(teacher, train_set.images, mean, std, t_paths, device, config.eval_batch_size)

    progress.start("epochs", "epochs", config.epochs)
    progress.advance("epochs", start_epoch)
    try:
        for epoch in range(start_epoch, config.epochs):
            progress.start("batches", f"epoch {epoch + 1}/{config.epochs}", steps_per_epoch)
            train_model.train()
            sums: dict[str, float] = {}
            seen, correct = 0, 0
            t0 = time.perf_counter()
            for step, idx in enumerate(
                _epoch_batches(len(train_set), config.batch_size, generator, dist.rank, dist.world_size)
            ):
                images = train_set.images[idx]
                if augment is not None:
                    images = augment_batch(images, augment, generator)
                x = normalize(images.to(device, non_blocking=True), mean, std)
                y = train_set.labels[idx].to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                t_logits, t_feats = None, []
                if cache is not None:
                    t_logits = cache.logits[idx].to(device)
                    t_feats = [f[idx].to(device) for f in cache.feats]
                elif teacher is not None and criterion.uses_teacher:
                    with torch.inference_mode(), _autocast(device, amp_dtype), FeatureTap(teacher, t_paths) as t_tap:
                        t_logits = teacher(x)
                    t_logits = t_logits.float().clone()
                    t_feats = [t_tap[p].float().clone() for p in t_paths]
                with _autocast(device, amp_dtype), FeatureTap(student, s_paths) as s_tap:
                    logits = train_model(x)
                s_feats = [s_tap[p].float() for p in s_paths]
                loss, terms = criterion(
                    LossInputs(logits.float(), t_logits, y, s_feats, t_feats, temperature=temperature)
                )
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; lower --lr "
                        f"(now {lr:g}) or enable --grad-clip. The last good checkpoint is kept at {ckpt_path}"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(list(student.parameters()) + list(criterion.parameters()), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if config.temperature_schedule == "dts" and t_logits is not None:
                    temperature = _dts_temperature(temperature, logits.detach().float(), t_logits, y, config.temperature)
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value * len(y)
                seen += len(y)
                correct += (logits.detach().argmax(1) == y).sum().item()
                elapsed = time.perf_counter() - t0
                progress.advance(
                    "batches", loss=sum(terms.values()), acc=correct / seen, ips=seen * dist.world_size / max(elapsed, 1e-9)
                )
            train_time = time.perf_counter() - t0
            progress.finish("batches")
            metrics = _epoch_metrics(student, dataset, device, config, channels_last, teacher_val_logits)
            metrics.update(
                epoch=epoch + 1,
                train_loss={k: v / max(seen, 1) for k, v in sums.items()},
                train_acc=correct / max(seen, 1),
                images_per_s=seen * dist.world_size / max(train_time, 1e-9),
                lr=scheduler.get_last_lr()[0],
                temperature=temperature,
            )
            history.append(metrics)
            if dist.rank == 0:
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


def _dts_temperature(current: float, s_logits: torch.Tensor, t_logits: torch.Tensor, y: torch.Tensor, base: float) -> float:
    """Dynamic Temperature Scheduler: raise T when the student is far from the teacher.

    The gap is the difference of the two cross-entropies on the batch; the temperature
    follows ``base·(1 + tanh(gap))`` with momentum 0.9, so it stays in (0, 2·base).
    """
    with torch.no_grad():
        gap = (nn.functional.cross_entropy(s_logits, y) - nn.functional.cross_entropy(t_logits, y)).item()
    target = base * (1.0 + math.tanh(gap))
    return 0.9 * current + 0.1 * max(target, 1e-2)


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
