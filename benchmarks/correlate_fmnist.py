"""Which proxy picks well on Fashion-MNIST? The correlate study behind the search defaults.

Runs (or resumes: finished students are never retrained) the same study as

    kdsearch correlate --teacher runs/teacher_r20 --data fashion-mnist --subset 2000 --archs 30 \\
        --epochs 2 --max-params 60000 --proxies <all but grasp> --extra-batches 16,256 --out runs/correlate_fmnist

then prints every proxy variant's Kendall τ, size-controlled τ, top-5 hits and regret under
budget, and writes benchmarks/correlate_fmnist.json. The baselines are params and flops in the
same run.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROXIES = ("diswot", "diswot_semantic", "diswot_relation", "grad_norm", "snip", "synflow", "fisher", "jacov", "nwot",
           "zen", "params", "flops")  # grasp left out: several times slower than all others together on CPU


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="runs/teacher_r20")
    p.add_argument("--out", type=Path, default=Path("runs/correlate_fmnist"))
    p.add_argument("--archs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=2000)
    p.add_argument("--max-params", type=int, default=60_000)
    p.add_argument("--json", type=Path, default=HERE / "correlate_fmnist.json")
    args = p.parse_args()

    from kdsearch.data import load_dataset
    from kdsearch.spaces.model_files import load_teacher
    from kdsearch.search.config import CorrelateConfig
    from kdsearch.search.correlate import run_correlate, with_train

    dataset = load_dataset("fashion-mnist", subset=args.subset, seed=0)
    teacher = load_teacher(args.teacher, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    config = with_train(CorrelateConfig(archs=args.archs, proxies=PROXIES, max_params=args.max_params,
                                        extra_batches=(16, 256)), epochs=args.epochs, device="auto")
    result = run_correlate(teacher, dataset, args.out / "correlate", config)
    accs = [s["acc"] for s in result.students]
    print(f"{len(result.students)} archs, distilled accuracy {min(accs):.3f}..{max(accs):.3f}; "
          f"teacher test accuracy {teacher.info.get('test_acc')}")
    print(f"{'proxy':34} {'tau':>7} {'rho':>7} {'size-tau':>9} {'top5':>5} {'regret':>7}")
    for m in result.metrics:
        sct = m["size_controlled_tau"]
        print(f"{m['proxy']:34} {m['kendall_tau']:7.3f} {m['spearman_rho']:7.3f} "
              f"{sct if math.isfinite(sct) else float('nan'):9.3f} {m['top5_hit']:5.2f} {m['mean_regret']:7.4f}")
    args.json.write_text(json.dumps({"archs": len(result.students), "acc_range": [min(accs), max(accs)],
                                     "teacher": args.teacher, "teacher_test_acc": teacher.info.get("test_acc"),
                                     "epochs": args.epochs, "subset": args.subset,
                                     "train_s_total": sum(s["train_s"] for s in result.students),
                                     "metrics": result.metrics}, indent=2, default=float) + "\n")
    print(f"→ {args.json}")


if __name__ == "__main__":
    main()
