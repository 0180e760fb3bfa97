"""QAT-KD: quantization-aware training of the distilled student, guided by the teacher.

``quantize_student(student, meta, teacher, dataset, out_dir, QatConfig())`` prepares the
student with PT2E fake-quantizers (:mod:`kdsearch.quant.pt2e`) and fine-tunes it through the
one training engine (:func:`kdsearch.distill.engine.fit`) with the distillation loss registry
(``kd:1,ce:1`` by default) at a small learning rate; :class:`QatPhases` freezes BatchNorm and
the quantization ranges after a set number of epochs. It then converts to int8 and writes
``out_dir``:

- ``last.ckpt``: the engine's resumable state (model, optimizer, scheduler, RNG, epoch), every epoch;
- ``student.qat.safetensors`` + ``qat.json``: the trained fake-quant state and the student's
  description; :func:`load_qat_model` rebuilds the converted int8 model from them (no pickle);
- ``metrics.json`` (val top-1 of fp32, fake-quant and int8 models) and ``curves.png``.

Which run directory holds the student and teacher is the pipeline's business, not this module's.
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsearch.data import Dataset
from kdsearch.distill.config import TrainConfig
from kdsearch.distill.curves import plot_curves
from kdsearch.distill.engine import Phases, build_criterion, fit
from kdsearch.distill.evaluate import predict_logits, topk_accuracy
from kdsearch.errors import UsageError
from kdsearch.progress import NULL_PROGRESS, Progress
from kdsearch.quant.config import QatConfig
from kdsearch.rundir import CURVES_PLOT, QAT_META, QAT_WEIGHTS, QatModel

__all__ = ["QatConfig", "QatPhases", "quantize_student", "load_qat_model", "QAT_WEIGHTS", "QAT_META"]

_MISSING = "run `kdsearch quantize RUN_DIR` first"


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

    from kdsearch.distill.checkpoint import load_module_state
    from kdsearch.errors import ModelError
    from kdsearch.quant.pt2e import convert
    from kdsearch.spaces.catalog import build_from_description

    qat_dir = Path(qat_dir)
    if not (qat_dir / QAT_META).exists() or not (qat_dir / QAT_WEIGHTS).exists():
        raise UsageError(f"{qat_dir} holds no quantized student ({QAT_META} + {QAT_WEIGHTS}); {_MISSING}")
    info = QatModel.load(qat_dir / QatModel.FILE)
    student_meta = info.student
    model = build_from_description(student_meta, student_meta["num_classes"], student_meta["in_channels"])
    prepared = _prepare(model, student_meta, tuple(info.image_size), info.recipe)
    try:
        load_module_state(prepared, load_file(str(qat_dir / QAT_WEIGHTS)))
    except RuntimeError as e:
        raise ModelError(
            f"{qat_dir / QAT_WEIGHTS} does not match the student in {QAT_META} ({str(e).splitlines()[0]}); "
            f"{_MISSING} again"
        ) from None
    return convert(prepared)


class QatPhases(Phases):
    """QAT's hooks on the training engine: BatchNorm and observer freezing per epoch, evaluation with observers off."""

    label = "QAT "

    def __init__(self, config: QatConfig) -> None:
        self.config = config

    def start_epoch(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        from kdsearch.quant.pt2e import set_phase

        freeze_bn = epoch >= self.config.freeze_bn_after
        observe = epoch < self.config.freeze_observers_after
        set_phase(model, training=True, freeze_bn=freeze_bn, observe=observe)  # type: ignore[arg-type]
        return {"bn_frozen": freeze_bn, "observers_on": observe}

    def before_eval(self, model: nn.Module) -> None:
        from kdsearch.quant.pt2e import set_phase

        # validation must not move the quantization ranges
        set_phase(model, training=False, freeze_bn=True, observe=False)  # type: ignore[arg-type]


def engine_config(config: QatConfig) -> TrainConfig:
    """The training engine's settings for a QAT run: Nesterov SGD, cosine decay without warm-up, fp32."""
    return TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, optimizer="sgd", lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, schedule="cosine", warmup_epochs=0.0, grad_clip=config.grad_clip,
        loss=config.loss, temperature=config.temperature, augment=config.augment,
        amp=False, channels_last=False, compile=False,  # fake-quantizers train in fp32, on an exported graph
        eval_batch_size=config.eval_batch_size, max_memory=config.max_memory, seed=config.seed, device=config.device,
    )


def quantize_student(
    student: nn.Module,
    student_meta: dict[str, Any],
    teacher: nn.Module | None,
    dataset: Dataset,
    out_dir: Path,
    config: QatConfig,
    *,
    resume: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, Any]:
    """QAT-KD of the distilled ``student`` (fp32) into ``out_dir``; returns ``metrics.json``'s content.

    Args:
        student: the distilled student; it is captured and prepared, not trained in place.
        student_meta: its description (``load_model_dir``'s second value), written to ``qat.json``.
        teacher: the teacher, read when ``config.loss`` uses one (``kd``, ``dkd``, ...).
        dataset: the run's dataset.
        out_dir: where ``last.ckpt``, ``student.qat.safetensors``, ``qat.json``, ``metrics.json`` and
            ``curves.png`` go (a run directory's ``qat/``).

    Epoch ``e`` (0-based) trains with BatchNorm frozen when ``e >= freeze_bn_after`` and the
    observers off when ``e >= freeze_observers_after``. The training engine writes
    ``last.ckpt`` atomically after every epoch; with ``resume`` the run continues from it and,
    on the CPU, ends with the same weights as an uninterrupted run.

    Raises:
        UsageError: a feature loss, a loss needing the missing teacher, a recipe that quantizes
            nothing, a checkpoint written with other settings.
        TrainingError: the loss stopped being finite.
        Interrupted: Ctrl-C; the last finished epoch is in ``last.ckpt``.
    """
    from safetensors.torch import save_file

    from kdsearch.devices import resolve_device
    from kdsearch.files import atomic_path
    from kdsearch.rundir import QatMetrics
    from kdsearch.quant.pt2e import convert, count_fake_quantizers, set_phase

    train_config = engine_config(config)
    criterion = build_criterion(train_config)
    if criterion.uses_features:
        raise UsageError(
            f"--loss {config.loss} has a feature loss; QAT trains an exported graph without module hooks: "
            "use logit losses only, e.g. --loss kd:1,ce:1"
        )
    if not criterion.uses_teacher:
        teacher = None
    device = resolve_device(config.device)
    val = dataset.val
    fp32_student = copy.deepcopy(student).eval()  # the prepared graph trains the student's own parameters in place

    progress.note("preparing the student for quantization-aware training (torch.export + PT2E)")
    prepared = _prepare(student, student_meta, dataset.image_size, config.recipe)
    if count_fake_quantizers(prepared) == 0:
        raise UsageError(f"recipe {config.recipe!r} quantizes nothing in this student; QAT would not change it")
    result = fit(prepared, criterion, dataset, out_dir, train_config, teacher=teacher, phases=QatPhases(config),
                 settings=asdict(config), resume=resume, progress=progress, device=device)
    history = result["history"]
    # the engine's memory guard sized evaluation to --max-memory for the fake-quant model beside its training
    # state; the fp32 student's forward is no larger, and the training state is gone by now
    eval_batch = history[-1].get("eval_batch", config.eval_batch_size) if history else config.eval_batch_size
    fp32_acc = topk_accuracy(predict_logits(fp32_student.to(device), val.images, dataset.mean, dataset.std,
                                            device=device, batch_size=eval_batch), val.labels)
    del fp32_student

    set_phase(prepared, training=False, freeze_bn=True, observe=False)
    prepared.to("cpu")
    # clone: observers shared by several graph nodes appear under several names, one storage
    state = {k: v.detach().cpu().clone().contiguous() for k, v in prepared.state_dict().items()}
    with atomic_path(out_dir / QAT_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    keep = ("arch", "space", "family", "model", "num_classes", "in_channels", "normalization")
    QatModel(student={k: student_meta.get(k) for k in keep}, recipe=config.recipe,
             image_size=list(dataset.image_size), config=asdict(config)).save(out_dir / QatModel.FILE)
    fake_quant_acc = topk_accuracy(predict_logits(prepared, val.images, dataset.mean, dataset.std,
                                                  batch_size=eval_batch), val.labels)
    progress.note("converting to int8 (convert_pt2e)")
    int8_acc = topk_accuracy(predict_logits(convert(prepared), val.images, dataset.mean, dataset.std,
                                            batch_size=eval_batch), val.labels)
    metrics = QatMetrics(
        fp32_val_acc=fp32_acc,
        fake_quant_val_acc=fake_quant_acc,
        int8_val_acc=int8_acc,
        teacher_val_acc=result.get("teacher_val_acc"),
        val_images=len(val),
        loss=config.loss,
        recipe=config.recipe,
        epochs=config.epochs,
        history=history,
    )
    metrics.save(out_dir / QatMetrics.FILE)
    plot_curves(history, out_dir / CURVES_PLOT)
    return metrics.to_dict()
