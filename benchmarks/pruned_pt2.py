"""``kdsearch run --space pruned`` on a ``.pt2`` teacher at 224 px, from search through export.

The teacher is the zoo ``resnet18`` (ImageNet layout), trained by ``kdsearch teach`` on generated
photos (``photo_setup.py``: JPEGs of about 260×300, centre-cropped to 224) into a model directory,
then saved with ``torch.export`` (dynamic batch) as a user hands one over. ``kdsearch run`` cuts
students from that file (``lift_layers`` turns its aten conv/linear/batch-norm calls back into
layers for Torch-Pruning, inside its unflattened module hierarchy), searches, distils the winner
from the teacher's own weights and exports it: ONNX checked against PyTorch, latency timed in ONNX Runtime against the teacher, interleaved.
Then, if it finishes within ``--qat-limit`` seconds, ``kdsearch quantize`` (QAT-KD) and an int8 export.

Besides the run's own records, two figures come from the library: the winner's validation top-1
straight after the cut (the teacher's weights, before any distillation), and the residual blocks
the same network offers for removal as a model directory and as the lifted ``.pt2`` graph.

    OMP_NUM_THREADS=1 python benchmarks/pruned_pt2.py --json benchmarks/pruned_pt2.json
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from photo_setup import write_photo_folder  # noqa: E402

CLASSES = 3
IMAGE_SIZE = 224


def run_kdsearch(args: list[str], env: dict[str, str], timeout: float | None = None) -> dict[str, Any]:
    """``kdsearch ARGS`` as a child: exit code, wall time, stdout, stderr's tail; ``timed_out`` past ``timeout``."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "kdsearch", *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
        code, out, err, timed_out = done.returncode, done.stdout, done.stderr, False
    except subprocess.TimeoutExpired as e:  # subprocess.run has killed the child
        code, out, timed_out = None, "", True
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    return {"command": shlex.join(["kdsearch", *args]), "exit_code": code, "timed_out": timed_out,
            "wall_s": time.perf_counter() - start, "stdout": out, "stderr_tail": err[-2000:]}


def save_model_dir_as_pt2(model_dir: Path, path: Path) -> int:
    """``torch.export`` the network of a kdsearch model directory to ``path`` (dynamic batch); returns its params."""
    import torch

    from kdsearch.spaces.model_files import load_teacher

    meta = json.loads((model_dir / "model.json").read_text())
    teacher = load_teacher(str(model_dir), num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                           image_size=(IMAGE_SIZE, IMAGE_SIZE))
    model = teacher.module.eval()
    example = torch.randn(2, meta["in_channels"], IMAGE_SIZE, IMAGE_SIZE)  # (B, C, H, W)
    batch = {"x": {0: torch.export.Dim("batch")}}
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=batch), str(path))
    return sum(p.numel() for p in model.parameters())


def distill_steps(run: Path) -> dict[str, Any]:
    """What the run's distillation trained: optimizer steps, images, and its validation top-1."""
    last = json.loads((run / "distill" / "metrics.json").read_text())["history"][-1]
    out = {k: last.get(k) for k in ("epoch", "train_images", "micro_batch", "val_acc", "agreement")}
    batch = last["micro_batch"] * last.get("accumulation_steps", 1)
    out["steps"] = last["epoch"] * (last["train_images"] // batch)  # train_images: one epoch's, whole batches
    return out


def cut_before_distillation(run: Path) -> dict[str, Any]:
    """The winner as cut from the teacher (its weights, no training): params and validation top-1."""
    import torch

    from kdsearch.arch import Arch
    from kdsearch.distill.evaluate import predict_logits, topk_accuracy
    from kdsearch.pipeline.config import load_run_config
    from kdsearch.pipeline.stages import load_run_dataset
    from kdsearch.rundir import RunDir
    from kdsearch.spaces import load_space

    dataset = load_run_dataset(load_run_config(run))
    space = load_space(RunDir(run).searched_space)
    arch = Arch.from_dict(json.loads(RunDir(run).winner.read_text())["arch"])
    model = space.build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels).eval()
    logits = predict_logits(model, dataset.val.images, dataset.mean, dataset.std, device=torch.device("cpu"),
                            batch_size=32)
    return {"params": sum(p.numel() for p in model.parameters()),
            "val_acc": topk_accuracy(logits, dataset.val.labels, 1), "val_images": len(dataset.val.labels)}


def removable_blocks_both_ways(model_dir: Path, pt2: Path) -> dict[str, list[str]]:
    """Residual blocks Torch-Pruning may drop from the model directory's network and from its lifted ``.pt2``
    (as ``--space pruned`` lifts it: the unflattened program, its module hierarchy restored)."""
    import torch

    from kdsearch.models.prune import removable_blocks
    from kdsearch.spaces.model_files import load_teacher
    from kdsearch.spaces.pruned import prunable_teacher

    x = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)  # (1, C, H, W)
    found = {}
    for name, source in (("model_dir", model_dir), ("pt2", pt2)):
        teacher = load_teacher(str(source), num_classes=CLASSES, in_channels=3, image_size=(IMAGE_SIZE, IMAGE_SIZE))
        found[name] = removable_blocks(prunable_teacher(teacher)[0], x)
    return found


def recipe_summary(run: Path) -> dict[str, Any]:
    """The winner's pruning recipe, group by group, from the run's own space and winner."""
    import yaml

    from kdsearch.rundir import RunDir

    prune = yaml.safe_load(RunDir(run).searched_space.read_text())["prune"]
    genes = json.loads(RunDir(run).winner.read_text())["arch"]["genes"]
    removed = [b for b, drop in zip(prune["blocks"], genes.get("remove", [])) if drop]
    return {"groups": len(prune["groups"]), "blocks_offered": prune["blocks"], "blocks_removed": removed,
            "keep": dict(zip(prune["groups"], genes["keep"])), "input_shape": prune["input_shape"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=90, help="training photos (3 classes)")
    parser.add_argument("--val-images", type=int, default=60, help="photos in the separate val/ part")
    parser.add_argument("--teach-epochs", type=int, default=2)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1, help="distillation epochs")
    parser.add_argument("--latency-batch", type=int, default=8,
                        help="throughput batch of the speed budget and the export (kdsearch's default 32 costs "
                             "minutes per candidate at 224 px on one thread)")
    parser.add_argument("--longer-epochs", type=int, default=4,
                        help="then distil the winner again for this many epochs at batch 16 (0: not), to see what "
                             "more steps give back")
    parser.add_argument("--qat-limit", type=float, default=180.0, help="seconds kdsearch quantize may take")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one); "
                                                               "photos and teacher in it are reused")
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. the commit measured)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="kdsearch-pruned-pt2-"))
    work.mkdir(parents=True, exist_ok=True)
    # the children run the kdsearch beside this script, whatever is installed
    env = {**os.environ, "KDSEARCH_CACHE": str(work / "cache"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    os.environ["KDSEARCH_CACHE"] = env["KDSEARCH_CACHE"]
    photos, teacher_dir, pt2, run = work / "photos", work / "teacher", work / "teacher.pt2", work / "run"
    if not photos.exists():
        write_photo_folder(photos / "train", CLASSES, args.images // CLASSES)
        write_photo_folder(photos / "val", CLASSES, args.val_images // CLASSES, seed=1)
    data = f"imagefolder:{photos}"
    load_before = os.getloadavg()

    teach = None
    if not (teacher_dir / "model.json").is_file():
        teach = run_kdsearch(["teach", "--model", "resnet18", "--data", data, "--epochs",
                             str(args.teach_epochs), "--batch-size", "16", "--out", str(teacher_dir), "--force",
                             "--quiet"], env)
        if teach["exit_code"] != 0:
            raise SystemExit(f"kdsearch teach failed: {teach['stderr_tail']}")
    teacher_params = save_model_dir_as_pt2(teacher_dir, pt2)

    chain = run_kdsearch(["run", "--preset", "tiny", "--space", "pruned", "--teacher", str(pt2), "--data",
                         data, "--trials", str(args.trials), "--epochs", str(args.epochs), "--latency-batch",
                         str(args.latency_batch), "--out", str(run), "--force", "--quiet", "--json"], env)
    if chain["exit_code"] != 0:
        raise SystemExit(f"kdsearch run failed ({chain['wall_s']:.0f} s): {chain['stderr_tail']}; see {work}")
    summary = json.loads(chain.pop("stdout"))
    stages = summary["timings_s"]
    # run checks its inputs before any stage (teacher load, pruned space, the speed budget's timings): the rest
    stages_with_checks = {"checks_and_setup": chain["wall_s"] - sum(stages.values()), **stages}
    fp32 = json.loads((run / "export" / "export.json").read_text())
    parity = fp32["files"]["fp32"]["parity"]
    onnx_passed = all(p["max_abs_diff"] <= p["tolerance"] and p["decisive_top1_agreement"]
                      >= fp32["parity_rule"]["min_top1_agreement"] for p in parity.values())

    chain_training = distill_steps(run)
    cut = cut_before_distillation(run)
    blocks = removable_blocks_both_ways(teacher_dir, pt2)

    quantize = run_kdsearch(["quantize", str(run), "--epochs", "1", "--batch-size", "64", "--quiet"], env,
                            timeout=args.qat_limit)
    quantize.pop("stdout")
    int8 = None
    if quantize["exit_code"] == 0:
        export_qat = run_kdsearch(["export", str(run), "--int8", "qat", "--latency-batch",
                                  str(args.latency_batch), "--quiet"], env)
        export_qat.pop("stdout")
        int8 = {"export": export_qat}
        if export_qat["exit_code"] == 0:
            record = json.loads((run / "export" / "export.json").read_text())
            qat = record["files"].get("qat", {})
            int8.update(accuracy=qat.get("accuracy"), speedup=qat.get("speedup"),
                        latency_ms=qat.get("latency_ms"), speedup_vs_fp32=qat.get("speedup_vs_fp32"),
                        recommended=record["recommended"])
    longer = None
    if args.longer_epochs:  # last: it replaces the run's distilled student, whose figures are recorded above
        longer = run_kdsearch(["distill", str(run), "--epochs", str(args.longer_epochs), "--batch-size", "16",
                               "--force", "--quiet"], env)
        longer.pop("stdout")
        longer["command"] = longer["command"].replace(str(work), "WORK")
        if longer["exit_code"] == 0:
            longer["training"] = distill_steps(run)
    load_after = os.getloadavg()

    import torch

    student, onnx = summary["student"], summary["onnx"]
    result = {
        "command": shlex.join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", ""), "python",
                               "benchmarks/pruned_pt2.py", *sys.argv[1:]]),
        "note": args.note,
        "chain_command": chain["command"].replace(str(work), "WORK"),
        "setup": {"train_photos": args.images // CLASSES * CLASSES, "val_photos": args.val_images // CLASSES * CLASSES,
                  "classes": CLASSES, "image_size": IMAGE_SIZE, "teach_epochs": args.teach_epochs,
                  "trials": args.trials, "distill_epochs": args.epochs, "latency_batch": args.latency_batch,
                  "cpus": os.cpu_count(), "torch": torch.__version__,
                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                  "load_average_before": load_before, "load_average_after": load_after},
        "teach": None if teach is None else {"wall_s": teach["wall_s"], "command": teach["command"].replace(
            str(work), "WORK")},
        "teacher": {"params": teacher_params, "val_acc": summary["teacher"]["val_acc"],
                    "flops": summary["teacher"]["flops"], "file": "resnet18 trained by kdsearch teach, saved as .pt2"},
        "student": {"params": student["params"], "flops": student["flops"], "val_acc": student["val_acc"],
                    "agreement_with_teacher": student["agreement"], "onnx_val_acc": onnx["val_acc"],
                    "training": chain_training},
        "cut_before_distillation": cut,
        "reduction": summary["reduction"],
        "recipe": recipe_summary(run),
        "removable_blocks": blocks,
        "wall_s": {"total": chain["wall_s"], **stages_with_checks},
        "export": {"onnx_check_passed": onnx_passed, "parity_rule": fp32["parity_rule"], "parity": parity,
                   "speedup": fp32["files"]["fp32"]["speedup"], "latency_ms": fp32["files"]["fp32"]["latency_ms"],
                   "teacher_latency_ms": fp32["teacher"]["latency_ms"], "timing": fp32["timing"]},
        "quantize": {k: v for k, v in quantize.items() if k != "command"} | {
            "command": quantize["command"].replace(str(work), "WORK"), "limit_s": args.qat_limit},
        "int8_qat": int8,
        "longer_distillation": longer,
    }
    if int8 is not None:
        int8["export"]["command"] = int8["export"]["command"].replace(str(work), "WORK")

    speed = result["export"]["speedup"]
    print(f".pt2 resnet18 teacher ({teacher_params:,} params, val {summary['teacher']['val_acc']:.2%}) pruned at "
          f"{IMAGE_SIZE} px; load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"{'figure':<50}{'value':>16}")
    rows = [("student params", f"{student['params']:,}"),
            ("params / FLOPs reduction",
             f"{summary['reduction']['params']:.2f}x / {summary['reduction']['flops']:.2f}x"),
            ("val top-1 cut, before distillation", f"{cut['val_acc']:.2%}"),
            (f"val top-1 distilled, {chain_training['steps']} step(s) (PyTorch / ONNX)",
             f"{student['val_acc']:.2%} / {onnx['val_acc']:.2%}"),
            ("ONNX check against PyTorch", "passed" if onnx_passed else "FAILED"),
            *[(f"ORT speed-up over teacher at batch {b}", f"{s:.2f}x") for b, s in speed.items()],
            ("blocks removable: model dir / .pt2", f"{len(blocks['model_dir'])} / {len(blocks['pt2'])}"),
            *[(f"wall {k} (s)", f"{v:.0f}") for k, v in result["wall_s"].items()],
            ("quantize (QAT-KD)", "timed out" if quantize["timed_out"] else
             f"exit {quantize['exit_code']}, {quantize['wall_s']:.0f} s")]
    if int8 is not None and int8.get("accuracy") is not None:
        rows += [("int8 QAT ONNX val top-1", f"{int8['accuracy']:.2%}"),
                 *[(f"int8 QAT speed-up over teacher at batch {b}", f"{s:.2f}x") for b, s in int8["speedup"].items()]]
    if longer is not None and longer["exit_code"] == 0:
        rows.append((f"val top-1 after {args.longer_epochs} epochs at batch 16",
                     f"{longer['training']['val_acc']:.2%}"))
    for label, value in rows:
        print(f"{label:<50}{value:>16}")
    print(f"chain: {result['chain_command']}")
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
