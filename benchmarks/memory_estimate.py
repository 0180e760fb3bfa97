"""How close the training engine's memory estimate comes to the memory a real step takes (CPU).

Each case runs in a fresh process: a synthetic RGB dataset of exactly one batch, then
``fit()`` for one epoch (one step, evaluation on 8 images) with ``--max-memory 100GB`` so
nothing is split. *estimate* is what the engine recorded (``memory_estimate_bytes``: the
probe at 2 and 4 images, extrapolated, times ``CPU_SLACK``); *live* is the same without the
slack; *measured* is the peak RSS of the process during ``fit()`` above its RSS before
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``), which is what the kernel's
OOM killer counts. ratio = estimate / measured: above 1 is the safe side.

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

CASES = [  # student, teacher (None: plain training), image px, batch
    ("resnet20", None, 64, 64),
    ("resnet56", None, 96, 32),
    ("resnet8", "resnet20", 64, 128),
]


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def run_case(student: str, teacher: str | None, px: int, batch: int) -> dict:
    import torch

    from kdsearch.data.dataset import Augment, Dataset, ImageSet
    from kdsearch.distill.config import TrainConfig
    from kdsearch.distill.engine import build_criterion, fit
    from kdsearch.memory import CPU_SLACK
    from kdsearch.models.zoo import create_model

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch + 8, 3, px, px), dtype=torch.uint8, generator=g)
    labels = torch.arange(batch + 8) % 10
    data = Dataset("synthetic", ImageSet(images[:batch], labels[:batch]), ImageSet(images[batch:], labels[batch:]),
                   None, tuple(str(i) for i in range(10)), (0.5,) * 3, (0.25,) * 3, Augment())
    config = TrainConfig(epochs=1, batch_size=batch, loss="kd:1,ce:1" if teacher else "ce", augment=False,
                         eval_batch_size=8, max_memory="100GB")
    model = create_model(student, 10, 3)
    t = create_model(teacher, 10, 3) if teacher else None
    with tempfile.TemporaryDirectory() as out:
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        result = fit(model, build_criterion(config), data, Path(out), config, teacher=t, settings={},
                     device=torch.device("cpu"))
        measured = _status("VmHWM") - before
    estimate = result["history"][-1]["memory_estimate_bytes"]
    return {"case": f"{student}{' ← ' + teacher if teacher else ''} {px}px b{batch}", "estimate_mb": estimate / 1e6,
            "live_mb": estimate / CPU_SLACK / 1e6, "measured_mb": measured / 1e6, "ratio": estimate / measured}


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
    print(f"{'case':34} {'estimate MB':>12} {'live MB':>9} {'measured MB':>12} {'ratio':>6}")
    for r in rows:
        print(f"{r['case']:34} {r['estimate_mb']:12.0f} {r['live_mb']:9.0f} {r['measured_mb']:12.0f} {r['ratio']:6.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
