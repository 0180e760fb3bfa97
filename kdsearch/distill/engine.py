"""The one training engine: teacher training, distillation and QAT-KD run through :func:`fit`.

What differs between those boxes is the model handed in, the loss and a few
:class:`Phases` hooks (QAT freezes observers and BatchNorm per epoch); the loop itself —
batching, the step, checkpoint and resume, the NaN and Ctrl-C paths — exists once, here.
The module reads top to bottom the way the loop runs:

1. batches: :func:`epoch_batches`, the one batcher (shuffle, shard per rank), and :func:`load_batch`;
2. set-up: :func:`build_criterion`, :func:`build_optimizer`, :class:`TeacherTargets` (live or cached);
3. the checkpoint: :class:`TrainState`, saved and restored in one place;
4. one step: :func:`train_step`; one epoch: :func:`train_epoch` (both read the :class:`Setup` built once);
5. memory: :func:`estimate_train_memory` (a probe step at 2 and 4 images), :func:`choose_micro_batch`,
   :func:`estimate_inference_memory`, :func:`teacher_cache_bytes` and :func:`choose_eval_batch`;
6. evaluation: :func:`evaluate`;
7. the loop: :func:`fit`.

Before the first step :func:`fit` sizes the whole run to ``--max-memory`` (default 70 % of
the memory free now, see :mod:`kdsearch.memory`), not one step alone. On the CPU ``--max-memory``
caps the process, so what it holds already (libraries, the models, the data) is taken off first:

- the training step: when it does not fit, each batch is split into micro-batches whose
  gradients accumulate into one optimizer step (the same effective batch, schedule and,
  without BatchNorm, the same weights), or the run stops before any work;
- the teacher cache (``--cache-teacher``: logits and feature maps of the whole training set,
  sized from one image): kept only when it fits beside the step, else the teacher runs live
  each step, and a note says so;
- evaluation (validation, the teacher's validation pass, the cache pass, the test prediction):
  its batch, at most ``eval_batch_size``, is the largest whose forward pass fits in what the
  step and the cache leave, measured by the same kind of probe. On CUDA the step leaves its
  fixed part (gradients, optimizer state); on the CPU its whole peak, which glibc keeps
  resident after the step (``benchmarks/memory_estimate.py`` measured evaluation on top of it).

On CUDA a step runs under AMP (bf16 where supported, else fp16 with a GradScaler) in
channels_last; uint8 batches are pinned, copied with ``non_blocking=True`` and normalised on
the GPU; the teacher runs under ``inference_mode``. Under ``torchrun`` the model is wrapped in
DDP (see :mod:`kdsearch.distill.distributed`). Known per-step host syncs: the NaN check and
the logged loss terms and accuracy (``.item()``).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import warnings
import weakref
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
from kdsearch.errors import Interrupted, KdsearchWarning, MemoryBudgetError, TrainingError, UsageError
from kdsearch.memory import (
    MemoryBudget,
    MemoryEstimate,
    estimate_step_memory,
    format_bytes,
    memory_budget,
    resident_memory,
)
from kdsearch.models.features import FeatureTap
from kdsearch.progress import NULL_PROGRESS, Progress
from kdsearch.rundir import CHECKPOINT

__all__ = [
    "Phases",
    "Setup",
    "TeacherTargets",
    "TrainState",
    "build_criterion",
    "build_optimizer",
    "choose_eval_batch",
    "choose_micro_batch",
    "dts_temperature",
    "epoch_batches",
    "estimate_inference_memory",
    "estimate_train_memory",
    "evaluate",
    "fit",
    "load_batch",
    "outputs_probabilities",
    "param_groups",
    "probabilities_as_logits",
    "train_epoch",
    "train_step",
]



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
        self.probabilities: bool | None = None  # whether the teacher's outputs are a softmax's (see outputs_probabilities)
        self._tap = FeatureTap(teacher, paths if cache is None else [])

    @classmethod
    def cached(
        cls, teacher: nn.Module, paths: list[str], data: ImageSet, dataset: Dataset, device: torch.device,
        batch_size: int, on_device: bool | None = None,
    ) -> TeacherTargets:
        """Run the teacher once over ``data`` (unaugmented) and keep its outputs.

        ``on_device``: keep the cache on a CUDA ``device`` (no per-step host copies); None: when
        it is at most 1 GiB. The cache is filled in place, so the pass holds it once, not twice.
        """
        if on_device is None:
            on_device = device.type == "cuda" and teacher_cache_bytes(teacher, paths, data, dataset, device) \
                <= _CACHE_ON_GPU_BYTES
        key = _LastHostCache.key(teacher, paths, data, dataset, device, batch_size)
        if not on_device and (kept := _LAST_HOST_CACHE.get(teacher, data, key)) is not None:
            return cls(teacher, paths, None, kept)
        home = device if on_device else torch.device("cpu")
        cache: _TeacherCache | None = None
        with torch.inference_mode():
            for start in range(0, len(data), batch_size):
                x = normalize(data.images[start : start + batch_size].to(device), dataset.mean, dataset.std)
                with FeatureTap(teacher, paths) as tap:
                    out = [teacher(x)] + [tap[p] for p in paths]  # (B, K), then each feature map
                if cache is None:
                    cache = _TeacherCache(*_empty_like_rows(out, len(data), home))
                for whole, part in zip([cache.logits, *cache.feats], out):
                    whole[start : start + len(x)] = part.float()
        if cache is None:
            cache = _TeacherCache(torch.empty(0, 0), [torch.empty(0) for _ in paths])
        elif len(data) and outputs_probabilities(cache.logits[:batch_size]):
            cache = _TeacherCache(probabilities_as_logits(cache.logits), cache.feats)
        if not on_device:
            _LAST_HOST_CACHE.put(teacher, data, key, cache)
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
        if self.probabilities is None:  # decided once, on the first batch: no per-step device sync
            self.probabilities = outputs_probabilities(t_logits)
        t_logits = probabilities_as_logits(t_logits.float()) if self.probabilities else t_logits.float()
        return t_logits.clone(), [self._tap[p].float().clone() for p in self.paths]


def _empty_like_rows(
    parts: list[torch.Tensor], rows: int, device: torch.device
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Float32 tensors of ``rows`` rows shaped like each of ``parts`` past its first dimension."""
    made = [torch.empty((rows, *p.shape[1:]), dtype=torch.float32, device=device) for p in parts]
    return made[0], made[1:]


def teacher_cache_bytes(
    teacher: nn.Module, paths: list[str], data: ImageSet, dataset: Dataset, device: torch.device
) -> int:
    """Bytes :meth:`TeacherTargets.cached` keeps for ``data``: one image's float32 logits and feature maps, times N."""
    if len(data) == 0:
        return 0
    with torch.inference_mode(), FeatureTap(teacher, paths) as tap:
        x = normalize(data.images[:1].to(device), dataset.mean, dataset.std)
        per_image = teacher(x).numel() + sum(tap[p].numel() for p in paths)
    return 4 * per_image * len(data)


def outputs_probabilities(out: torch.Tensor) -> bool:
    """Whether a teacher's output ``(B, K)`` is probabilities: every row non-negative, summing to 1.

    A teacher that ends in a softmax gives them; softening them again would flatten its targets
    to near-uniform. Their logarithm (:func:`probabilities_as_logits`) is its logits up to a
    per-row constant, which softmax ignores at every temperature. Warns once when true.
    """
    found = out.dim() == 2 and out.shape[1] > 1 and bool((out >= 0).all()) and torch.allclose(
        out.float().sum(1), torch.ones((), device=out.device), atol=1e-2)
    if found:
        warnings.warn("the teacher outputs probabilities (a softmax at its end); kdsearch distils from their "
                      "logarithm, its logits up to a constant", KdsearchWarning, stacklevel=2)
    return found


def probabilities_as_logits(out: torch.Tensor) -> torch.Tensor:
    """``log(out)``: logits whose softmax is ``out``, at any temperature the same as the teacher's own."""
    return out.clamp_min(torch.finfo(out.dtype).tiny).log()


@dataclass
class _TeacherCache:
    logits: torch.Tensor  # (N, K)
    feats: list[torch.Tensor] = field(default_factory=list)  # each (N, C, H, W)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [self.logits, *self.feats])


class _LastHostCache:
    """The last teacher cache built in host memory, reused by the next run over the same teacher and images.

    A race trains each finalist rung by rung and a study one student after another, all distilling from
    one teacher over one training set: without this, every run would pass the teacher over the whole set
    again. Only the teacher and image set it was built from (held weakly, compared by identity), with
    their weights, buffers and pixels unchanged (the same tensors, not written to since) and the same feature paths, normalisation,
    device and batch, get it back. One entry, in host memory: a cache on the GPU is never kept past its run.
    """

    def __init__(self) -> None:
        self._refs: tuple[weakref.ref, weakref.ref] | None = None
        self._key: tuple = ()
        self._cache: _TeacherCache | None = None

    @staticmethod
    def key(teacher: nn.Module, paths: list[str], data: ImageSet, dataset: Dataset, device: torch.device,
            batch_size: int) -> tuple:
        versions = tuple((t.data_ptr(), t._version) for t in [*teacher.parameters(), *teacher.buffers(), data.images])
        return (tuple(paths), tuple(dataset.mean), tuple(dataset.std), str(device), batch_size, teacher.training,
                versions)

    def get(self, teacher: nn.Module, data: ImageSet, key: tuple) -> _TeacherCache | None:
        if self._refs is None or self._refs[0]() is not teacher or self._refs[1]() is not data or self._key != key:
            return None
        return self._cache

    def put(self, teacher: nn.Module, data: ImageSet, key: tuple, cache: _TeacherCache) -> None:
        self._refs, self._key, self._cache = (weakref.ref(teacher), weakref.ref(data)), key, cache

    def clear(self) -> None:
        self._refs, self._key, self._cache = None, (), None


_LAST_HOST_CACHE = _LastHostCache()


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
    step: int = 0  # optimizer steps of the unfinished epoch ``epoch`` (a run stopped at ``stop_step``)
    epoch_order: torch.Tensor | None = None  # the generator's state when that epoch drew its batch order
    loss_sum: float = 0.0  # the training loss summed over every step of the run so far (a race's TSE)
    curve: list[dict[str, Any]] = field(default_factory=list)  # per step under curve_every: step, loss, [val_acc]

    _KEYS = ("model", "criterion", "optimizer", "scheduler", "scaler", "generator", "torch_rng", "epoch", "history")

    def steps_done(self, steps_per_epoch: int) -> int:
        """Optimizer steps taken since the start of the run."""
        return self.epoch * steps_per_epoch + self.step

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
            "step": self.step,
            "epoch_order": self.epoch_order,
            "loss_sum": self.loss_sum,
            "curve": self.curve,
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
        self.step, self.epoch_order = state.get("step", 0), state.get("epoch_order")
        self.loss_sum, self.curve = state.get("loss_sum", 0.0), list(state.get("curve", []))
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
    micro_batch: int = 0  # images per forward/backward; 0 or >= the batch: the whole batch at once
    eval_batch: int = 0  # images per evaluation forward (at most config.eval_batch_size); 0: not sized yet
    cache_place: str | None = None  # the teacher cache's home: "device", "host", or None (live teacher)
    memory: dict[str, Any] = field(default_factory=dict)  # the memory check's numbers, for the history


def _micro_batches(n: int, micro_batch: int) -> list[slice]:
    """``n`` rows cut into the fewest near-equal slices of at most ``micro_batch`` rows."""
    if micro_batch <= 0 or micro_batch >= n:
        return [slice(0, n)]
    k = -(-n // micro_batch)  # ceil
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def train_step(
    run: Setup, state: TrainState, x: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor | None,
    t_feats: list[torch.Tensor], where: str,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward, loss, NaN check, backward, clip, optimizer and schedule step; returns the logits and loss terms.

    With ``run.micro_batch`` below the batch, forward and backward run per micro-batch and the
    gradients accumulate, each micro-batch's loss weighted by its share of the batch: the
    gradient of a batch-mean loss is then the full batch's, and one optimizer step follows.
    """
    config, criterion = run.config, state.criterion
    state.optimizer.zero_grad(set_to_none=True)
    chunks = _micro_batches(len(y), run.micro_batch)
    all_logits: list[torch.Tensor] = []
    parts: dict[str, float] = {}
    for i, rows in enumerate(chunks):
        last = i == len(chunks) - 1
        no_sync = getattr(run.train_model, "no_sync", None)  # DDP: all-reduce once, after the last micro-batch
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with _autocast(run.device, run.amp_dtype):
                logits = run.train_model(x[rows])  # (b, K)
            s_feats = [run.student_tap[p].float() for p in run.student_paths]
            loss, chunk_parts = criterion(LossInputs(
                logits.float(), None if t_logits is None else t_logits[rows], y[rows], s_feats,
                [f[rows] for f in t_feats], temperature=state.temperature))
            if not torch.isfinite(loss):
                clip = "" if config.grad_clip else " or enable --grad-clip"
                raise TrainingError(
                    f"the loss became {loss.item()} at {where}; lower --lr (now {config.resolved_lr:g}){clip}. "
                    f"The last good checkpoint is kept at {run.ckpt_path}"
                )
            share = (rows.stop - rows.start) / len(y)
            state.scaler.scale(loss if len(chunks) == 1 else loss * share).backward()
        all_logits.append(logits if len(chunks) == 1 else logits.detach())
        for name, value in chunk_parts.items():
            parts[name] = parts.get(name, 0.0) + value * share
    run.dist.average_grads(list(criterion.parameters()))  # DDP averages only the model's
    if config.grad_clip:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_([*state.model.parameters(), *criterion.parameters()], config.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    return (all_logits[0] if len(chunks) == 1 else torch.cat(all_logits)), parts  # (B, K)


def train_epoch(run: Setup, state: TrainState, epoch: int, phases: Phases, progress: Progress,
                stop: int | None = None) -> dict[str, Any]:
    """One epoch over this rank's shard, from step ``state.step`` (0, or where a stopped run left it)
    to its end or to step ``stop``; returns the training entries of those steps, summed over ranks."""
    config, dist, train_set = run.config, run.dist, run.dataset.train
    extra = phases.start_epoch(run.train_model, epoch)
    progress.start("batches", f"{phases.label}epoch {epoch + 1}/{config.epochs}", run.steps_per_epoch)
    progress.advance("batches", state.step)
    first = state.step
    if first:  # the batch order the stopped epoch drew, from the generator's state at that draw
        order = torch.Generator().manual_seed(0)
        order.set_state(state.epoch_order)
    else:
        order, state.epoch_order = state.generator, state.generator.get_state()
    batches = epoch_batches(len(train_set), config.batch_size, order, dist.rank, dist.world_size)
    sums: dict[str, float] = {}
    seen, correct = 0, 0
    t0 = time.perf_counter()
    for step, idx in enumerate(batches):
        if step < first:
            continue
        if step == stop:
            break
        x, y = load_batch(train_set, idx, run.dataset, run.augment, state.generator, run.device, run.channels_last)
        t_logits, t_feats = _teacher_targets(run, idx, x)
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
        state.step = step + 1
        state.loss_sum += sum(parts.values())
        if config.curve_every:
            _curve_point(run, state, epoch * run.steps_per_epoch + state.step, parts)
        progress.advance("batches", loss=sum(parts.values()), acc=correct / seen,
                         ips=seen * dist.world_size / max(elapsed, 1e-9))
    if state.step == run.steps_per_epoch:
        state.step = 0
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
        **run.memory,
        **extra,
    }


def _curve_point(run: Setup, state: TrainState, step: int, parts: dict[str, float]) -> None:
    """Keep step ``step``'s loss terms, with validation top-1 every ``curve_every`` steps (rank 0 evaluates)."""
    point: dict[str, Any] = {"step": step, "loss": dict(parts)}
    if step % run.config.curve_every == 0 and run.dist.is_main:
        modes = [(m, m.training) for m in state.model.modules()]  # QAT keeps some parts in eval: put each back
        point["val_acc"] = evaluate(state.model, run.dataset, run.device, run.eval_batch, run.channels_last)["val_acc"]
        for module, training in modes:
            module.train(training)
    state.curve.append(point)


def _teacher_targets(run: Setup, idx: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """The teacher's logits and features for the batch, computed a micro-batch at a time."""
    if run.teacher is None:
        return None, []
    chunks = _micro_batches(len(idx), run.micro_batch)
    if len(chunks) == 1:
        return run.teacher(idx, x)
    outs = [run.teacher(idx[rows], x[rows]) for rows in chunks]
    return torch.cat([o[0] for o in outs]), [torch.cat(f) for f in zip(*(o[1] for o in outs))]


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


# ---- 5. memory -----------------------------------------------------------------------------


def estimate_train_memory(run: Setup, state: TrainState) -> MemoryEstimate:
    """The peak memory of one training step as a line in the batch size, from real steps at 2 and 4 images.

    The probe trains copies of the model and criterion with a fresh optimizer of the same kind
    (so each probe allocates gradients and optimizer state as the first real step does), on the
    first training images, unaugmented, under a forked RNG: the run's state, batch order and
    random streams are untouched. A live teacher is used even when the run caches its outputs
    (an upper bound), and the model is neither compiled nor wrapped in DDP.
    """
    model, criterion = copy.deepcopy(state.model), copy.deepcopy(state.criterion)
    model.train()  # not phases.start_epoch: the box's hooks run once per real epoch, in order
    teacher = None
    if run.teacher is not None:
        teacher = TeacherTargets(run.teacher.teacher, run.teacher.paths, run.amp_dtype)
    probe = Setup(run.config, run.dataset, run.device, DistributedContext(), run.amp_dtype, run.channels_last, None,
                  model, FeatureTap(model, run.student_paths), run.student_paths, teacher, run.steps_per_epoch,
                  run.ckpt_path)

    def step(batch: int) -> None:
        idx = torch.arange(batch)
        x, y = load_batch(run.dataset.train, idx, run.dataset, None, torch.Generator(), run.device, run.channels_last)
        t_logits, t_feats = _teacher_targets(probe, idx, x)
        optimizer, scheduler = build_optimizer(run.config, [model, criterion], run.steps_per_epoch)
        scaler = torch.amp.GradScaler("cuda", enabled=state.scaler.is_enabled())
        probe_state = TrainState(model, criterion, optimizer, scheduler, scaler, torch.Generator(), state.temperature)
        train_step(probe, probe_state, x, y, t_logits, t_feats, "the memory probe")
        optimizer.zero_grad(set_to_none=True)

    rng_devices = [run.device.index or 0] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), probe.student_tap, (teacher or contextlib.nullcontext()):
        probes = (2, 4) if len(run.dataset.train) >= 4 else (1, 2)
        return estimate_step_memory(step, run.device, probes)


def choose_micro_batch(
    estimate: MemoryEstimate, budget: MemoryBudget, batch_size: int, keep: int | None = None
) -> int:
    """The micro-batch for ``batch_size`` under ``budget``: the whole batch when it fits, else the largest that does.

    ``keep``: the micro-batch a resumed run used; kept when it still fits, so BatchNorm sees the
    same batches as before the interruption.

    Raises:
        MemoryBudgetError: not even the smallest sensible micro-batch (8 images, or 2 below a batch of 8) fits.
    """
    if keep and estimate.at(keep) <= budget.nbytes:
        return keep
    if estimate.at(batch_size) <= budget.nbytes:
        return batch_size
    smallest = min(batch_size, 8 if batch_size >= 8 else 2)
    fits = min(estimate.largest_batch(budget.nbytes), batch_size)
    if fits < smallest:
        raise MemoryBudgetError(
            f"one training step at batch {batch_size} needs ≈ {format_bytes(estimate.at(batch_size))} "
            f"(micro-batches of {smallest}: ≈ {format_bytes(estimate.at(smallest))}) but "
            f"{format_bytes(budget.nbytes)} is available ({budget.source}); lower --batch-size or --image-size, "
            "or raise --max-memory"
        )
    steps = -(-batch_size // fits)  # ceil: the fewest micro-batches of at most `fits` images
    return -(-batch_size // steps)  # the size of the near-equal slices train_step cuts


def estimate_inference_memory(
    model: nn.Module, images: torch.Tensor, dataset: Dataset, device: torch.device, channels_last: bool = False,
    paths: list[str] | None = None,
) -> MemoryEstimate:
    """The peak memory of one evaluation forward (eval mode, ``inference_mode``) as a line in the batch.

    Measured on the first 2 and 4 of ``images`` (uint8 ``(N, C, H, W)``) as :func:`predict_logits`
    runs them, with the feature maps at ``paths`` kept as the teacher cache's pass keeps them.
    The probe runs a copy, so the model's BatchNorm statistics and QAT observers never see it.
    """
    try:
        model = copy.deepcopy(model).eval()
    except RuntimeError:  # a torch.export program (a .pt2 teacher) cannot be deep-copied; it runs as it is
        pass

    def step(batch: int) -> None:
        with torch.inference_mode(), FeatureTap(model, paths or []):
            x = normalize(images[:batch].to(device), dataset.mean, dataset.std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            model(x)

    return estimate_step_memory(step, device, (2, 4) if len(images) >= 4 else (1, 2))


def choose_eval_batch(estimates: list[MemoryEstimate], budget: MemoryBudget, batch_size: int) -> int:
    """``batch_size`` when every model's evaluation forward fits in ``budget``, else the largest batch that does (≥ 1)."""
    fits = min([batch_size] + [e.largest_batch(budget.nbytes) for e in estimates])
    return max(1, fits)


@dataclass(frozen=True)
class MemoryPlan:
    """How a run fits its memory budget; rank 0 decides it for every rank."""

    micro_batch: int
    eval_batch: int
    cache_place: str | None  # "device", "host", or None: the teacher runs live (or no cache was asked for)
    step_bytes: int  # one step at the full batch
    cache_bytes: int  # the teacher cache (0: none asked for)
    run_bytes: int  # the most the run holds at once: a step at the micro-batch or an evaluation, with the cache
    budget: MemoryBudget
    notes: tuple[str, ...] = ()


def plan_memory(
    run: Setup, state: TrainState, teacher: nn.Module | None, t_paths: list[str], budget: MemoryBudget
) -> MemoryPlan:
    """Size the micro-batch, the teacher cache and the evaluation batch to ``budget`` (see the module doc).

    Raises:
        MemoryBudgetError: not even the smallest micro-batch fits.
    """
    config, dataset, device = run.config, run.dataset, run.device
    estimate = estimate_train_memory(run, state)
    keep = next((h["micro_batch"] for h in reversed(state.history) if "micro_batch" in h), None)
    micro = choose_micro_batch(estimate, budget, config.batch_size, keep)
    step_bytes = estimate.at(config.batch_size)
    notes = []
    steps = len(_micro_batches(config.batch_size, micro))
    if steps > 1:
        notes.append(
            f"one training step at batch {config.batch_size} needs ≈ {format_bytes(step_bytes)} "
            f"but {format_bytes(budget.nbytes)} is available ({budget.source}): each batch trains as {steps} "
            f"micro-batches of ≤ {micro} with gradient accumulation (same effective batch and schedule; "
            f"BatchNorm sees {micro} images at a time)"
        )

    # the teacher cache: kept only beside the step as it was chosen, never at the cost of smaller micro-batches
    cache_place, cache_bytes, held = None, 0, 0
    if teacher is not None and config.cache_teacher:
        cache_bytes = teacher_cache_bytes(teacher, t_paths, dataset.train, dataset, device)
        room = budget.nbytes - estimate.at(micro)
        host = memory_budget(None, torch.device("cpu")) if device.type == "cuda" else None
        if host is None and cache_bytes <= room:
            cache_place, held = "host", cache_bytes
        elif host is not None and cache_bytes <= min(room, _CACHE_ON_GPU_BYTES):
            cache_place, held = "device", cache_bytes
        elif host is not None and cache_bytes <= host.nbytes:
            cache_place = "host"  # host memory, outside the GPU's budget
        else:
            where = (f"the {format_bytes(host.nbytes)} of host memory ({host.source})" if host is not None else
                     f"the {format_bytes(max(0, room))} the training step leaves of {format_bytes(budget.nbytes)} "
                     f"({budget.source})")
            notes.append(
                f"caching the teacher's outputs for {len(dataset.train)} training images (logits and "
                f"{len(t_paths)} feature maps) needs ≈ {format_bytes(cache_bytes)}, more than {where}: "
                "the teacher runs live at each step instead"
            )

    # evaluation holds the cache and the step's fixed part (gradients, optimizer state) while it runs; on the
    # CPU the whole step's peak stays resident (glibc keeps the freed heap), and evaluation comes on top of it
    step_resident = estimate.at(micro) if device.type != "cuda" else int(estimate.slack * estimate.fixed)
    reserved = held + step_resident
    eval_budget = budget.less(reserved, "training state and teacher cache")
    images = dataset.val.images if len(dataset.val) else dataset.train.images
    estimates = [estimate_inference_memory(state.model, images, dataset, device, run.channels_last)]
    if teacher is not None:  # the cache pass keeps each batch's feature maps too
        estimates.append(estimate_inference_memory(teacher, images, dataset, device, run.channels_last,
                                                   t_paths if cache_place else None))
    eval_batch = choose_eval_batch(estimates, eval_budget, config.eval_batch_size)
    eval_bytes = max(e.at(eval_batch) for e in estimates) + reserved
    if eval_batch < config.eval_batch_size:
        need = max(e.at(config.eval_batch_size) for e in estimates)
        notes.append(
            f"evaluation at batch {config.eval_batch_size} needs ≈ {format_bytes(need)} but "
            f"{format_bytes(eval_budget.nbytes)} is available ({eval_budget.source}): evaluating "
            f"{eval_batch} images at a time"
        )
    run_bytes = max(estimate.at(micro) + held, eval_bytes)
    return MemoryPlan(micro, eval_batch, cache_place, step_bytes, cache_bytes, run_bytes, budget, tuple(notes))


def _check_memory(
    run: Setup, state: TrainState, teacher: nn.Module | None, t_paths: list[str], progress: Progress
) -> None:
    """Set ``run``'s micro-batch, evaluation batch and cache place from :func:`plan_memory` (rank 0 decides)."""
    config, dist = run.config, run.dist
    plan: MemoryPlan | str | None = None
    if dist.is_main:
        # ranks on one host's CPU share its memory; on CUDA each rank has its own GPU
        ranks = dist.world_size if run.device.type != "cuda" and config.max_memory is None else 1
        budget = memory_budget(config.max_memory, run.device, processes=ranks)
        if config.max_memory is not None and run.device.type != "cuda":
            # --max-memory caps this process on the CPU: what it holds already (libraries, the teacher, the data)
            # is taken off; the default share of the memory free now leaves that out already
            budget = budget.less(resident_memory(), "what the process holds already")
        try:
            plan = plan_memory(run, state, teacher, t_paths, budget)
        except MemoryBudgetError as e:
            plan = str(e)
    plan = dist.broadcast(plan)
    if isinstance(plan, str):
        raise MemoryBudgetError(plan)
    assert plan is not None
    run.micro_batch, run.eval_batch, run.cache_place = plan.micro_batch, plan.eval_batch, plan.cache_place
    run.memory = {"micro_batch": plan.micro_batch, "accumulation_steps": len(_micro_batches(config.batch_size,
                                                                                            plan.micro_batch)),
                  "memory_estimate_bytes": plan.step_bytes, "memory_budget_bytes": plan.budget.nbytes,
                  "eval_batch": plan.eval_batch, "run_memory_estimate_bytes": plan.run_bytes}
    if config.cache_teacher and teacher is not None:
        run.memory["teacher_cache"] = plan.cache_place or "live"
        run.memory["teacher_cache_bytes"] = plan.cache_bytes
    for note in plan.notes:
        progress.note(note)


def _out_of_memory(run: Setup, where: str) -> MemoryBudgetError:
    """A CUDA out-of-memory error as one line: what ran out, what to change, where the last epoch is."""
    kept = f"; the last finished epoch is kept in {run.ckpt_path} (--resume)" if run.ckpt_path.exists() else ""
    return MemoryBudgetError(
        f"{run.device} ran out of memory at {where}, beyond the estimate: lower --max-memory (smaller "
        f"micro-batches), --batch-size or --image-size{kept}"
    )


# ---- 6. evaluation --------------------------------------------------------------------------


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


# ---- 7. the loop ----------------------------------------------------------------------------


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
    stop_step: int | None = None,
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
        resume: continue from ``out_dir/last.ckpt`` when it exists (also from inside an epoch).
        stop_step: stop once this many optimizer steps of the whole run are done, evaluate and
            checkpoint there, even inside an epoch; a later call with ``resume`` goes on from that
            step as if never stopped (same batch order, same schedule). The optimizer and the
            learning-rate schedule are planned for all ``config.epochs`` whatever the stop, which
            is what lets the race's winner go on into its distillation.

    Returns:
        The last epoch's metrics (at ``stop_step``: the metrics there) with the per-epoch
        ``history``, ``run_steps`` (optimizer steps of the whole run so far), ``train_loss_total``
        (their training losses summed) and, under ``config.curve_every``, the learning ``curve``.
        ``model`` holds the final weights, on the CPU. Under ``torchrun`` rank 0 alone evaluates
        and writes, and every rank returns rank 0's metrics.

    Raises:
        UsageError: a loss needs the missing teacher, too little data, a checkpoint with other settings.
        MemoryBudgetError: not even a micro-batch of 8 images fits in ``config.max_memory`` (before
            any work), or CUDA ran out of memory (the last checkpoint is kept).
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
    # --max-memory chooses how a step is cut into micro-batches, not what is trained: a resume may change it
    settings = {k: v for k, v in settings.items() if k != "max_memory"}
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
        inside = f", step {state.step}" if state.step else ""
        progress.note(f"resumed from {ckpt_path} after epoch {state.epoch}{inside}")

    train_model: nn.Module = model
    if dist.active:
        # BatchNorm: each rank normalises with its own batch statistics; DDP broadcasts rank 0's
        # running statistics before every forward, so the saved (rank 0) model is consistent.
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if config.compile:
        train_model = torch.compile(train_model)

    # -- the teacher's training targets, live (cached below); the memory check before any work
    s_paths, t_paths = feature_paths
    targets = None
    if teacher is not None and (config.cache_teacher or criterion.uses_teacher):
        targets = TeacherTargets(teacher, t_paths, amp_dtype)
    # hooks stay registered for the whole run: re-registering them every step would make
    # torch.compile recompile every step
    run = Setup(config, dataset, device, dist, amp_dtype, channels_last, augment, train_model,
                FeatureTap(model, s_paths), s_paths, targets, steps_per_epoch, ckpt_path)
    try:
        _check_memory(run, state, teacher, t_paths, progress)
    except torch.OutOfMemoryError:
        raise _out_of_memory(run, "the memory probe") from None
    out_dir.mkdir(parents=True, exist_ok=True)

    # -- the teacher: validation logits once, training targets cached when asked
    teacher_val_logits = None
    if teacher is not None and dist.is_main:
        teacher_val_logits = predict_logits(teacher, dataset.val.images, dataset.mean, dataset.std, device=device,
                                            batch_size=run.eval_batch, channels_last=channels_last)
    if teacher is not None and run.cache_place is not None:
        progress.note("caching the teacher's outputs for the training set")
        targets = run.teacher = TeacherTargets.cached(teacher, t_paths, dataset.train, dataset, device,
                                                      run.eval_batch, on_device=run.cache_place == "device")

    # -- the loop: train, evaluate, checkpoint; NaN stops it (above), Ctrl-C leaves the last epoch saved
    progress.start("epochs", f"{phases.label}epochs", config.epochs)
    progress.advance("epochs", state.epoch)
    end = config.epochs * steps_per_epoch if stop_step is None else min(stop_step, config.epochs * steps_per_epoch)
    metrics: dict[str, Any] | None = None
    try:
        with run.student_tap, (targets or contextlib.nullcontext()):
            while state.steps_done(steps_per_epoch) < end:
                epoch = state.epoch
                stop = end - epoch * steps_per_epoch if end < (epoch + 1) * steps_per_epoch else None
                train_metrics = train_epoch(run, state, epoch, phases, progress, stop)
                metrics = None
                if dist.is_main:
                    phases.before_eval(model)
                    metrics = {**evaluate(model, dataset, device, run.eval_batch, channels_last,
                                          teacher_val_logits), **train_metrics}
                metrics = dist.broadcast(metrics)
                assert metrics is not None
                if state.step:  # stopped inside the epoch: its history entry comes when it ends
                    if dist.is_main:
                        state.checkpoint(ckpt_path, settings)
                    dist.barrier()
                    progress.note(f"{phases.label}stopped at step {state.steps_done(steps_per_epoch)} "
                                  f"(epoch {epoch + 1}, step {state.step}): val top-1 {metrics['val_acc']:.4f}")
                    break
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
    except torch.OutOfMemoryError:
        raise _out_of_memory(run, f"batch {config.batch_size} (micro-batches of {run.micro_batch})") from None
    finally:
        progress.finish("epochs")
    model.to("cpu")
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    if metrics is None and stop_step is not None and dist.is_main:  # nothing left to train: the metrics here
        metrics = {**evaluate(model, dataset, torch.device("cpu"), run.eval_batch), "epoch": state.epoch}
    final = dict(metrics if metrics is not None else state.history[-1] if state.history else {})
    final["history"] = state.history
    final["run_steps"], final["train_loss_total"] = state.steps_done(steps_per_epoch), state.loss_sum
    if config.curve_every:
        final["curve"] = state.curve
    return final
