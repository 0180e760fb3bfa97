"""QAT-KD: quantization-aware training of the distilled student, guided by the teacher.

``quantize_student(run_dir, QatConfig())`` reads ``run_dir/distill``'s student, prepares it
with PT2E fake-quantizers (:mod:`kdsearch.quant.pt2e`), fine-tunes it with the distillation
loss registry (``kd:1,ce:1`` by default) at a small learning rate, freezing BatchNorm and the
quantization ranges after a set number of epochs, converts it to int8 and writes ``run_dir/qat``:

- ``last.ckpt``: resumable state (model, optimizer, scheduler, RNG, epoch), written every epoch;
- ``student.qat.safetensors`` + ``qat.json``: the trained fake-quant state and the student's
  description; :func:`load_qat_model` rebuilds the converted int8 model from them (no pickle);
- ``metrics.json`` (val top-1 of fp32, fake-quant and int8 models) and ``curves.png``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsearch.errors import Interrupted, TrainingError, UsageError
from kdsearch.progress import NULL_PROGRESS, Progress

__all__ = ["QatConfig", "quantize_student", "load_qat_model", "QAT_WEIGHTS", "QAT_META"]

QAT_WEIGHTS = "student.qat.safetensors"
QAT_META = "qat.json"
_MISSING = "run `kdsearch quantize RUN_DIR` first"


@dataclass(frozen=True)
class QatConfig:
    """Everything that decides a QAT run; saved in every checkpoint."""

    epochs: int = 2
    lr: float = 5e-3  # ~1/20 of distillation's peak: QAT fine-tunes; large steps undo the fp32 solution
    batch_size: int = 128
    loss: str = "kd:1,ce:1"  # the distillation loss registry; logit losses only (the graph has no module hooks)
    temperature: float = 4.0
    freeze_bn_after: int = 1  # epochs on batch statistics; then running ones, as the folded int8 model computes
    freeze_observers_after: int = 1  # epochs the quantization ranges follow the data; then they are fixed
    momentum: float = 0.9
    weight_decay: float = 1e-4  # never applied to norms and biases
    grad_clip: float | None = 5.0
    augment: bool = True
    recipe: str = "onnx"  # see kdsearch.quant.recipes.QUANTIZERS; "onnx": every conv runs as QLinearConv in ONNX Runtime
    eval_batch_size: int = 512
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise UsageError(f"--epochs must be positive (got {self.epochs})")
        if self.batch_size <= 0:
            raise UsageError(f"--batch-size must be positive (got {self.batch_size})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number (got {self.lr})")
        if self.temperature <= 0:
            raise UsageError(f"--temperature must be positive (got {self.temperature})")
        for name in ("freeze_bn_after", "freeze_observers_after"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be 0 or more epochs (got {getattr(self, name)})")


def _capture_sample(meta: dict[str, Any], image_size: tuple[int, int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, meta["in_channels"], *image_size, generator=g)  # (2, C, H, W): 2 keeps the batch symbolic


def _prepare(student: nn.Module, meta: dict[str, Any], image_size: tuple[int, int], recipe: str) -> torch.fx.GraphModule:
    from kdsearch.quant.pt2e import prepare_for_qat

    return prepare_for_qat(student, _capture_sample(meta, image_size), recipe)


def load_qat_model(qat_dir: Path) -> torch.fx.GraphModule:
    """Rebuild the converted int8 model that :func:`quantize_student` trained, from ``qat_dir``.

    Reads ``qat.json`` and ``student.qat.safetensors``, prepares the architecture again and
    loads the trained fake-quant state into it (so no pickle is read), then converts.

    Raises:
        UsageError: ``qat_dir`` holds no finished QAT run.
    """
    from safetensors.torch import load_file

    from kdsearch.errors import ModelError
    from kdsearch.files import read_json
    from kdsearch.models.teacher import build_from_description
    from kdsearch.quant.pt2e import convert, load_prepared_state

    qat_dir = Path(qat_dir)
    if not (qat_dir / QAT_META).exists() or not (qat_dir / QAT_WEIGHTS).exists():
        raise UsageError(f"{qat_dir} holds no quantized student ({QAT_META} + {QAT_WEIGHTS}); {_MISSING}")
    info = read_json(qat_dir / QAT_META, QAT_META)
    student_meta = info["student"]
    model = build_from_description(student_meta, student_meta["num_classes"], student_meta["in_channels"])
    prepared = _prepare(model, student_meta, tuple(info["image_size"]), info["recipe"])
    try:
        load_prepared_state(prepared, load_file(str(qat_dir / QAT_WEIGHTS)))
    except RuntimeError as e:
        raise ModelError(
            f"{qat_dir / QAT_WEIGHTS} does not match the student in {QAT_META} ({str(e).splitlines()[0]}); "
            f"{_MISSING} again"
        ) from None
    return convert(prepared)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]  # norms, biases, learned scales
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def quantize_student(
    run_dir: Path,
    config: QatConfig = QatConfig(),
    *,
    resume: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, Any]:
    """QAT-KD of ``run_dir/distill``'s student into ``run_dir/qat``; returns ``metrics.json``'s content.

    Epoch ``e`` (0-based) trains with BatchNorm frozen when ``e >= freeze_bn_after`` and the
    observers off when ``e >= freeze_observers_after``. ``last.ckpt`` is written atomically after
    every epoch; with ``resume`` the run continues from it and, on the CPU, ends with the same
    weights as an uninterrupted run.

    Raises:
        UsageError: no distilled student, a feature loss, a checkpoint written with other settings.
        TrainingError: the loss stopped being finite.
        Interrupted: Ctrl-C; the last finished epoch is in ``last.ckpt``.
    """
    from safetensors.torch import save_file

    from kdsearch.data import iterate_batches
    from kdsearch.devices import resolve_device
    from kdsearch.distill.checkpoint import load_checkpoint, save_checkpoint
    from kdsearch.distill.evaluate import predict_logits, topk_accuracy
    from kdsearch.distill.losses import CombinedLoss, LossInputs, parse_loss_spec
    from kdsearch.files import atomic_path, write_json
    from kdsearch.models.teacher import load_model_dir
    from kdsearch.pipeline import load_run_config, load_run_dataset, resolve_teacher
    from kdsearch.quant.pt2e import convert, count_fake_quantizers, load_prepared_state, set_phase

    run_dir = Path(run_dir)
    src, out = run_dir / "distill", run_dir / "qat"
    if not (src / "student.json").exists():
        raise UsageError(f"{run_dir} has no distilled student (distill/student.json); run `kdsearch distill` first")
    terms = parse_loss_spec(config.loss)
    criterion = CombinedLoss(terms, {n: {"temperature": config.temperature} for n, _ in terms if n in ("kd", "dkd")})
    if criterion.uses_features:
        raise UsageError(
            f"--loss {config.loss} has a feature loss; QAT trains an exported graph without module hooks: "
            "use logit losses only, e.g. --loss kd:1,ce:1"
        )
    run_config = load_run_config(run_dir)
    dataset = load_run_dataset(run_config)
    student, student_meta = load_model_dir(src, weights_name="student")
    teacher = resolve_teacher(run_dir, run_config, dataset).module if criterion.uses_teacher else None
    device = resolve_device(config.device)
    mean, std, val = dataset.mean, dataset.std, dataset.val

    def logits_of(model: nn.Module) -> torch.Tensor:  # (N, K)
        return predict_logits(model, val.images, mean, std, device=device, batch_size=config.eval_batch_size)

    student.to(device)
    fp32_acc = topk_accuracy(logits_of(student), val.labels)
    student.to("cpu")
    teacher_acc = None
    if teacher is not None:
        teacher.to(device).eval()
        teacher_acc = topk_accuracy(logits_of(teacher), val.labels)

    progress.note("preparing the student for quantization-aware training (torch.export + PT2E)")
    prepared = _prepare(student, student_meta, dataset.image_size, config.recipe)
    if count_fake_quantizers(prepared) == 0:
        raise UsageError(f"recipe {config.recipe!r} quantizes nothing in this student; QAT would not change it")
    prepared.to(device)
    criterion.to(device)
    steps_per_epoch = len(dataset.train) // config.batch_size
    if steps_per_epoch == 0:
        raise UsageError(
            f"the training set has {len(dataset.train)} images, fewer than one batch of {config.batch_size}; "
            "lower --batch-size"
        )
    optimizer = torch.optim.SGD(_param_groups(prepared, config.weight_decay), lr=config.lr,
                                momentum=config.momentum, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps_per_epoch * config.epochs)
    generator = torch.Generator().manual_seed(config.seed)
    augment = dataset.augment if config.augment else None

    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "last.ckpt"
    start_epoch, history = 0, []
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if state.get("config") != asdict(config):
            raise UsageError(
                f"{ckpt_path} was written with different settings; resume with the same options or drop --resume"
            )
        load_prepared_state(prepared, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, history = state["epoch"], list(state["history"])
        progress.note(f"resumed from {ckpt_path} after epoch {start_epoch}")

    progress.start("epochs", "QAT epochs", config.epochs)
    progress.advance("epochs", start_epoch)
    try:
        for epoch in range(start_epoch, config.epochs):
            freeze_bn = epoch >= config.freeze_bn_after
            observe = epoch < config.freeze_observers_after
            set_phase(prepared, training=True, freeze_bn=freeze_bn, observe=observe)
            progress.start("batches", f"QAT epoch {epoch + 1}/{config.epochs}", steps_per_epoch)
            sums: dict[str, float] = {}
            seen, correct, t0 = 0, 0, time.perf_counter()
            batches = iterate_batches(dataset.train, config.batch_size, mean=mean, std=std, shuffle=True,
                                      augment=augment, generator=generator, device=device, drop_last=True)
            for step, (x, y) in enumerate(batches):  # x (B, C, H, W), y (B,)
                t_logits = None
                if teacher is not None:
                    with torch.inference_mode():
                        t_logits = teacher(x).float().clone()  # (B, K); clone: usable in autograd
                logits = prepared(x)  # (B, K)
                loss, parts = criterion(LossInputs(logits, t_logits, y, temperature=config.temperature))
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the QAT loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; lower --lr "
                        f"(now {config.lr:g}). The last good checkpoint is kept at {ckpt_path}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(prepared.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                for name, value in parts.items():
                    sums[name] = sums.get(name, 0.0) + value * len(y)
                seen += len(y)
                correct += (logits.detach().argmax(1) == y).sum().item()
                progress.advance("batches", loss=sum(parts.values()), acc=correct / seen)
            progress.finish("batches")
            set_phase(prepared, training=False, freeze_bn=True, observe=False)  # validation must not move ranges
            val_logits = logits_of(prepared)
            history.append({
                "epoch": epoch + 1,
                "train_loss": {k: v / max(seen, 1) for k, v in sums.items()},
                "train_acc": correct / max(seen, 1),
                "val_acc": topk_accuracy(val_logits, val.labels),
                "lr": scheduler.get_last_lr()[0],
                "bn_frozen": freeze_bn,
                "observers_on": observe,
                "seconds": time.perf_counter() - t0,
            })
            save_checkpoint(ckpt_path, {
                "model": {k: v.detach().cpu() for k, v in prepared.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch + 1,
                "history": history,
                "config": asdict(config),
            })
            progress.advance("epochs", val_acc=history[-1]["val_acc"])
            progress.note(f"QAT epoch {epoch + 1}/{config.epochs}: fake-quant val top-1 {history[-1]['val_acc']:.4f}")
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped by Ctrl-C; the last finished epoch is saved in {ckpt_path}: run the same command with --resume"
        ) from None
    finally:
        progress.finish("epochs")

    set_phase(prepared, training=False, freeze_bn=True, observe=False)
    prepared.to("cpu")
    # clone: observers shared by several graph nodes appear under several names, one storage
    state = {k: v.detach().cpu().clone().contiguous() for k, v in prepared.state_dict().items()}
    with atomic_path(out / QAT_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    keep = ("arch", "family", "model", "num_classes", "in_channels", "normalization")
    write_json(out / QAT_META, {"student": {k: student_meta.get(k) for k in keep}, "recipe": config.recipe,
                                "image_size": list(dataset.image_size), "config": asdict(config)})
    fake_quant_acc = topk_accuracy(predict_logits(prepared, val.images, mean, std), val.labels)
    progress.note("converting to int8 (convert_pt2e)")
    int8_acc = topk_accuracy(predict_logits(convert(prepared), val.images, mean, std), val.labels)
    metrics = {
        "fp32_val_acc": fp32_acc,
        "fake_quant_val_acc": fake_quant_acc,
        "int8_val_acc": int8_acc,
        "teacher_val_acc": teacher_acc,
        "val_images": len(val),
        "loss": config.loss,
        "recipe": config.recipe,
        "epochs": config.epochs,
        "history": history,
    }
    write_json(out / "metrics.json", metrics)
    from kdsearch.distill.stage import _plot_curves  # the distill stage's figure: same history shape

    _plot_curves(history, out / "curves.png")
    return metrics
