"""Which ops ONNX Runtime runs for a QAT int8 graph, per quantization recipe, and how fast.

For each recipe (``x86``, ``onnx``) and each ResNet size: prepare for QAT, calibrate the fake-quantizers on
random images (latency and graph layout do not depend on training), convert, export the QDQ graph, let
ONNX Runtime optimise it, count the op types it will run, and time it at batch 1 against the fp32 export
in the same run. PTQ (``onnxruntime.quantization``) is the reference layout.

Run: ``python benchmarks/qat_layout.py [--runs 200]``. Writes ``benchmarks/qat_layout.json``.
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

from kdsearch.export import export_onnx, latency_ms, ort_session, quantize_ptq
from kdsearch.models.resnet_cifar import ResNetCifar
from kdsearch.quant.pt2e import convert, prepare_for_qat

SIZES = [("student of runs/quick", [8, 7, 4], [8, 8, 16], 1, 28), ("resnet20", [3, 3, 3], [16, 32, 64], 3, 32),
         ("resnet20 wide x2", [3, 3, 3], [32, 64, 128], 3, 32)]
RUN_OPS = ("QLinearConv", "QLinearAdd", "FusedConv", "Conv", "Transpose", "QuantizeLinear", "DequantizeLinear")


def ort_ops(path: Path, tmp: Path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp / f"{path.stem}.opt.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return {op: counts.get(op, 0) for op in RUN_OPS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, dict] = {}
    for name, depths, widths, channels, size in SIZES:
        model = ResNetCifar(depths, widths, in_channels=channels).eval()
        images = torch.randn(64, channels, size, size)
        row: dict[str, dict] = {}
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            files = {"fp32": export_onnx(model, images[:2], tmp / "fp32.onnx")}
            files["ptq"] = quantize_ptq(files["fp32"], tmp / "ptq.onnx", images.numpy(), activations="uint8")
            for recipe in ("x86", "onnx"):
                prepared = prepare_for_qat(ResNetCifar(depths, widths, in_channels=channels).train(), images[:2], recipe)
                prepared.load_state_dict(model.state_dict(), strict=False)
                with torch.no_grad():
                    for i in range(0, 64, 16):
                        prepared(images[i:i + 16])  # observers see data
                files[f"qat {recipe}"] = export_onnx(convert(prepared), images[:2], tmp / f"qat_{recipe}.onnx")
            for label, path in files.items():
                session, _ = ort_session(path, "cpu")
                row[label] = {"p50_ms_b1": latency_ms(session, (1, channels, size, size), runs=args.runs)["p50"],
                              "size_kb": round(path.stat().st_size / 1024, 1), "ops": ort_ops(path, tmp)}
        base = row["fp32"]["p50_ms_b1"]
        for r in row.values():
            r["ratio_vs_fp32"] = round(r["p50_ms_b1"] / base, 3)
        results[name] = row
        print(f"\n{name}")
        print(f"{'':12s} {'p50 b1 ms':>10s} {'/fp32':>7s} {'KB':>7s}  ops ONNX Runtime runs")
        for label, r in row.items():
            ops = ", ".join(f"{k} {v}" for k, v in r["ops"].items() if v)
            print(f"{label:12s} {r['p50_ms_b1']:10.3f} {r['ratio_vs_fp32']:7.3f} {r['size_kb']:7.1f}  {ops}")
    out = Path(__file__).with_name("qat_layout.json")
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                               "onnxruntime": ort.__version__, "runs": args.runs, "results": results}, indent=2))


if __name__ == "__main__":
    main()
