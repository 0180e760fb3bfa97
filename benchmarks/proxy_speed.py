"""How fast is each proxy, relative to one training step of the candidate it scores?

For resnet_cifar candidates (3 stages, depths 1..9, widths from 8..64) on one fixed batch:
ratio = (time to score one candidate) / (time of one forward+backward of that candidate on
the same batch), averaged over candidates, and candidates/s over the sweep. The teacher's
statistics are computed once, as in a search. ``diswot_reference`` (a real CE backward through
teacher and student, teacher recomputed every time) is timed on a few candidates as the
baseline the fast ``diswot`` is held to (target ≤ 0.5×).

Data: the first ``--batch`` Fashion-MNIST training images (28×28×1) when the Debian package
``dataset-fashion-mnist`` is installed, seeded random 32×32×3 tensors otherwise; with
``--image-size N``, seeded random N×N RGB tensors (photos' size: ``--image-size 224``).

At photo sizes, ``--teacher resnet18`` (the zoo's ImageNet-layout ResNet-18, fresh weights,
11.2M params) and ``--space mbconv`` (candidates sampled from that built-in space at the image
size, so in its ImageNet form) measure what a user's search pays (issue 14: diswot ≤ 0.5×):

    python benchmarks/proxy_speed.py --candidates 60 --json benchmarks/proxy_speed.json
    python benchmarks/proxy_speed.py --image-size 224 --teacher resnet18 --space mbconv --batch 16 \
        --candidates 10 --proxies diswot,params,flops --reference-candidates 2 --json benchmarks/proxy_speed_224.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsearch.models.resnet_cifar import ResNetCifar  # noqa: E402
from kdsearch.models.zoo import create_model  # noqa: E402
from kdsearch.proxies import PROXIES, create_proxy, diswot_reference, teacher_stats  # noqa: E402
from kdsearch.spaces import load_space  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
TEACHERS = {"resnet56": 9, "resnet110": 18}  # CIFAR form: blocks per stage, widths 16, 32, 64
ZOO_TEACHERS = ("resnet18",)  # built by the zoo (ImageNet layout: 7x7/2 stem + max-pool, 4 stages)
DEPTHS = range(1, 10)
WIDTHS = [8, 16, 24, 32, 48, 64]


def read_idx(path: Path) -> torch.Tensor:
    """Read a gzipped idx file (Fashion-MNIST layout: big-endian dims, uint8 data)."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def load_batch(n: int, seed: int, image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    if image_size is not None:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 3, image_size, image_size, generator=g)  # (N, 3, S, S)
        return x, torch.randint(0, 10, (n,), generator=g), f"random normal {image_size}x{image_size}x3"
    images, labels = FASHION / "train-images-idx3-ubyte.gz", FASHION / "train-labels-idx1-ubyte.gz"
    if images.exists() and labels.exists():
        x = read_idx(images)[:n].float().div(255).sub(0.2860).div(0.3530).unsqueeze(1)  # (N, 1, 28, 28)
        return x, read_idx(labels)[:n].long(), "fashion-mnist 28x28x1 (first images of the train split)"
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)  # (N, 3, 32, 32)
    return x, torch.randint(0, 10, (n,), generator=g), "random normal 32x32x3"


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best of ``repeats`` wall times of ``fn``, synchronising CUDA around each."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--teacher", choices=sorted([*TEACHERS, *ZOO_TEACHERS]), default="resnet56")
    parser.add_argument("--space", default=None,
                        help="sample candidates from this built-in space at the image size (default: the resnet_cifar "
                             "genes above, CIFAR form)")
    parser.add_argument("--image-size", type=int, default=None, help="random RGB images of this side (e.g. 224)")
    parser.add_argument("--proxies", default=",".join(PROXIES.names()), help="comma-separated names")
    parser.add_argument("--reference-candidates", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings per measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()

    device = torch.device(args.device)
    x, y, data = load_batch(args.batch, args.seed, args.image_size)
    x, y = x.to(device), y.to(device)
    batch = (x, y)
    channels = x.shape[1]
    torch.manual_seed(args.seed)
    if args.teacher in ZOO_TEACHERS:
        teacher = create_model(args.teacher, num_classes=10, in_channels=channels).to(device)
    else:
        n = TEACHERS[args.teacher]
        teacher = ResNetCifar([n, n, n], [16, 32, 64], in_channels=channels).to(device)

    names = [s for s in args.proxies.split(",") if s]
    proxies = {name: create_proxy(name) for name in names}
    start = time.perf_counter()
    stats = teacher_stats(proxies, teacher, batch)
    stats_s = time.perf_counter() - start

    rng = random.Random(args.seed)
    if args.space:
        space, size = load_space(args.space), tuple(x.shape[-2:])
        archs = [space.sample(rng, size) for _ in range(args.candidates)]
        described = f"{args.space} ({archs[0].form} form at {size[0]} px)"

        def build(i: int) -> torch.nn.Module:
            return space.build(archs[i], num_classes=10, in_channels=channels)
    else:
        genes = [
            ([rng.choice(DEPTHS) for _ in range(3)], [rng.choice(WIDTHS) for _ in range(3)])
            for _ in range(args.candidates)
        ]
        described = "resnet_cifar (depths 1-9, widths 8-64)"

        def build(i: int) -> torch.nn.Module:
            return ResNetCifar(*genes[i], in_channels=channels)
    warm = build(0).to(device)
    for proxy in proxies.values():  # first-call costs (lazy imports, allocator) are not per-candidate
        proxy.score(warm, batch, stats[proxy.name])
    train_step(warm, x, y)

    ratios: dict[str, list[float]] = {name: [] for name in names}
    seconds: dict[str, float] = {name: 0.0 for name in names}
    step_times: list[float] = []
    ref_ratios: list[float] = []
    for i in range(args.candidates):
        torch.manual_seed(args.seed + i)
        student = build(i).to(device)
        step = timed(lambda: train_step(student, x, y), device, args.repeats)
        step_times.append(step)
        for name, proxy in proxies.items():
            t = timed(lambda: proxy.score(student, batch, stats[name], seed=i), device, args.repeats)
            ratios[name].append(t / step)
            seconds[name] += t
        if i < args.reference_candidates:
            t = timed(lambda: diswot_reference(teacher, student, batch), device, args.repeats)
            ref_ratios.append(t / step)
        print(f"\r{i + 1}/{args.candidates} candidates", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    rows = {
        name: {
            "ratio_mean": statistics.fmean(ratios[name]),
            "ratio_median": statistics.median(ratios[name]),
            "candidates_per_s": args.candidates / seconds[name],
        }
        for name in names
    }
    result = {
        "data": data,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "teacher": args.teacher,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "candidates_from": described,
        "batch": args.batch,
        "candidates": args.candidates,
        "load_average": os.getloadavg(),
        "teacher_stats_s": stats_s,
        "train_step_s_mean": statistics.fmean(step_times),
        "proxies": rows,
        "diswot_reference": {
            "candidates": len(ref_ratios),
            "ratio_mean": statistics.fmean(ref_ratios) if ref_ratios else None,
            "ratio_median": statistics.median(ref_ratios) if ref_ratios else None,
        },
    }

    print(f"data: {data}; teacher {args.teacher}; batch {args.batch}; {args.candidates} candidates of {described} "
          f"on {device}")
    print(f"teacher stats (once): {stats_s:.3f} s; mean fwd+bwd of a candidate: {result['train_step_s_mean']:.4f} s")
    print(f"{'proxy':<18}{'ratio mean':>12}{'ratio median':>14}{'cand/s':>10}")
    for name, row in rows.items():
        print(f"{name:<18}{row['ratio_mean']:>12.3f}{row['ratio_median']:>14.3f}{row['candidates_per_s']:>10.2f}")
    if ref_ratios:
        ref = result["diswot_reference"]
        print(f"{'diswot_reference':<18}{ref['ratio_mean']:>12.3f}{ref['ratio_median']:>14.3f}{'':>10}"
              f"  (first {len(ref_ratios)} candidates)")
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
