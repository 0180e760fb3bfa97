"""Deployment latency: PyTorch eager vs ONNX Runtime fp32 vs int8 PTQ (U8S8 and S8S8 activations).

Ratios are against PyTorch eager fp32 measured in the same run. Random weights and inputs:
latency does not depend on them. Run: ``python benchmarks/deploy.py [--provider cuda]``.
Writes ``benchmarks/deploy.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from kdsearch.export import export_onnx, latency_ms, ort_session, quantize_ptq, torch_latency_ms
from kdsearch.models.resnet_cifar import ResNetCifar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--batches", default="1,32")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    torch.manual_seed(0)
    model = ResNetCifar([3, 3, 3], [16, 32, 64]).eval()  # ResNet-20
    calib = torch.randn(64, 3, 32, 32).numpy()  # (N, C, H, W)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, torch.randn(2, 3, 32, 32), Path(tmp) / "fp32.onnx")
        files = {
            "ort fp32": fp32,
            "ort int8 U8S8": quantize_ptq(fp32, Path(tmp) / "u8.onnx", calib, activations="uint8"),
            "ort int8 S8S8": quantize_ptq(fp32, Path(tmp) / "s8.onnx", calib, activations="int8"),
        }
        device = "cuda" if args.provider != "cpu" and torch.cuda.is_available() else "cpu"
        rows["pytorch eager fp32"] = {
            f"batch_{b}": torch_latency_ms(model.to(device), (b, 3, 32, 32), runs=args.runs)["p50"] for b in batches
        }
        used = {}
        for label, path in files.items():
            session, used[label] = ort_session(path, args.provider)
            rows[label] = {f"batch_{b}": latency_ms(session, (b, 3, 32, 32), runs=args.runs)["p50"] for b in batches}

    base = rows["pytorch eager fp32"]
    print(f"{'p50 ms (speed-up vs eager)':<22}" + "".join(f"{'batch ' + str(b):>22}" for b in batches))
    for label, row in rows.items():
        cells = "".join(f"{row[f'batch_{b}']:>12.3f} ({base[f'batch_{b}'] / row[f'batch_{b}']:5.2f}x)" for b in batches)
        print(f"{label:<22}{cells}")
    result = {
        "model": "ResNetCifar([3,3,3],[16,32,64]) 32x32",
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "provider_used": used,
        "runs": args.runs,
        "p50_ms": rows,
    }
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
