"""How close the training engine's memory estimate comes to the memory a real run takes (CPU).

Each case runs in a fresh process: a synthetic RGB dataset, then ``train()`` for one epoch with
``--max-memory 100GB`` so nothing is split, evaluating a validation set of 512 images at the
default ``eval_batch_size`` (512), and in the last case caching the teacher's logits and feature
maps for the whole training set (``--cache-teacher`` with a feature loss). *step* is one training
step at the batch as the engine estimated it (``memory_estimate_bytes``: the probe at 2 and 4
images, extrapolated, times ``CPU_SLACK``); *run* is the engine's estimate of the most the run
holds at once (``run_memory_estimate_bytes``: the larger of the step and an evaluation pass, each
with the teacher cache and, for evaluation, the step's gradients and optimizer state); *measured*
is the peak RSS of the process during ``train()`` above its RSS before (``VmHWM`` after resetting
it through ``/proc/self/clear_refs``), which is what the kernel's OOM killer counts.
ratio = run / measured: above 1 is the safe side.

    python benchmarks/memory_estimate.py --json benchmarks/memory_estimate.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VAL = 512  # validation images, evaluated at the default eval_batch_size of 512
CASES = [  # student, teacher (None: plain training), image px, batch, training images, loss, cache the teacher
    ("resnet20", None, 64, 64, 64, "ce", False),
    ("resnet56", None, 96, 32, 32, "ce", False),
    ("resnet8", "resnet20", 64, 128, 128, "kd:1,ce:1", False),
    ("resnet8", "resnet20", 64, 128, 1024, "kd:1,ce:1,at:1", True),
]


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def run_case(student: str, teacher: str | None, px: int, batch: int, n_train: int, loss: str, cache: bool) -> dict:
    import torch

    from kdsearch.data.dataset import Augment, Dataset, ImageSet
    from kdsearch.distill.config import TrainConfig
    from kdsearch.distill.trainer import train
    from kdsearch.models.zoo import create_model

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_train + VAL, 3, px, px), dtype=torch.uint8, generator=g)
    labels = torch.arange(n_train + VAL) % 10
    data = Dataset("synthetic", ImageSet(images[:n_train], labels[:n_train]),
                   ImageSet(images[n_train:], labels[n_train:]), None, tuple(str(i) for i in range(10)),
                   (0.5,) * 3, (0.25,) * 3, Augment())
    config = TrainConfig(epochs=1, batch_size=batch, loss=loss, augment=False, cache_teacher=cache,
                         max_memory="100GB", device="cpu")
    model = create_model(student, 10, 3)
    t = create_model(teacher, 10, 3) if teacher else None
    with tempfile.TemporaryDirectory() as out:
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        result = train(model, data, Path(out), config, teacher=t)
        measured = _status("VmHWM") - before
    entry = result["history"][-1]
    name = f"{student}{' ← ' + teacher if teacher else ''} {px}px b{batch} ({loss}{', cached' if cache else ''})"
    return {"case": name, "train_images": n_train, "val_images": VAL, "eval_batch": entry["eval_batch"],
            "teacher_cache": entry.get("teacher_cache"), "teacher_cache_mb": entry.get("teacher_cache_bytes", 0) / 1e6,
            "step_estimate_mb": entry["memory_estimate_bytes"] / 1e6,
            "run_estimate_mb": entry["run_memory_estimate_bytes"] / 1e6, "measured_mb": measured / 1e6,
            "ratio": entry["run_memory_estimate_bytes"] / measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # run one case in this process
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(run_case(*CASES[args.case])))
        return
    rows = []
    for i in range(len(CASES)):
        done = subprocess.run([sys.executable, __file__, "--case", str(i)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'case':50} {'eval batch':>10} {'cache MB':>9} {'step MB':>8} {'run MB':>8} {'measured MB':>12} "
          f"{'ratio':>6}")
    for r in rows:
        print(f"{r['case']:50} {r['eval_batch']:10d} {r['teacher_cache_mb']:9.0f} {r['step_estimate_mb']:8.0f} "
              f"{r['run_estimate_mb']:8.0f} {r['measured_mb']:12.0f} {r['ratio']:6.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
