#!/usr/bin/env bash
# The 224-px chain on one GPU, in one go (issue 14, item 7): under 8 minutes, one JSON.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from the repo root, after `make setup`
#   bash benchmarks/gpu_check.sh --dry-run   # the same steps on the CPU at tiny sizes (checks the script)
#
# With a torch already installed (a CUDA image), instead of `make setup`:
#   python -m venv --system-site-packages .venv && .venv/bin/pip install -e .
# (or PYTHON=/path/to/python bash benchmarks/gpu_check.sh with kdsearch importable).
#
# Steps: (a) the card; (b) a generated photo folder and the zoo resnet18 (11.2M params, fresh
# weights) saved as .pt2 at 224 px; (c) kdsearch search (mbconv; the search scores on the CPU and
# its latency budget is ONNX Runtime on the CPU, the only provider it measures: the budget is half
# the teacher's CPU latency), kdsearch distill --compile on CUDA (AMP and channels_last are the
# CUDA defaults), kdsearch export --provider cuda --int8 ptq; (d) benchmarks/distill_throughput.py
# on the GPU (KD throughput against a plain loop); (e) benchmarks/gpu_check.json with the card,
# versions and every figure (a dry run writes it to its work folder, never over the real one).
# Every step runs under `timeout`, and any failure stops the script with a non-zero status.
set -euo pipefail

cd "$(dirname "$0")/.."
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; fi
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=$(command -v python3)
WORK=${WORK:-$(mktemp -d -t kdsearch-gpu-check-XXXXXX)}
export KDSEARCH_CACHE="$WORK/cache" KDSEARCH_NO_DOWNLOAD=1

if (( DRY_RUN )); then
  DEVICE=cpu PROVIDER=cpu PER_CLASS=${PER_CLASS:-12} TRIALS=${TRIALS:-2} EPOCHS=${EPOCHS:-1} BATCH=${BATCH:-8}
  COMPILE=--no-compile SUBSET=${SUBSET:-24} LATENCY_RUNS=3 PROXY_BATCH=16 OUT_JSON="$WORK/gpu_check.json"
else
  DEVICE=cuda PROVIDER=cuda PER_CLASS=${PER_CLASS:-200} TRIALS=${TRIALS:-16} EPOCHS=${EPOCHS:-2} BATCH=${BATCH:-128}
  COMPILE=--compile SUBSET=${SUBSET:-540} LATENCY_RUNS=100 PROXY_BATCH=64 OUT_JSON=${OUT_JSON:-benchmarks/gpu_check.json}
fi
RUN="$WORK/run"
step() { echo "== $* ($(date +%T))"; }
now() { date +%s.%N; }

step "(a) the card"
if (( DRY_RUN )); then
  CARD="none (dry run on the CPU)"
else
  CARD=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n 1)
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')"
fi
echo "$CARD"

step "(b) photos and a resnet18 teacher in $WORK"
timeout 120 "$PY" benchmarks/photo_setup.py --photos "$WORK/photos" --per-class "$PER_CLASS" --teacher "$WORK/teacher.pt2"
TEACHER_MS=$(timeout 60 "$PY" - <<'EOF'
from kdsearch.models.zoo import model_arch
from kdsearch.search.objective import CandidateShape, candidate_latency_ms
from kdsearch.spaces import load_space

arch = model_arch("resnet18")
print(f"{candidate_latency_ms(load_space(arch.space), arch, CandidateShape(3, 3, (224, 224))):.3f}")
EOF
)
BUDGET_MS=$("$PY" -c "print(round($TEACHER_MS / 2, 3))")
echo "teacher ORT CPU latency ${TEACHER_MS} ms at batch 1 -> --max-latency-ms $BUDGET_MS"

step "(c) search, distill --compile on $DEVICE, export --provider $PROVIDER --int8 ptq"
t0=$(now)
timeout 180 "$PY" -m kdsearch search --teacher "$WORK/teacher.pt2" --data "imagefolder:$WORK/photos" --space mbconv \
  --max-latency-ms "$BUDGET_MS" --proxy-batch "$PROXY_BATCH" --trials "$TRIALS" --population "$(( TRIALS < 8 ? TRIALS : 8 ))" --out "$RUN" --quiet
t1=$(now)
timeout 240 "$PY" -m kdsearch distill "$RUN" --device "$DEVICE" $COMPILE --epochs "$EPOCHS" --batch-size "$BATCH" --quiet
t2=$(now)
# EXPORT_ARGS: extra flags, e.g. "--config FILE" with `export: {teacher_latency: false}` to skip timing the teacher
timeout 180 "$PY" -m kdsearch export "$RUN" --provider "$PROVIDER" --int8 ptq --latency-runs "$LATENCY_RUNS" --quiet \
  ${EXPORT_ARGS:-}
t3=$(now)

step "(d) KD throughput on $DEVICE against a plain loop"
timeout 180 "$PY" benchmarks/distill_throughput.py --data "imagefolder:$WORK/photos" --image-size 224 \
  --device "$DEVICE" --subset "$SUBSET" --epochs 2 --batch-size "$(( BATCH < 64 ? BATCH : 64 ))" \
  --json "$WORK/throughput.json"
t4=$(now)

step "(e) $OUT_JSON"
CARD="$CARD" RUN="$RUN" WORK="$WORK" OUT_JSON="$OUT_JSON" DRY_RUN="$DRY_RUN" TEACHER_MS="$TEACHER_MS" \
BUDGET_MS="$BUDGET_MS" STAMPS="$t0 $t1 $t2 $t3 $t4" \
timeout 60 "$PY" - <<'EOF'
import json
import os
from pathlib import Path

import onnxruntime
import torch

run, work = Path(os.environ["RUN"]), Path(os.environ["WORK"])
winner = json.loads((run / "search" / "winner.json").read_text())
distill = json.loads((run / "distill" / "metrics.json").read_text())
export = json.loads((run / "export" / "export.json").read_text())
throughput = json.loads((work / "throughput.json").read_text())
last = distill["history"][-1]
stamps = [float(t) for t in os.environ["STAMPS"].split()]


def p50s(entry):
    return {batch: figures["p50"] for batch, figures in entry["latency_ms"].items()}


result = {
    "dry_run": os.environ["DRY_RUN"] == "1",
    "card": os.environ["CARD"],
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "torch_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "onnxruntime": onnxruntime.__version__,
    "ort_providers": onnxruntime.get_available_providers(),
    "wall_s": {step: b - a for step, a, b in zip(("search", "distill", "export", "throughput"), stamps, stamps[1:])},
    "search": {"teacher_cpu_latency_ms": float(os.environ["TEACHER_MS"]), "max_latency_ms": float(os.environ["BUDGET_MS"]),
               "winner_params": winner["params"], "winner_flops": winner["flops"],
               "winner_latency_ms": winner["latency_ms"], "form": winner["arch"]["form"]},
    "distill": {"images_per_s": [h["images_per_s"] for h in distill["history"]], "val_acc": last.get("val_acc"),
                "micro_batch": last.get("micro_batch"), "accumulation_steps": last.get("accumulation_steps")},
    "export": {"provider_requested": export["provider_requested"], "input_size": export["input_size"],
               "student": {mode: {"provider_used": f["provider_used"], "p50_ms": p50s(f)}
                           for mode, f in export["files"].items()},
               "teacher": ({"provider_used": export["teacher"]["provider_used"], "p50_ms": p50s(export["teacher"])}
                           if export.get("teacher") and "latency_ms" in export["teacher"] else export.get("teacher"))},
    "kd_throughput": {"setup": throughput["setup"], "images_per_s": {k: v["images_per_s"] for k, v in
                                                                     throughput["results"].items()},
                      "ratios": throughput["ratios"]},
}
Path(os.environ["OUT_JSON"]).write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps({k: result[k] for k in ("card", "torch", "onnxruntime", "wall_s")}, indent=2))
s = result["export"]["student"]
print(f"{'model':<14}{'provider':>10}{'p50 b1 ms':>11}{'p50 b32 ms':>12}")
for name, entry in [*s.items(), ("teacher", result["export"]["teacher"])]:
    if entry and "p50_ms" in entry:
        print(f"{name:<14}{entry['provider_used']:>10}{entry['p50_ms'].get('batch_1', 0):>11.3f}"
              f"{entry['p50_ms'].get('batch_32', 0):>12.3f}")
print("KD throughput ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in result["kd_throughput"]["ratios"].items()))
print(f"wrote {os.environ['OUT_JSON']}")
EOF
