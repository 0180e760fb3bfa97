"""The latency model's combination with and without the clamp, from one table: how far it moves predictions.

The table sums, for each part (stem, block, head), its time beyond one empty session call, clamped at
zero, and adds one call. Without the clamp a part timed under an empty call (a few µs) would subtract
time. This builds one table per space at 28 px, batch 1 (a fresh cache), predicts the same 50 seeded
candidates as ``latency_model.py`` both ways (the unclamped way with its own fitted scale) and reports the
relative difference of the two predictions. No real timing: the difference is the model's, not the clock's.

    OMP_NUM_THREADS=1 python benchmarks/latency_clamp.py --json benchmarks/latency_clamp.json
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kdsearch.export import latency_model as lm  # noqa: E402
from kdsearch.files import write_json  # noqa: E402
from kdsearch.spaces import load_space  # noqa: E402
from latency_model import sample_archs  # noqa: E402


def one_space(name: str, candidates: int, seed: int) -> dict:
    space, chw = load_space(name), (1, 28, 28)
    archs = sample_archs(space, 28, candidates, seed)  # the same draw as latency_model.py
    with tempfile.TemporaryDirectory() as cache:
        model = lm.LatencyModel.for_space(space, num_classes=10, in_channels=1, image_size=(28, 28), batch=1,
                                          threads=1, cache_dir=Path(cache))
        clamped = [model.predict_ms(a) for a in archs]
    signatures = {}
    for arch in archs + lm._calibration_archs(space, (28, 28), 10, 1):
        with lm._meta_build():
            meta = space.build(arch, num_classes=10, in_channels=1)
        signatures[arch.key] = [p.signature for p in lm._decompose(meta, chw)]
    c, parts = model.calibration, model.parts

    def unclamped_sum(key: str) -> float:
        s = signatures[key]
        return max(sum(parts[p] for p in s) + c["intercept_ms"] - c["per_part_ms"] * len(s), 1e-3)

    scale = float(np.median(np.divide(c["measured_ms"], [unclamped_sum(k) for k in c["archs"]])))
    unclamped = [scale * unclamped_sum(a.key) for a in archs]
    diff = np.divide(clamped, unclamped) - 1
    return {"space": name, "candidates": candidates, "seed": seed, "call_ms": c["per_part_ms"], "parts": len(parts),
            "parts_under_one_call": sum(v < c["per_part_ms"] for v in parts.values()),
            "scale_clamped": c["scale"], "scale_unclamped": scale,
            "median_abs_difference": float(np.median(np.abs(diff))), "max_abs_difference": float(np.max(np.abs(diff)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", default="resnet_cifar,mbconv")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = [one_space(name, args.candidates, args.seed) for name in args.spaces.split(",")]
    for r in rows:
        print(f"{r['space']:13s} call {1e3 * r['call_ms']:.1f} µs, {r['parts_under_one_call']} of {r['parts']} parts "
              f"under it; clamped vs unclamped prediction: median {r['median_abs_difference']:.2%}, "
              f"worst {r['max_abs_difference']:.2%}")
    if args.json:
        write_json(args.json, {"command": "python benchmarks/latency_clamp.py " + " ".join(sys.argv[1:]),
                               "machine": {"cpus": os.cpu_count(), "cpu": lm.cpu_model(),
                                           "loadavg_at_end": list(os.getloadavg())}, "rows": rows})


if __name__ == "__main__":
    main()
