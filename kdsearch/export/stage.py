"""The export stage: fp32 ONNX (+ int8 from PTQ or QAT), verified and measured, in one directory."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from kdsearch.devices import resolve_device
from kdsearch.errors import ExportError, KdsearchWarning, MemoryBudgetError, UsageError
from kdsearch.export.config import parse_int8
from kdsearch.export.onnx_export import export_onnx, kdsearch_version
from kdsearch.export.ptq import CALIB_BATCH, quantize_ptq
from kdsearch.export.runtime import (
    PARITY_RTOL,
    compare_logits,
    onnx_accuracy,
    ort_logits,
    ort_session,
    parity,
    torch_latency_ms,
    torch_logits,
)
from kdsearch.export.timing import interleaved_latency_ms, session_options, speedup
from kdsearch.files import write_text
from kdsearch.memory import (
    MemoryBudget,
    MemoryEstimate,
    estimate_step_memory,
    format_bytes,
    memory_budget,
    resident_memory,
)
from kdsearch.ratios import export_speed_warnings, threads_text
from kdsearch.rundir import EXPORT_LOG, INT8_MODES, TEACHER_ONNX, ExportedFile, ExportRecord

__all__ = ["ACCURACY_BATCH", "LATENCY_WARMUP", "PARITY_MIN_AGREEMENT", "export_model", "export_teacher",
           "forward_memory", "recommend_file"]

LATENCY_WARMUP = 10  # untimed runs of every session before the timed rounds at each batch size
PARITY_MIN_AGREEMENT = 0.999  # fp32 gate on decisive top-1 agreement; max |diff| is gated by PARITY_RTOL
ACCURACY_BATCH = 256  # images per accuracy forward (ONNX Runtime and the eager reference) when memory allows


def forward_memory(model: nn.Module, images: torch.Tensor, *, allocated: bool = False) -> MemoryEstimate:
    """The peak memory of one inference forward of ``model`` (eval mode, CPU) over ``images[:b]``, as a line in b.

    Measured on 2 and 4 images (:func:`kdsearch.memory.estimate_step_memory`), the slicing included
    (:class:`~kdsearch.data.NormalizedImages` makes each batch's float copy). It stands for ONNX Runtime
    too: the peak RSS of an ONNX Runtime CPU session grew by 1.12× (ResNet-18) and 1.20× (an MBConv
    student) these live bytes per image at 224 px, inside :data:`~kdsearch.memory.CPU_SLACK`'s 1.6×.

    ``allocated``: every byte the forward allocates instead of its peak, for PTQ calibration: ONNX
    Runtime's calibration session keeps every intermediate tensor of a run alive (its ReduceMin/Max
    outputs run late), and from its second run on holds that twice (the memory pattern's block beside
    the first run's): 1.36× PyTorch's allocations per image for an MBConv student at 224 px.
    """

    def step(batch: int) -> None:
        with torch.inference_mode():
            model(images[:batch].float())

    probes = (2, 4) if len(images) >= 4 else (1, 2)
    return estimate_step_memory(step, torch.device("cpu"), probes, allocated=allocated)


@dataclasses.dataclass(frozen=True)
class _Batches:
    """How many images each pass of the export runs at once under the memory budget."""

    accuracy: int  # ONNX Runtime accuracy and the eager reference
    calib: int | None  # PTQ calibration; None: no PTQ
    per_image: int  # bytes one more image adds to the accuracy pass (allocator slack included)


def _batches_in_budget(model: nn.Module, images: torch.Tensor, budget: MemoryBudget, *, calibrate: bool,
                       latency_batch: int, say: Callable[[str], None]) -> _Batches:
    """The largest accuracy (and calibration) batch up to the defaults that fits ``budget``; one line each when smaller.

    Raises:
        MemoryBudgetError: not even one image's forward fits.
    """
    forward = forward_memory(model, images)
    if forward.at(1) > budget.nbytes:
        raise MemoryBudgetError(
            f"measuring the student's accuracy needs ≈ {format_bytes(forward.at(1))} for one image but "
            f"{format_bytes(budget.nbytes)} is available ({budget.source}); raise --max-memory"
        )
    passes = [("accuracy", forward, ACCURACY_BATCH, "measuring")]
    if calibrate:
        passes.append(("PTQ calibration", forward_memory(model, images, allocated=True), CALIB_BATCH, "calibrating"))
    chosen = []
    for what, estimate, default, doing in passes:
        batch = max(1, min(default, estimate.largest_batch(budget.nbytes)))
        if batch < default:
            say(f"{what} at batch {default} needs ≈ {format_bytes(estimate.at(default))} but "
                f"{format_bytes(budget.nbytes)} is available ({budget.source}): {doing} {batch} images at a time")
        chosen.append(batch)
    if forward.at(latency_batch) > budget.nbytes:  # what is timed is the user's choice: said, not changed
        say(f"timing at --latency-batch {latency_batch} needs ≈ {format_bytes(forward.at(latency_batch))} per "
            f"file, more than {format_bytes(budget.nbytes)} ({budget.source}); it is timed as asked")
    return _Batches(chosen[0], chosen[1] if calibrate else None, int(forward.slack * forward.per_image))


def _file_entry(path: Path, out_dir: Path, opset: int, provider_used: str) -> dict[str, Any]:
    return {
        "path": os.path.relpath(path, out_dir),
        "size_bytes": path.stat().st_size,
        "opset": opset,
        "provider_used": provider_used,
    }


def _time_side_by_side(paths: Mapping[str, Path], input_chw: tuple[int, ...], batches: tuple[int, ...], *,
                       provider: str, threads: int | None, runs: int) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every file's latency at every batch, all files timed in one interleaved loop per batch.

    Returns ``({name: {"batch_B": {"p50", ...}}}, {name: provider used})``.
    """
    opened = {name: ort_session(path, provider, options=session_options(threads)) for name, path in paths.items()}
    sessions = {name: session for name, (session, _) in opened.items()}
    latency: dict[str, dict[str, Any]] = {name: {} for name in paths}
    for b in batches:
        timed = interleaved_latency_ms(sessions, (b, *input_chw), runs=runs, warmup=LATENCY_WARMUP)
        for name, stats in timed.items():
            latency[name][f"batch_{b}"] = stats
    return latency, {name: used for name, (_, used) in opened.items()}


def _ratios(faster_than: Mapping[str, Any], file: Mapping[str, Any], batches: tuple[int, ...]) -> dict[str, float]:
    """batch -> how many times ``file`` is faster than ``faster_than`` (both ``latency_ms`` dicts of one loop)."""
    return {str(b): speedup(faster_than[f"batch_{b}"]["p50"], file[f"batch_{b}"]["p50"]) for b in batches}


def recommend_file(files: Mapping[str, ExportedFile]) -> str:
    """The file to ship: ``fp32``, unless an int8 file is faster than it at every timed batch (then the
    most accurate such file; the larger speed-up at batch 1 breaks a tie). int8 that is slower than
    fp32 on this machine saves only disk space."""
    faster = [kind for kind, f in files.items()
              if kind != "fp32" and f.speedup_vs_fp32 and all(r > 1 for r in f.speedup_vs_fp32.values())]
    if not faster:
        return "fp32"
    return max(faster, key=lambda k: (files[k].accuracy, files[k].speedup_vs_fp32_at(1) or 0.0))


def _check_fp32_parity(result: dict[str, dict[str, float]]) -> None:
    for key, stats in result.items():
        if stats["max_abs_diff"] > stats["tolerance"] or stats["decisive_top1_agreement"] < PARITY_MIN_AGREEMENT:
            raise ExportError(
                f"ONNX Runtime disagrees with PyTorch at {key.replace('_', ' ')}: max |logit diff| "
                f"{stats['max_abs_diff']:.3g} (allowed {stats['tolerance']:.3g} = {PARITY_RTOL:g}·max(1, "
                f"{stats['max_abs_logit']:.3g})), top-1 agreement {stats['top1_agreement']:.4f} (needed "
                f"{PARITY_MIN_AGREEMENT} outside near-ties); the exported graph does not compute the model - check "
                "for train-mode layers, Python branches on tensor values or ops whose ONNX translation differs "
                "(see export.log)"
            )


def export_model(
    model: nn.Module,
    *,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    out_dir: Path,
    calib_images: torch.Tensor | None = None,
    name: str = "student",
    int8: str | Sequence[str] = "none",
    qat_model: nn.Module | None = None,
    opset: int = 18,
    provider: str = "cpu",
    device: str = "auto",
    num_calib: int = 256,
    parity_batch: int = 8,
    parity_images: int = 64,
    latency_runs: int = 100,
    latency_batch: int = 32,
    latency_threads: int | None = 1,
    max_memory: str | None = None,
    metadata: Mapping[str, str] | None = None,
    keep: Mapping[str, ExportedFile] | None = None,
    student_digest: str | None = None,
    teacher: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ``out_dir/<name>.onnx`` (and an int8 twin), verify and measure them.

    Writes ``<name>.onnx``, ``<name>.ptq.onnx`` and/or ``<name>.qat.onnx``, ``export.log`` (the
    exporters' captured chatter) and ``export.json`` (an :class:`~kdsearch.rundir.ExportRecord`;
    atomic; file paths relative to ``out_dir``).
    The fp32 file must match PyTorch: max |logit diff| <= :func:`parity_tolerance` and top-1
    agreement >= 0.999 (near-ties inside the tolerance excused) at batch 1 and ``parity_batch``.

    Args:
        model: the fp32 classifier; copied, never modified.
        val_images: normalised ``(N, C, H, W)`` float validation images (a tensor, or
            :class:`~kdsearch.data.NormalizedImages` to normalise one batch at a time); ``val_labels`` ``(N,)``.
        calib_images: normalised images for PTQ calibration (training split); the first
            ``num_calib`` are used.
        int8: the int8 twins to make: ``none``, ``ptq`` (post-training static, needs
            ``calib_images``), ``qat`` (exports ``qat_model``, a PT2E ``convert_pt2e`` GraphModule
            captured with a dynamic batch), ``ptq,qat`` or a sequence of those modes.
        keep: int8 entries of an earlier export of the same student that this call does not
            remake; their files are kept and listed again. Other int8 leftovers are removed.
        student_digest: recorded in export.json, so a later export can tell whether ``keep`` applies.
        teacher: the teacher's ONNX file (:func:`export_teacher`: its ``path`` in ``out_dir``), timed in
            the same loop as the student's files; or ``{"error": why}``, recorded as it is.
        provider: ONNX Runtime provider ``cpu|cuda|tensorrt``; falls back to CPU with a warning.
        device: where the eager PyTorch reference (``pytorch_eager`` in export.json: accuracy and
            latency) runs; ``auto`` picks CUDA when present. Parity always compares on CPU, where both
            sides compute exact float32, and the ONNX files run on ``provider``.
        parity_images: how many validation images the parity checks use.
        latency_runs: timed rounds per batch size, after :data:`LATENCY_WARMUP` warm-up runs; each
            round runs the teacher and every file once, in a rotated order, so every speed-up
            (``speedup``, ``speedup_vs_fp32``) is the ratio of two medians from one loop.
        latency_batch: the throughput batch timed beside batch 1.
        latency_threads: ONNX Runtime intra-op threads when timing (None: its default, all cores);
            accuracy and parity run with the default.
        max_memory: what the export process may hold (e.g. ``"4GB"``): what it holds already is taken
            off, the rest is what one accuracy or calibration batch may use; None: 70 % of the memory
            free now (which leaves out what the process holds). Each batch is the largest up to
            :data:`ACCURACY_BATCH` (calibration:
            :data:`~kdsearch.export.ptq.CALIB_BATCH`) that :func:`forward_memory` says fits, measured
            on the host whatever ``provider`` runs the files; export.json's ``memory`` records them.

    An int8 file slower than the fp32 one, or a file to ship slower than the teacher, gets one
    :class:`~kdsearch.errors.KdsearchWarning` line; ``recommended`` names the file to ship.

    Raises:
        ExportError: the fp32 parity check failed; the file is renamed ``<name>.failed.onnx``.
        MemoryBudgetError: not even one image fits in ``max_memory`` (before anything is written).
    """
    say = progress or (lambda _msg: None)
    modes = parse_int8(int8) if isinstance(int8, str) else parse_int8(",".join(int8) or "none")
    keep = {k: v for k, v in (keep or {}).items() if k not in modes}
    if "qat" in modes and qat_model is None:
        raise UsageError("int8='qat' needs qat_model (the converted PT2E model from the qat stage); or use int8='ptq'")
    if "ptq" in modes and (calib_images is None or len(calib_images) == 0):
        raise UsageError("int8='ptq' needs calib_images (normalised training images); or use int8='none'")
    if latency_batch < 1 or (latency_threads is not None and latency_threads < 1):
        raise UsageError(f"--latency-batch and --latency-threads must be at least 1 "
                         f"(got {latency_batch} and {latency_threads})")
    if val_images.ndim != 4 or len(val_images) != len(val_labels) or len(val_images) == 0:
        raise UsageError(
            f"val_images must be (N, C, H, W) with one label each; "
            f"got {tuple(val_images.shape)} and {len(val_labels)} labels"
        )
    dev = resolve_device(device)  # a bad device is refused before anything is written
    # Parity runs on CPU on both sides: exact float32 kernels, no TF32, whatever provider is measured.
    fp32_model = copy.deepcopy(model).float().cpu().eval()
    val_images, val_labels = val_images.float().cpu(), val_labels.cpu()
    # --max-memory caps the process, so what it holds already (libraries, the models, the data) is taken off;
    # the default share of the memory free now leaves that out already
    budget = memory_budget(max_memory, torch.device("cpu"))
    held = resident_memory() if max_memory is not None else 0
    sizes = _batches_in_budget(fp32_model, val_images, budget.less(held, "what the export holds already"),
                               calibrate="ptq" in modes, latency_batch=latency_batch, say=say)
    batch = sizes.accuracy
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    input_chw = tuple(val_images.shape[1:])
    parity_set = val_images[:parity_images]
    logs: list[str] = []

    def keep_log(stage: str) -> Callable[[str], None]:
        return lambda text: logs.append(f"== {stage} ==\n{text}")

    meta = {"kdsearch_version": kdsearch_version(), "opset": str(opset),
            "input_size": json.dumps(list(val_images.shape[1:])), **(metadata or {})}  # (C, H, W) the model expects
    paths = {mode: out_dir / f"{name}.{mode}.onnx" for mode in (*INT8_MODES, "failed")}
    fp32_path = out_dir / f"{name}.onnx"
    try:
        say(f"exporting {fp32_path.name}")
        export_onnx(fp32_model, val_images[:2], fp32_path, opset=opset, metadata=meta, on_log=keep_log("fp32 export"))
        cpu_session, _ = ort_session(fp32_path, "cpu")
        say(f"checking {fp32_path.name} against PyTorch on {len(parity_set)} images")
        fp32_parity = parity(cpu_session, fp32_model, parity_set, batch_sizes=(1, parity_batch))
        _check_fp32_parity(fp32_parity)
    except ExportError as e:
        (out_dir / ExportRecord.FILE).unlink(missing_ok=True)  # a stale report must not vouch for a failed export
        write_text(out_dir / EXPORT_LOG, "\n".join(logs) + "\n")
        if not fp32_path.exists():
            raise
        os.replace(fp32_path, paths["failed"])
        raise ExportError(f"{e}; the file was kept as {paths['failed'].name} for inspection") from e
    for mode, path in paths.items():  # leftovers of earlier runs that this run neither remakes nor keeps
        if mode not in modes and mode not in keep:
            path.unlink(missing_ok=True)

    session, used = (cpu_session, "cpu") if provider == "cpu" else ort_session(fp32_path, provider)
    say(f"measuring {fp32_path.name} on {used}: accuracy on {len(val_images)} images")
    files: dict[str, Any] = {
        "fp32": {
            **_file_entry(fp32_path, out_dir, opset, used),
            "parity": fp32_parity,
            "accuracy": onnx_accuracy(session, val_images, val_labels, batch_size=batch),
        }
    }
    del session, cpu_session  # a session's arena keeps its peak until it closes: sessions in turn, not stacked

    for mode in modes:
        int8_path = paths[mode]
        if mode == "ptq":
            assert calib_images is not None
            calib = calib_images[:num_calib].float().cpu().numpy()  # (n, C, H, W)
            say(f"quantizing {int8_path.name} (post-training static, {len(calib)} images)")
            quantize_ptq(fp32_path, int8_path, calib, batch_size=sizes.calib or CALIB_BATCH, on_log=keep_log("ptq"))
            reference = fp32_model  # PTQ is judged against the model it approximates
        else:
            say(f"exporting {int8_path.name} from the QAT model")
            reference = copy.deepcopy(qat_model).cpu()  # the converted model's own int8 numerics
            export_onnx(reference, val_images[:2], int8_path, opset=opset, metadata={**meta, "quantization": "qat"},
                        on_log=keep_log("qat export"))
        int8_cpu, _ = ort_session(int8_path, "cpu")
        agreement = compare_logits(
            torch_logits(reference, parity_set, parity_batch), ort_logits(int8_cpu, parity_set, parity_batch)
        )
        for key in ("tolerance", "decisive_top1_agreement"):  # terms of the fp32 gate; int8 is reported, not gated
            agreement.pop(key)
        int8_session, int8_used = (int8_cpu, "cpu") if provider == "cpu" else ort_session(int8_path, provider)
        say(f"measuring {int8_path.name} on {int8_used}: accuracy")
        files[mode] = {
            **_file_entry(int8_path, out_dir, opset, int8_used),
            "parity": {
                "reference": "pytorch_fp32" if mode == "ptq" else "pytorch_qat",
                f"batch_{parity_batch}": agreement,
            },
            "accuracy": onnx_accuracy(int8_session, val_images, val_labels, batch_size=batch),
        }
        del int8_session, int8_cpu
        if mode == "ptq":
            files[mode]["calib_images"] = len(calib)

    files.update({mode: entry.to_dict() for mode, entry in keep.items() if (out_dir / entry.path).is_file()})
    batches = tuple(dict.fromkeys((1, latency_batch)))
    teacher = dict(teacher) if teacher else None
    timed = {kind: out_dir / entry["path"] for kind, entry in files.items()}
    if teacher and "path" in teacher:
        timed = {"teacher": out_dir / teacher["path"], **timed}
    say(f"timing {', '.join(p.name for p in timed.values())} side by side at batch "
        f"{' and '.join(map(str, batches))} ({latency_runs} interleaved rounds, {threads_text(latency_threads)})")
    latency, used_by = _time_side_by_side(timed, input_chw, batches, provider=provider, threads=latency_threads,
                                          runs=latency_runs)
    if teacher and "path" in teacher:
        teacher.update(provider_used=used_by["teacher"], latency_ms=latency["teacher"])
    for kind, entry in files.items():
        for key in ("speedup", "speedup_vs_fp32"):  # a kept file's ratios came from another loop
            entry.pop(key, None)
        entry["latency_ms"] = latency[kind]
        if teacher and "path" in teacher:
            entry["speedup"] = _ratios(latency["teacher"], latency[kind], batches)
        if kind != "fp32":
            entry["speedup_vs_fp32"] = _ratios(latency["fp32"], latency[kind], batches)

    say(f"timing PyTorch eager on {dev} for reference")
    fp32_model.to(dev)
    pytorch = {
        "device": str(dev),
        "accuracy": float(np.mean(torch_logits(fp32_model, val_images, batch).argmax(1) == val_labels.numpy())),
        "latency_ms": {f"batch_{b}": torch_latency_ms(fp32_model, (b, *input_chw), runs=latency_runs) for b in batches},
    }
    report = {
        "kdsearch_version": meta["kdsearch_version"],
        "opset": opset,
        "provider_requested": provider,
        "parity_rule": {
            "provider": "cpu",
            "rtol": PARITY_RTOL,
            "min_top1_agreement": PARITY_MIN_AGREEMENT,
            "images": len(parity_set),
        },
        "files": files,
        "pytorch_eager": pytorch,
        "log": EXPORT_LOG,
        "student_digest": student_digest,
        "input_size": list(input_chw),
        "teacher": teacher,
        "timing": {"batches": list(batches), "threads": latency_threads, "runs": latency_runs,
                   "warmup": LATENCY_WARMUP, "interleaved": True},
        "memory": {"budget_bytes": budget.nbytes, "budget_source": budget.source, "held_bytes": held,
                   "per_image_bytes": sizes.per_image, "accuracy_batch": sizes.accuracy, "calib_batch": sizes.calib},
    }
    write_text(out_dir / EXPORT_LOG, "\n".join(logs) + "\n")
    record = ExportRecord.from_dict(report)
    record = dataclasses.replace(record, recommended=recommend_file(record.files))
    for line in export_speed_warnings(record):  # one line each on the terminal; export.json holds the ratios
        warnings.warn(line, KdsearchWarning, stacklevel=2)
    record.save(out_dir / ExportRecord.FILE)
    say(f"wrote {out_dir / ExportRecord.FILE}")
    return record.to_dict()


def export_teacher(
    teacher: nn.Module,
    input_chw: tuple[int, ...],
    out_dir: Path,
    *,
    opset: int = 18,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/teacher.onnx``, for :func:`export_model` to time beside the student's files
    (the comparison an edge user asks for first).

    Returns ``{"path", "size_bytes"}``, or ``{"error": why}`` when the teacher cannot be exported
    (a teacher the ONNX exporter does not support is not an error of the student's export).
    """
    say = progress or (lambda _msg: None)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / TEACHER_ONNX
    model = copy.deepcopy(teacher).float().cpu().eval()
    sample = torch.randn(2, *input_chw, generator=torch.Generator().manual_seed(0))  # (2, C, H, W)
    say(f"exporting {path.name} to time the teacher beside the student in ONNX Runtime")
    try:
        export_onnx(model, sample, path, opset=opset)
    except Exception as e:  # noqa: BLE001 - any exporter failure: reported, the student's export goes on
        path.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"error": f"the teacher could not be exported to ONNX ({first[:200]})"}
    return {"path": path.name, "size_bytes": path.stat().st_size}
