"""Deployment: PyTorch eager vs ONNX Runtime fp32 vs int8 (PTQ, and QAT-KD for a run's student).

Two parts, one run, every ratio against a baseline measured in the same run:

1. ``--run-dir RUN`` (optional): the run's distilled student as PyTorch eager fp32, ORT fp32,
   ORT int8 PTQ and ORT int8 QAT-KD (from ``kdsearch quantize RUN``; skipped when absent):
   top-1 on the run's full validation split, p50 latency at batch 1 and 32, file size.
   Uses :func:`kdsearch.export.export_model` (the export stage itself) into a temporary folder.
2. int8/fp32 ORT latency ratio at batch 1 and 32 for several student sizes (random weights and
   inputs: latency does not depend on them), int8 = PTQ U8S8 and S8S8 activations.

Run: ``python benchmarks/deploy.py [--run-dir runs/quick] [--provider cuda]``.
Writes ``benchmarks/deploy.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from kdsearch.export import export_onnx, latency_ms, ort_session, quantize_ptq, torch_latency_ms
from kdsearch.models.resnet_cifar import ResNetCifar

# name, depths, widths (32x32 RGB input, 10 classes)
SIZES = [
    ("resnet8 (1 block/stage)", [1, 1, 1], [16, 32, 64]),
    ("resnet20", [3, 3, 3], [16, 32, 64]),
    ("resnet20 wide x2", [3, 3, 3], [32, 64, 128]),
]


def run_student(run_dir: Path, provider: str, runs: int) -> dict:
    """The run's student through the export stage: fp32 + PTQ, then fp32 + QAT when quantized."""
    from kdsearch.data import normalize
    from kdsearch.export import export_model
    from kdsearch.spaces.model_files import load_model_dir
    from kdsearch.pipeline import load_run_config, load_run_dataset

    config = load_run_config(run_dir)
    dataset = load_run_dataset(config)
    model, _ = load_model_dir(run_dir / "distill", weights_name="student")
    val = normalize(dataset.val.images, dataset.mean, dataset.std)  # (N, C, H, W)
    calib = normalize(dataset.train.images[: config.export.calib_images], dataset.mean, dataset.std)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        modes = ["ptq"]
        qat_model = None
        if (run_dir / "qat" / "qat.json").exists():
            from kdsearch.quant import load_qat_model

            qat_model = load_qat_model(run_dir / "qat")
            modes.append("qat")
        for mode in modes:
            report = export_model(model, val_images=val, val_labels=dataset.val.labels, calib_images=calib,
                                  out_dir=Path(tmp) / mode, int8=mode, qat_model=qat_model, provider=provider,
                                  latency_runs=runs)
            files = report["files"]
            if mode == "ptq":
                eager = report["pytorch_eager"]
                rows["pytorch eager fp32"] = {"accuracy": eager["accuracy"], "size_bytes": None,
                                              **{b: v["p50"] for b, v in eager["latency_ms"].items()}}
                rows["ort fp32"] = _row(files["fp32"])
            rows[f"ort int8 {mode.upper()}{'-KD' if mode == 'qat' else ''}"] = _row(files[mode])
    metrics = {}
    if (run_dir / "qat" / "metrics.json").exists():
        metrics = json.loads((run_dir / "qat" / "metrics.json").read_text())
    return {"run_dir": str(run_dir), "dataset": dataset.name, "val_images": len(dataset.val), "rows": rows,
            "qat_metrics": {k: v for k, v in metrics.items() if k != "history"}}


def _row(entry: dict) -> dict:
    return {"accuracy": entry["accuracy"], "size_bytes": entry["size_bytes"],
            **{b: v["p50"] for b, v in entry["latency_ms"].items()}}


def run_sizes(provider: str, runs: int, batches: list[int]) -> dict:
    out: dict[str, dict] = {}
    calib = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()  # (N, C, H, W)
    device = "cuda" if provider != "cpu" and torch.cuda.is_available() else "cpu"
    for name, depths, widths in SIZES:
        torch.manual_seed(0)
        model = ResNetCifar(depths, widths).eval()
        rows: dict[str, dict] = {}
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(model, torch.randn(2, 3, 32, 32), Path(tmp) / "fp32.onnx")
            files = {
                "ort fp32": fp32,
                "ort int8 U8S8": quantize_ptq(fp32, Path(tmp) / "u8.onnx", calib, activations="uint8"),
                "ort int8 S8S8": quantize_ptq(fp32, Path(tmp) / "s8.onnx", calib, activations="int8"),
            }
            rows["pytorch eager fp32"] = {
                f"batch_{b}": torch_latency_ms(model.to(device), (b, 3, 32, 32), runs=runs)["p50"] for b in batches
            }
            for label, path in files.items():
                session, _ = ort_session(path, provider)
                rows[label] = {f"batch_{b}": latency_ms(session, (b, 3, 32, 32), runs=runs)["p50"] for b in batches}
                rows[label]["size_bytes"] = os.path.getsize(path)
        fp32_b1 = rows["ort fp32"]["batch_1"]
        out[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "p50_ms": rows,
            "int8_u8s8_over_fp32_b1": rows["ort int8 U8S8"]["batch_1"] / fp32_b1,
            "int8_s8s8_over_fp32_b1": rows["ort int8 S8S8"]["batch_1"] / fp32_b1,
            "ort_fp32_over_eager_b1": fp32_b1 / rows["pytorch eager fp32"]["batch_1"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="a kdsearch run directory (distill/, qat/)")
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"), help="JSON to write")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    result: dict = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "provider": args.provider,
        "runs": args.runs,
    }
    if args.run_dir is not None:
        student = run_student(args.run_dir, args.provider, args.runs)
        result["student"] = student
        print(f"student of {args.run_dir} ({student['dataset']}, {student['val_images']} validation images)")
        print(f"{'':<22}{'top-1':>8}{'p50 b1 ms':>12}{'p50 b32 ms':>12}{'size KB':>10}")
        for label, row in student["rows"].items():
            size = f"{row['size_bytes'] / 1024:.1f}" if row["size_bytes"] else "-"
            print(f"{label:<22}{row['accuracy']:>8.4f}{row['batch_1']:>12.3f}{row['batch_32']:>12.3f}{size:>10}")
    sizes = run_sizes(args.provider, args.runs, batches)
    result["sizes"] = sizes
    print("\nint8 (PTQ) vs fp32 in ONNX Runtime, random weights, 32x32x3")
    print(f"{'model':<26}{'params':>9}{'fp32/eager b1':>15}{'U8S8/fp32 b1':>14}{'S8S8/fp32 b1':>14}")
    for name, row in sizes.items():
        print(f"{name:<26}{row['params']:>9,}{row['ort_fp32_over_eager_b1']:>15.3f}"
              f"{row['int8_u8s8_over_fp32_b1']:>14.3f}{row['int8_s8s8_over_fp32_b1']:>14.3f}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
