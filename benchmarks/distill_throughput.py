"""Distillation throughput: kdsearch's trainer against a plain PyTorch KD loop, in one run.

Same data (a Fashion-MNIST subset, 28×28×1, no augmentation in all four so the comparison is
fair and --cache-teacher applies), same student (resnet_cifar, depths [1,1,1], widths
[16,32,64]), same teacher (ResNet56, 16/32/64 wide, 9 blocks a stage; untrained weights —
throughput does not depend on them), same batch size and optimizer:

  (a) plain   a textbook KD loop written here: teacher forward every step under no_grad,
              fp32, NCHW, KL(T=4)·T² + CE, SGD;
  (b) kdsearch ``train()`` with the defaults (``kd:1,ce:1``, live teacher);
  (c) cache   the same with ``cache_teacher=True``: the teacher runs once, before epoch 1;
  (d) student the student alone, no teacher (``loss="ce"``): the ceiling for (c).

Images/s is the last epoch's training throughput (evaluation excluded in all four; epoch 1
is warm-up). For (c) the one-off teacher pass is reported separately and folded into an
end-to-end figure over the run's epochs. Targets on CPU: (c)/(a) ≥ 1.5 and (c)/(d) ≥ 0.85.

``--device cuda`` runs all four on the GPU (kdsearch's trainer then uses its CUDA defaults, AMP
and channels_last; the plain loop stays fp32 NCHW, as a tutorial writes it). ``--data`` and
``--image-size`` take other data (e.g. a photo folder at 224 px); from 64 px the student is the
same genes in the ImageNet form and the teacher the zoo's ``resnet18``.

    python benchmarks/distill_throughput.py --subset 10000 --epochs 2 --json benchmarks/distill_throughput.json
    python benchmarks/distill_throughput.py --data imagefolder:DIR --image-size 224 --device cuda --json OUT.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsearch.data import load_dataset, normalize  # noqa: E402
from kdsearch.distill.config import TrainConfig  # noqa: E402
from kdsearch.distill.trainer import train  # noqa: E402
from kdsearch.models.resnet_cifar import ResNetCifar  # noqa: E402
from kdsearch.models.zoo import create_model  # noqa: E402

STUDENT = {"depths": [1, 1, 1], "widths": [16, 32, 64]}


def _student(in_channels: int, num_classes: int, form: str = "cifar") -> ResNetCifar:
    torch.manual_seed(0)
    return ResNetCifar(STUDENT["depths"], STUDENT["widths"], num_classes=num_classes, in_channels=in_channels,
                       form=form)


def plain_kd_loop(student, teacher, dataset, *, epochs: int, batch_size: int, lr: float, T: float = 4.0,
                  device: torch.device = torch.device("cpu")) -> list[float]:
    """The baseline: a KD loop as a tutorial writes it. Returns images/s per epoch."""
    images, labels = dataset.train.images, dataset.train.labels
    student, teacher = student.to(device), teacher.to(device)
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    teacher.eval()
    g = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(epochs):
        student.train()
        perm = torch.randperm(len(images), generator=g)
        seen, t0 = 0, time.perf_counter()
        for start in range(0, len(perm) - batch_size + 1, batch_size):
            idx = perm[start : start + batch_size]
            x = normalize(images[idx].to(device), dataset.mean, dataset.std)  # (B, C, H, W)
            y = labels[idx].to(device)  # (B,)
            with torch.no_grad():
                t_logits = teacher(x)  # (B, K)
            s_logits = student(x)  # (B, K)
            kd = F.kl_div(F.log_softmax(s_logits / T, 1), F.log_softmax(t_logits / T, 1), reduction="batchmean",
                          log_target=True) * T * T
            loss = kd + F.cross_entropy(s_logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def _trainer(student, teacher, dataset, config: TrainConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(student, dataset, Path(tmp), config, teacher=teacher)
        wall = time.perf_counter() - t0
    rates = [h["images_per_s"] for h in result["history"]]
    return {"images_per_s": rates[-1], "per_epoch": rates, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", type=int, default=10_000, help="training images")
    parser.add_argument("--data", default="fashion-mnist", help="dataset spec, e.g. imagefolder:DIR")
    parser.add_argument("--image-size", type=int, default=None, help="square side to bring images to (e.g. 224)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per variant; the last one is reported")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dataset = load_dataset(args.data, subset=args.subset, seed=0, image_size=args.image_size)
    form = "imagenet" if min(dataset.image_size) >= 64 else "cifar"  # the spaces' rule
    teacher_name = "resnet18" if form == "imagenet" else "resnet56"
    k, c = dataset.num_classes, dataset.in_channels
    teacher = create_model(teacher_name, num_classes=k, in_channels=c).eval().to(device)
    lr = 0.1 * args.batch_size / 128
    base = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, augment=False, device=args.device, seed=0)
    load_before = os.getloadavg()

    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    rates = plain_kd_loop(_student(c, k, form), teacher, dataset, epochs=args.epochs, batch_size=args.batch_size,
                          lr=lr, device=device)
    results["a_plain_kd_loop"] = {"images_per_s": rates[-1], "per_epoch": rates, "wall_s": time.perf_counter() - t0}
    results["b_kdsearch_defaults"] = _trainer(_student(c, k, form), teacher, dataset, base)
    cached = TrainConfig(**{**base.__dict__, "cache_teacher": True})
    t_cache = time.perf_counter()
    with torch.inference_mode():  # the one-off teacher pass, timed alone
        chunk = 512 if form == "cifar" else 64  # 64 photos at 224 px already take ~0.5 GB of activations
        for start in range(0, len(dataset.train), chunk):
            teacher(normalize(dataset.train.images[start : start + chunk].to(device), dataset.mean, dataset.std))
        if device.type == "cuda":
            torch.cuda.synchronize()
    cache_s = time.perf_counter() - t_cache
    results["c_cache_teacher"] = _trainer(_student(c, k, form), teacher, dataset, cached)
    results["c_cache_teacher"]["teacher_pass_s"] = cache_s
    n = (len(dataset.train) // args.batch_size) * args.batch_size
    results["c_cache_teacher"]["end_to_end_images_per_s"] = (
        n * args.epochs / (cache_s + n * args.epochs / results["c_cache_teacher"]["images_per_s"])
    )
    results["d_student_alone"] = _trainer(_student(c, k, form), None, dataset,
                                          TrainConfig(**{**base.__dict__, "loss": "ce"}))
    load_after = os.getloadavg()

    a, b, cc, d = (results[x]["images_per_s"] for x in ("a_plain_kd_loop", "b_kdsearch_defaults", "c_cache_teacher",
                                                           "d_student_alone"))
    ratios = {"b/a": b / a, "c/a": cc / a, "c/d": cc / d, "d/a": d / a}
    print(f"{'variant':<22}{'images/s':>10}   per epoch")
    for name, r in results.items():
        print(f"{name:<22}{r['images_per_s']:>10.0f}   {', '.join(f'{x:.0f}' for x in r['per_epoch'])}")
    print(f"(c) teacher pass {cache_s:.1f} s once; end to end over {args.epochs} epochs "
          f"{results['c_cache_teacher']['end_to_end_images_per_s']:.0f} images/s")
    for key, value in ratios.items():
        print(f"{key:>5} = {value:.2f}")
    print(f"targets: c/a >= 1.5 {'met' if ratios['c/a'] >= 1.5 else 'MISSED'}, "
          f"c/d >= 0.85 {'met' if ratios['c/d'] >= 0.85 else 'MISSED'}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads")
    out = {
        "setup": {"data": f"{args.data} subset {args.subset} (no augmentation)", "image_size": list(dataset.image_size),
                  "student": {**STUDENT, "form": form}, "teacher": f"{teacher_name} (untrained)",
                  "epochs": args.epochs, "batch_size": args.batch_size,
                  "threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device),
                  "load_average_before": load_before, "load_average_after": load_after},
        "results": results,
        "ratios": ratios,
    }
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
