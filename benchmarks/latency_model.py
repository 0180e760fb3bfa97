"""Latency model: predicted against measured ONNX Runtime latency of random candidates.

For each space, input size and batch: start a latency table (:class:`LatencyModel.for_space`, in a
fresh cache directory, so its one-time cost is counted), sample ``--candidates`` archs (seeded),
predict each (parts not yet in the table are timed then: that is part of the table's cost), then
export and time each candidate for real in ONNX Runtime (1 intra-op thread, after a warm-up,
median of the runs, on the same clock as the table: the calling thread's CPU time, which is the
latency on an idle core; on this shared machine the wall clock swings by several times with other
processes' load, so it is recorded beside it but not compared). Reported: the fraction of
candidates predicted within ±10 %, Spearman's rank correlation, the median absolute error, the
table's cost, and what one prediction costs against one DisWOT scoring of the same candidate
(teacher statistics computed once, as in a search; proxy batch 64 images at 28 px, 16 at 224 px).
The repeatability of the real timing itself (a second timing of each candidate) shows the floor
no model can beat here.

    python benchmarks/latency_model.py --json benchmarks/latency_model.json
    python benchmarks/latency_model.py --sizes 224 --batches 32 --json benchmarks/latency_model.json  # adds a row
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsearch.export.latency_model import LatencyModel  # noqa: E402
from kdsearch.export.timing import interleaved_latency_ms, probe_session  # noqa: E402
from kdsearch.proxies import create_proxy, score_candidate, teacher_stats  # noqa: E402
from kdsearch.spaces import load_space  # noqa: E402
from kdsearch.spaces.candidates import build_candidate  # noqa: E402

CHANNELS = {28: 1, 224: 3}  # Fashion-MNIST-like at 28 px, photos at 224 px
PROXY_BATCH = {28: 64, 224: 16}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def real_ms(space, arch, chw, batch: int, runs: int) -> tuple[float, float, float]:
    """(thread-clock median, a second thread-clock median, wall-clock median) of the whole candidate."""
    session = probe_session(space.build(arch, num_classes=10, in_channels=chw[0]), chw, threads=1)
    warmup = 3 if batch == 1 else 1
    first = interleaved_latency_ms({"m": session}, (batch, *chw), runs=runs, warmup=warmup, clock="thread")["m"]["p50"]
    again = interleaved_latency_ms({"m": session}, (batch, *chw), runs=runs, warmup=0, clock="thread")["m"]["p50"]
    wall = interleaved_latency_ms({"m": session}, (batch, *chw), runs=runs, warmup=0, clock="wall")["m"]["p50"]
    return first, again, wall


def diswot_seconds(space, archs, size: int, chw, repeats: int = 3) -> float:
    """Median seconds of one DisWOT scoring of a candidate (building it included, as the search does)."""
    g = torch.Generator().manual_seed(0)
    n = PROXY_BATCH[size]
    batch = (torch.randn(n, *chw, generator=g), torch.randint(0, 10, (n,), generator=g))
    teacher = space.build(space.teacher(size), num_classes=10, in_channels=chw[0])
    proxies = {"diswot": create_proxy("diswot")}
    stats = teacher_stats(proxies, teacher, batch)
    times = []
    for arch in archs:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            student = build_candidate(space, arch, 10, chw[0], 0)
            score_candidate(student, batch, proxies, stats)
            best = min(best, time.perf_counter() - t0)
        times.append(best)
    return statistics.median(times)


def sample_archs(space, size: int, candidates: int, seed: int) -> list:
    """``candidates`` distinct archs of ``space`` at ``size`` px, drawn in order from ``random.Random(seed)``."""
    rng = random.Random(seed)
    archs, seen = [], set()
    while len(archs) < candidates:
        arch = space.sample(rng, size)
        if arch.key not in seen:
            seen.add(arch.key)
            archs.append(arch)
    return archs


def one_row(space_name: str, size: int, batch: int, candidates: int, seed: int, runs: int, diswot_n: int) -> dict:
    space = load_space(space_name)
    chw = (CHANNELS[size], size, size)
    archs = sample_archs(space, size, candidates, seed)
    with tempfile.TemporaryDirectory() as cache:
        c0, t0 = time.process_time(), time.perf_counter()
        model = LatencyModel.for_space(space, num_classes=10, in_channels=chw[0], image_size=(size, size),
                                       batch=batch, threads=1, cache_dir=Path(cache))
        start_s, start_cpu = time.perf_counter() - t0, time.process_time() - c0
        c0, t0 = time.process_time(), time.perf_counter()
        predicted = [model.predict_ms(a) for a in archs]
        fill_s, fill_cpu = time.perf_counter() - t0, time.process_time() - c0
        parts = len(model.parts)
        calibration = {k: v for k, v in model.calibration.items() if k != "archs"}
        # a prediction from the table on disk (what every trial pays once the table holds its parts)
        loaded = LatencyModel.for_space(space, num_classes=10, in_channels=chw[0], image_size=(size, size),
                                        batch=batch, threads=1, cache_dir=Path(cache))
        t0 = time.perf_counter()
        again = [loaded.predict_ms(a) for a in archs]
        predict_s = (time.perf_counter() - t0) / len(archs)
        assert again == predicted
    measured, repeat, wall = [], [], []
    for arch in archs:
        m, r, w = real_ms(space, arch, chw, batch, runs)
        measured.append(m)
        repeat.append(r)
        wall.append(w)
    err = np.divide(predicted, measured) - 1
    rep_err = np.divide(repeat, measured) - 1
    diswot_s = diswot_seconds(space, archs[:diswot_n], size, chw)
    return {
        "space": space_name, "image_size": size, "in_channels": chw[0], "batch": batch, "threads": 1,
        "candidates": len(archs), "real_runs": runs, "seed": seed,
        "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
        "spearman": spearman(predicted, measured),
        "median_abs_error": float(np.median(np.abs(err))),
        "max_abs_error": float(np.max(np.abs(err))),
        "repeat_within_10pct": float(np.mean(np.abs(rep_err) <= 0.10)),
        "repeat_median_abs_error": float(np.median(np.abs(rep_err))),
        "table": {"start_s": start_s, "start_cpu_s": start_cpu, "fill_s": fill_s, "fill_cpu_s": fill_cpu,
                  "total_s": start_s + fill_s, "total_cpu_s": start_cpu + fill_cpu, "parts": parts,
                  "calibration": calibration},
        "predict_ms_from_table": predict_s * 1e3,
        "diswot_ms": diswot_s * 1e3,
        "predict_over_diswot": predict_s / diswot_s,
        "amortised_predict_over_diswot": (predict_s + (start_s + fill_s) / len(archs)) / diswot_s,
        "candidates_detail": [{"arch": a.key, "predicted_ms": p, "measured_ms": m, "repeat_ms": r, "wall_ms": w}
                              for a, p, m, r, w in zip(archs, predicted, measured, repeat, wall)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", default="resnet_cifar,mbconv")
    ap.add_argument("--sizes", default="28,224")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per real timing at batch 1 (batch 32: a quarter, >= 3)")
    ap.add_argument("--diswot-candidates", type=int, default=10)
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("latency_model.json"))
    args = ap.parse_args()
    doc = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": []}
    doc.update({"command": "python " + " ".join(sys.argv),
                "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "node": platform.node(),
                            "shared": "2 CPU cores shared with other processes (load average recorded per row)"},
                "clock": "thread CPU time of the calling thread (ORT with 1 intra-op thread computes on it)"})
    print(f"{'space':13s} {'px':>4s} {'B':>3s} {'±10%':>6s} {'rho':>6s} {'med|e|':>7s} {'rep±10%':>8s} "
          f"{'table s (cpu s)':>16s} {'predict ms':>10s} {'diswot ms':>10s} {'ratio':>7s}")
    for space_name in args.spaces.split(","):
        for size in map(int, args.sizes.split(",")):
            for batch in map(int, args.batches.split(",")):
                runs = args.runs if batch == 1 else max(3, args.runs // 4)
                load_before = os.getloadavg()
                row = one_row(space_name, size, batch, args.candidates, args.seed, runs, args.diswot_candidates)
                row["loadavg_before"], row["loadavg_after"] = list(load_before), list(os.getloadavg())
                row["command"] = doc["command"]
                doc["rows"] = [r for r in doc["rows"] if (r["space"], r["image_size"], r["batch"]) !=
                               (space_name, size, batch)] + [row]
                tmp = args.json.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(doc, indent=1))
                os.replace(tmp, args.json)
                t = row["table"]
                print(f"{space_name:13s} {size:4d} {batch:3d} {row['within_10pct']:6.0%} {row['spearman']:6.3f} "
                      f"{row['median_abs_error']:7.1%} {row['repeat_within_10pct']:8.0%} "
                      f"{t['total_s']:7.1f} ({t['total_cpu_s']:5.1f}) {row['predict_ms_from_table']:10.2f} "
                      f"{row['diswot_ms']:10.1f} {row['predict_over_diswot']:7.3f}", flush=True)


if __name__ == "__main__":
    main()
