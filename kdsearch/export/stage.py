"""The export stage: fp32 ONNX (+ int8 from PTQ or QAT), verified and measured, in one directory."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from kdsearch.devices import resolve_device
from kdsearch.errors import ExportError, UsageError
from kdsearch.export.config import parse_int8
from kdsearch.export.onnx_export import export_onnx, kdsearch_version
from kdsearch.export.ptq import quantize_ptq
from kdsearch.export.runtime import (
    PARITY_RTOL,
    compare_logits,
    latency_ms,
    onnx_accuracy,
    ort_logits,
    ort_session,
    parity,
    torch_latency_ms,
    torch_logits,
)
from kdsearch.files import write_text
from kdsearch.rundir import INT8_MODES, ExportedFile, ExportRecord

__all__ = ["LATENCY_BATCHES", "PARITY_MIN_AGREEMENT", "export_model", "measure_teacher"]

LATENCY_BATCHES = (1, 32)
PARITY_MIN_AGREEMENT = 0.999  # fp32 gate on decisive top-1 agreement; max |diff| is gated by PARITY_RTOL


def _file_entry(path: Path, out_dir: Path, opset: int, provider_used: str) -> dict[str, Any]:
    return {
        "path": os.path.relpath(path, out_dir),
        "size_bytes": path.stat().st_size,
        "opset": opset,
        "provider_used": provider_used,
    }


def _measure(session: Any, input_chw: tuple[int, ...], images: torch.Tensor, labels: torch.Tensor, runs: int) -> dict:
    return {
        "accuracy": onnx_accuracy(session, images, labels),
        "latency_ms": {f"batch_{b}": latency_ms(session, (b, *input_chw), runs=runs) for b in LATENCY_BATCHES},
    }


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
        teacher: the teacher's ONNX Runtime figures (:func:`measure_teacher`), recorded beside the student's.
        provider: ONNX Runtime provider ``cpu|cuda|tensorrt``; falls back to CPU with a warning.
        device: where PyTorch eager latency and accuracy run (``auto`` picks CUDA when present);
            parity always compares on CPU, where both sides compute exact float32.
        parity_images: how many validation images the parity checks use.
        latency_runs: timed runs per latency figure, after 10 warm-up runs.

    Raises:
        ExportError: the fp32 parity check failed; the file is renamed ``<name>.failed.onnx``.
    """
    say = progress or (lambda _msg: None)
    modes = parse_int8(int8) if isinstance(int8, str) else parse_int8(",".join(int8) or "none")
    keep = {k: v for k, v in (keep or {}).items() if k not in modes}
    if "qat" in modes and qat_model is None:
        raise UsageError("int8='qat' needs qat_model (the converted PT2E model from the qat stage); or use int8='ptq'")
    if "ptq" in modes and (calib_images is None or len(calib_images) == 0):
        raise UsageError("int8='ptq' needs calib_images (normalised training images); or use int8='none'")
    if val_images.ndim != 4 or len(val_images) != len(val_labels) or len(val_images) == 0:
        raise UsageError(
            f"val_images must be (N, C, H, W) with one label each; "
            f"got {tuple(val_images.shape)} and {len(val_labels)} labels"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    input_chw = tuple(val_images.shape[1:])
    val_images, val_labels = val_images.float().cpu(), val_labels.cpu()
    parity_set = val_images[:parity_images]
    logs: list[str] = []

    def keep_log(stage: str) -> Callable[[str], None]:
        return lambda text: logs.append(f"== {stage} ==\n{text}")

    meta = {"kdsearch_version": kdsearch_version(), "opset": str(opset),
            "input_size": json.dumps(list(val_images.shape[1:])), **(metadata or {})}  # (C, H, W) the model expects
    # Parity runs on CPU on both sides: exact float32 kernels, no TF32, whatever provider is measured.
    fp32_model = copy.deepcopy(model).float().cpu().eval()
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
        (out_dir / "export.json").unlink(missing_ok=True)  # a stale report must not vouch for a failed export
        write_text(out_dir / "export.log", "\n".join(logs) + "\n")
        if not fp32_path.exists():
            raise
        os.replace(fp32_path, paths["failed"])
        raise ExportError(f"{e}; the file was kept as {paths['failed'].name} for inspection") from e
    for mode, path in paths.items():  # leftovers of earlier runs that this run neither remakes nor keeps
        if mode not in modes and mode not in keep:
            path.unlink(missing_ok=True)

    session, used = (cpu_session, "cpu") if provider == "cpu" else ort_session(fp32_path, provider)
    say(f"measuring {fp32_path.name} on {used}: accuracy on {len(val_images)} images, latency ({latency_runs} runs)")
    files: dict[str, Any] = {
        "fp32": {
            **_file_entry(fp32_path, out_dir, opset, used),
            "parity": fp32_parity,
            **_measure(session, input_chw, val_images, val_labels, latency_runs),
        }
    }

    for mode in modes:
        int8_path = paths[mode]
        if mode == "ptq":
            assert calib_images is not None
            calib = calib_images[:num_calib].float().cpu().numpy()  # (n, C, H, W)
            say(f"quantizing {int8_path.name} (post-training static, {len(calib)} images)")
            quantize_ptq(fp32_path, int8_path, calib, on_log=keep_log("ptq"))
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
        say(f"measuring {int8_path.name} on {int8_used}")
        files[mode] = {
            **_file_entry(int8_path, out_dir, opset, int8_used),
            "parity": {
                "reference": "pytorch_fp32" if mode == "ptq" else "pytorch_qat",
                f"batch_{parity_batch}": agreement,
            },
            **_measure(int8_session, input_chw, val_images, val_labels, latency_runs),
        }
        if mode == "ptq":
            files[mode]["calib_images"] = len(calib)

    say(f"timing PyTorch eager on {dev} for comparison")
    fp32_model.to(dev)
    pytorch = {
        "device": str(dev),
        "accuracy": float(np.mean(torch_logits(fp32_model, val_images, 256).argmax(1) == val_labels.numpy())),
        "latency_ms": {
            f"batch_{b}": torch_latency_ms(fp32_model, (b, *input_chw), runs=latency_runs) for b in LATENCY_BATCHES
        },
    }
    files.update({mode: entry.to_dict() for mode, entry in keep.items() if (out_dir / entry.path).is_file()})
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
        "log": "export.log",
        "student_digest": student_digest,
        "input_size": list(input_chw),
        "teacher": teacher,
    }
    write_text(out_dir / "export.log", "\n".join(logs) + "\n")
    record = ExportRecord.from_dict(report)
    record.save(out_dir / ExportRecord.FILE)
    say(f"wrote {out_dir / 'export.json'}")
    return record.to_dict()


def measure_teacher(
    teacher: nn.Module,
    input_chw: tuple[int, ...],
    out_dir: Path,
    *,
    opset: int = 18,
    provider: str = "cpu",
    latency_runs: int = 100,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The teacher's ONNX Runtime latency at the student's batch sizes, for the comparison an
    edge user asks for first. Writes ``out_dir/teacher.onnx``.

    Returns ``{"path", "size_bytes", "provider_used", "latency_ms"}``, or ``{"error": why}`` when
    the teacher cannot be exported (a teacher the ONNX exporter does not support is not an error
    of the student's export).
    """
    say = progress or (lambda _msg: None)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / "teacher.onnx"
    model = copy.deepcopy(teacher).float().cpu().eval()
    sample = torch.randn(2, *input_chw, generator=torch.Generator().manual_seed(0))  # (2, C, H, W)
    say(f"exporting {path.name} to time the teacher in ONNX Runtime")
    try:
        export_onnx(model, sample, path, opset=opset)
    except Exception as e:  # noqa: BLE001 - any exporter failure: reported, the student's export goes on
        path.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"error": f"the teacher could not be exported to ONNX ({first[:200]})"}
    session, used = ort_session(path, provider)
    say(f"measuring {path.name} on {used}")
    return {
        "path": path.name,
        "size_bytes": path.stat().st_size,
        "provider_used": used,
        "latency_ms": {f"batch_{b}": latency_ms(session, (b, *input_chw), runs=latency_runs) for b in LATENCY_BATCHES},
    }
