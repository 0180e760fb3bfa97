"""Memory and set-up cost of kdsearch on 224-px photos with an 11M-parameter teacher.

On a generated photo folder (``photo_setup.py``: 3 classes, JPEGs of about 260×300) and the zoo
``resnet18`` saved as ``.pt2`` (fresh weights), four figures, each against its target:

  (i)   peak RSS of ``kdsearch search --space mbconv`` (a child process; ``os.wait4`` gives its
        own ``ru_maxrss``, and ``/proc/<pid>/status`` VmHWM is polled so a child past
        ``--rss-cap`` is stopped instead of pushing a shared machine into the OOM killer) — target ≤ 4 GB;
  (ii)  peak RSS of ``kdsearch distill`` of the search's winner at ``--batch-size`` (default 128,
        kdsearch's default) for one epoch, i.e. a few steps on a few hundred photos — target ≤ 8 GB;
        the memory guard's choice (micro-batch, estimate, budget) is read from the run's history;
  (iii) the search's set-up — data load (decode cache warm), teacher load and checks, budget
        sampling, proxy-batch check, teacher statistics — against the scoring time of one
        candidate, both timed in the same search through the library (``search_command``, what
        the CLI calls) with a progress sink that timestamps the search loop's start and end —
        target set-up ≤ 10× one candidate;
  (iv)  the chain after the search, each stage a child process under ``--chain-max-memory`` (default
        4GB): ``kdsearch distill`` with a feature loss (``--chain-loss``, default ``kd:1,ce:1,at:1``:
        attention transfer on the stages' feature maps), ``kdsearch quantize`` (QAT-KD) and
        ``kdsearch export --int8 ptq,qat``; target: each one's peak RSS ≤ 4.4 GB (the budget + 10 %
        for the interpreter and libraries). The guard's choices (micro-batch, evaluation batch, the
        export's accuracy batch) are read from the run's records.

With ``--val-images N`` the folder has ``train/`` (``--images``) and ``val/`` (N photos) parts, so
evaluation and the export's accuracy run over a realistic validation set; without it validation is
carved from one folder (10 %). ``--figures`` picks which of (ii)-(iv) run; the search always runs.

    python benchmarks/photo_memory.py --images 300 --trials 8 --max-memory 3.5GB
    python benchmarks/photo_memory.py --figures chain --images 258 --val-images 300 --trials 8 --rss-cap 8 \
        --json benchmarks/photo_memory_chain.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from photo_setup import save_resnet18_teacher, write_photo_folder  # noqa: E402

GB = 10**9
CHAIN_TARGET_GB = 4.4  # each chain stage under --max-memory 4GB: the budget + 10 % for interpreter and libraries
TARGETS = {"search_peak_rss_gb": 4.0, "distill_peak_rss_gb": 8.0, "setup_over_candidate": 10.0,
           "chain_distill_peak_rss_gb": CHAIN_TARGET_GB, "chain_quantize_peak_rss_gb": CHAIN_TARGET_GB,
           "chain_export_peak_rss_gb": CHAIN_TARGET_GB}
GUARD_KEYS = ("micro_batch", "accumulation_steps", "memory_estimate_bytes", "memory_budget_bytes", "eval_batch",
              "run_memory_estimate_bytes", "teacher_cache", "train_images")


def _vm_hwm_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def peak_rss_of(command: list[str], env: dict[str, str], cap_bytes: int) -> dict[str, Any]:
    """Run ``command``; its peak RSS (``ru_maxrss`` from ``wait4``), wall time, exit code and stderr's tail.

    Past ``cap_bytes`` (polled VmHWM) the child is killed and ``capped`` is true.
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
        capped, polled = False, 0
        while True:  # wait4, not Popen.poll: only wait4 returns the child's own rusage when it reaps it
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            polled = max(polled, _vm_hwm_bytes(child.pid))
            if polled > cap_bytes and not capped:
                capped = True
                os.kill(child.pid, signal.SIGKILL)
            time.sleep(0.2)
        code = child.returncode = os.waitstatus_to_exitcode(status)
        peak = max(usage.ru_maxrss * 1024, polled)  # ru_maxrss is in KiB on Linux
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return {"peak_rss_bytes": peak, "peak_rss_gb": peak / GB, "wall_s": time.perf_counter() - start,
            "exit_code": code, "capped": capped, "stderr_tail": stderr[-2000:]}


def trial_seconds(run_dir: Path) -> list[float]:
    """Wall time of each complete trial of a run's study (scoring, costs and bookkeeping)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="kdsearch", storage=f"sqlite:///{run_dir / 'search' / 'study.db'}")
    return [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials
            if t.datetime_complete is not None and t.datetime_start is not None]


class Timeline:
    """A progress sink (kdsearch.progress.Progress) that stamps each loop's start and finish and keeps the notes."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self.notes: list[str] = []

    def start(self, key: str, description: str, total: int | None = None) -> None:
        self.events.append((time.perf_counter(), "start", key))

    def advance(self, key: str, steps: int = 1, **fields: Any) -> None:
        pass

    def finish(self, key: str) -> None:
        self.events.append((time.perf_counter(), "finish", key))

    def note(self, message: str) -> None:
        self.notes.append(message)  # e.g. a proxy batch lowered to fit in memory

    def first(self, kind: str, key: str) -> float:
        return next(t for t, k, name in self.events if k == kind and name == key)


SETUP_PARTS = ("load_teacher", "feasible_samples", "fresh_copy", "proxy_batch_that_fits", "locate_parts",
               "teacher_stats")  # the set-up's library calls, in the order a search makes them


def time_setup(searched: Path, out: Path, trials: int, *, profile: bool = False) -> dict[str, Any]:
    """Set-up and per-candidate seconds of a search with the configuration of ``searched``.

    ``profile``: also the set-up's parts (cumulative seconds of :data:`SETUP_PARTS` under cProfile,
    over the whole search: ``feasible_samples`` runs in the checks and again in the search). The
    profiler slows Python-heavy code (the set-up) far more than kernels (the scoring), so a
    profiled run's ratio is not the figure; its shares say where the set-up goes."""
    import cProfile
    import pstats

    from kdsearch.pipeline import search_command
    from kdsearch.pipeline.config import load_run_config
    from kdsearch.pipeline.stages import load_run_dataset

    config = load_run_config(searched)
    config = dataclasses.replace(config, search=dataclasses.replace(config.search, trials=trials, population=trials))
    t0 = time.perf_counter()
    load_run_dataset(config)  # the decode cache is warm: this is what each search pays to open it
    data_s = time.perf_counter() - t0
    timeline, profiler = Timeline(), cProfile.Profile()
    t0 = time.perf_counter()
    if profile:
        profiler.runcall(search_command, out, config, progress=timeline)
        stats = pstats.Stats(profiler).stats  # {(file, line, function): (calls, _, tottime, cumtime, callers)}
        parts = {name: sum(v[3] for (_, _, fn), v in stats.items() if fn == name) for name in SETUP_PARTS}
    else:
        search_command(out, config, progress=timeline)
        parts = None
    started, finished = timeline.first("start", "search"), timeline.first("finish", "search")
    setup_s, per_candidate = started - t0, (finished - started) / trials
    return {"trials": trials, "setup_s": setup_s, "data_load_s": data_s, "candidate_s": per_candidate,
            "setup_over_candidate": setup_s / per_candidate, "profiled": profile, "setup_parts_s": parts,
            "notes": timeline.notes}


def _guard(metrics_path: Path) -> dict[str, Any]:
    """The memory guard's choices of a training stage: its metrics.json's last history entry."""
    history = json.loads(metrics_path.read_text())["history"][-1]
    return {k: history.get(k) for k in GUARD_KEYS}


def run_chain(run: Path, kdsearch: list[str], env: dict[str, str], cap: int, args: argparse.Namespace
              ) -> dict[str, Any]:
    """distill (feature loss) -> quantize -> export on ``run``, each a child under ``args.chain_max_memory``.

    A quantize that fails (e.g. the guard refuses: not even a micro-batch fits) leaves the export to
    PTQ alone, so the export is measured either way.
    """
    from kdsearch.rundir import RunDir

    budget = ["--max-memory", args.chain_max_memory]
    chain: dict[str, Any] = {}

    def measured(stage: str, command: list[str]) -> dict[str, Any]:
        load = os.getloadavg()
        result = peak_rss_of(command, env, cap)
        result.update(command=" ".join(["kdsearch", *command[len(kdsearch):]]).replace(str(run), "RUN"),
                      load_average_before=load, load_average_after=os.getloadavg())
        chain[stage] = result
        return result

    distill = measured("distill", [*kdsearch, "distill", str(run), "--loss", args.chain_loss, "--epochs", "1",
                                   "--batch-size", str(args.batch_size), *budget, "--force", "--quiet"])
    if distill["exit_code"] != 0:
        return chain
    distill["guard"] = _guard(RunDir(run).distill_metrics)
    quantize = measured("quantize", [*kdsearch, "quantize", str(run), "--epochs", str(args.qat_epochs),
                                     "--batch-size", str(args.batch_size), *budget, "--force", "--quiet"])
    int8 = args.int8
    if quantize["exit_code"] == 0:
        quantize["guard"] = _guard(RunDir(run).qat_metrics)
    else:
        int8 = ",".join(m for m in args.int8.split(",") if m != "qat") or "none"
    export = measured("export", [*kdsearch, "export", str(run), "--int8", int8, "--latency-runs",
                                 str(args.latency_runs), *budget, "--quiet"])
    if export["exit_code"] == 0:
        record = json.loads(RunDir(run).export_record.read_text())
        export["guard"] = record["memory"]
        export["accuracy"] = {kind: f["accuracy"] for kind, f in record["files"].items()}
    return chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300, help="photos in the generated folder (3 classes)")
    parser.add_argument("--val-images", type=int, default=0,
                        help="photos in a separate val/ part (0: validation is carved from --images)")
    parser.add_argument("--figures", default="distill,setup,chain",
                        help="which of distill (ii), setup (iii), chain (iv) to measure; the search always runs")
    parser.add_argument("--trials", type=int, default=8, help="trials of the measured search")
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--speedup", default=None, help="the search's --speedup budget (default: none, kdsearch's "
                                                        "parameter budget)")
    parser.add_argument("--setup-trials", type=int, default=3, help="trials of the search that times the set-up")
    parser.add_argument("--batch-size", type=int, default=128, help="distillation batch (kdsearch's default)")
    parser.add_argument("--max-memory", default=None,
                        help="passed to kdsearch distill (default: kdsearch's, 70%% of free memory)")
    parser.add_argument("--chain-max-memory", default="4GB", help="--max-memory of the chain's distill, quantize, export")
    parser.add_argument("--chain-loss", default="kd:1,ce:1,at:1", help="the chain's distillation loss (a feature loss)")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--int8", default="ptq,qat", help="the chain's kdsearch export --int8")
    parser.add_argument("--latency-runs", type=int, default=5, help="the chain's kdsearch export --latency-runs")
    parser.add_argument("--rss-cap", type=float, default=12.0, help="GB: stop a child past this peak RSS")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. why sizes were lowered)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    figures_asked = set(args.figures.split(","))
    if not figures_asked <= {"distill", "setup", "chain"}:
        raise SystemExit(f"--figures takes distill, setup and chain (got {args.figures})")

    work = args.work or Path(tempfile.mkdtemp(prefix="kdsearch-photo-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KDSEARCH_CACHE": str(work / "cache")}
    os.environ["KDSEARCH_CACHE"] = env["KDSEARCH_CACHE"]
    photos, teacher, run = work / "photos", work / "teacher.pt2", work / "run"
    classes = 3
    if not photos.exists() and args.val_images:
        write_photo_folder(photos / "train", classes, args.images // classes)
        write_photo_folder(photos / "val", classes, args.val_images // classes, seed=1)
    elif not photos.exists():
        write_photo_folder(photos, classes, args.images // classes)
    teacher_params = save_resnet18_teacher(teacher, classes)
    cap = int(args.rss_cap * GB)
    load_before = os.getloadavg()
    kdsearch = [sys.executable, "-m", "kdsearch"]

    search = peak_rss_of([*kdsearch, "search", "--teacher", str(teacher), "--data", f"imagefolder:{photos}",
                          "--space", "mbconv", "--trials", str(args.trials), "--population", str(args.population),
                          "--out", str(run), "--force", "--quiet",
                          *(["--speedup", args.speedup] if args.speedup else [])], env, cap)
    if search["exit_code"] != 0:
        raise SystemExit(f"kdsearch search failed ({search}); see {work}")
    search["trial_s"] = trial_seconds(run)
    figures: dict[str, float | None] = {"search_peak_rss_gb": search["peak_rss_gb"]}
    distill = setup = setup_profiled = chain = None
    if "distill" in figures_asked:
        distill_cmd = [*kdsearch, "distill", str(run), "--epochs", "1", "--batch-size", str(args.batch_size),
                       "--quiet"]
        if args.max_memory:
            distill_cmd += ["--max-memory", args.max_memory]
        distill = peak_rss_of(distill_cmd, env, cap)
        if distill["exit_code"] == 0:
            distill["guard"] = _guard(run / "distill" / "metrics.json")
        figures["distill_peak_rss_gb"] = distill["peak_rss_gb"] if distill["exit_code"] == 0 else None
    if "setup" in figures_asked:
        setup = time_setup(run, work / "setup_run", args.setup_trials)
        setup_profiled = time_setup(run, work / "setup_run_profiled", args.setup_trials, profile=True)
        figures["setup_over_candidate"] = setup["setup_over_candidate"]
    if "chain" in figures_asked:
        chain = run_chain(run, kdsearch, env, cap, args)
        for stage in ("distill", "quantize", "export"):
            done = stage in chain and chain[stage]["exit_code"] == 0
            figures[f"chain_{stage}_peak_rss_gb"] = chain[stage]["peak_rss_gb"] if done else None
    load_after = os.getloadavg()
    import torch

    result = {
        "command": shlex.join(["python", "benchmarks/photo_memory.py", *sys.argv[1:]]),
        "setup": {"photos": args.images // classes * classes, "val_photos": args.val_images // classes * classes,
                  "classes": classes, "image_size": 224,
                  "teacher": f"resnet18 .pt2 ({teacher_params:,} params, fresh weights)", "space": "mbconv",
                  "trials": args.trials, "population": args.population, "speedup": args.speedup,
                  "batch_size": args.batch_size,
                  "max_memory": args.max_memory, "chain_max_memory": args.chain_max_memory,
                  "chain_loss": args.chain_loss, "qat_epochs": args.qat_epochs, "int8": args.int8,
                  "latency_runs": args.latency_runs, "rss_cap_gb": args.rss_cap, "note": args.note,
                  "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),  # the children's threads too
                  "load_average_before": load_before, "load_average_after": load_after},
        "search": search, "distill": distill, "search_setup": setup, "search_setup_profiled": setup_profiled,
        "chain": chain, "figures": figures, "targets": {k: TARGETS[k] for k in figures},
        "met": {k: (v is not None and v <= TARGETS[k]) for k, v in figures.items()},
    }
    print(f"224-px photos: {result['setup']['photos']} images, resnet18 teacher ({teacher_params:,} params), "
          f"mbconv, {args.trials} trials; load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    if args.note:
        print(f"note: {args.note}")
    print(f"{'figure':<44}{'value':>10}{'target':>10}{'ratio':>8}  met")
    rows = [("(i) search peak RSS (GB)", "search_peak_rss_gb"),
            (f"(ii) distill peak RSS at batch {args.batch_size} (GB)", "distill_peak_rss_gb"),
            ("(iii) set-up / one candidate's scoring", "setup_over_candidate"),
            (f"(iv) distill {args.chain_loss} peak RSS (GB)", "chain_distill_peak_rss_gb"),
            ("(iv) quantize peak RSS (GB)", "chain_quantize_peak_rss_gb"),
            ("(iv) export peak RSS (GB)", "chain_export_peak_rss_gb")]
    for label, key in [(label, key) for label, key in rows if key in figures]:
        value, target = figures[key], TARGETS[key]
        shown = "failed" if value is None else f"{value:.2f}"
        ratio = "" if value is None else f"{value / target:.2f}"
        print(f"{label:<44}{shown:>10}{target:>10.1f}{ratio:>8}  {'yes' if result['met'][key] else 'NO'}")
    for stage, child in (chain or {}).items():
        print(f"chain {stage}: {child['command']}")
    trained = [("distill", distill)] + [(f"chain {k}", v) for k, v in (chain or {}).items() if k != "export"]
    for name, child in [(name, child) for name, child in trained if child is not None]:
        if child["exit_code"] != 0:
            print(f"{name} exited {child['exit_code']}: {child['stderr_tail'].strip()[-300:]}")
        elif child.get("guard"):
            g = child["guard"]
            print(f"{name} memory guard: micro-batch {g['micro_batch']} x {g['accumulation_steps']}, evaluation "
                  f"batch {g['eval_batch']} (step estimate {g['memory_estimate_bytes'] / GB:.2f} GB, budget "
                  f"{g['memory_budget_bytes'] / GB:.2f} GB), {child['wall_s']:.0f} s")
    exported = (chain or {}).get("export")
    if exported is not None and exported["exit_code"] != 0:
        print(f"chain export exited {exported['exit_code']}: {exported['stderr_tail'].strip()[-300:]}")
    elif exported is not None:
        g = exported["guard"]
        print(f"chain export memory guard: accuracy batch {g['accuracy_batch']}, calibration batch "
              f"{g['calib_batch']} ({g['per_image_bytes'] / 10**6:.0f} MB per image, budget "
              f"{g['budget_bytes'] / GB:.2f} GB), {exported['wall_s']:.0f} s")
    if setup is not None and setup_profiled is not None:
        print(f"set-up {setup['setup_s']:.1f} s (of which warm data load {setup['data_load_s']:.1f} s), "
              f"one candidate {setup['candidate_s']:.1f} s; candidates in the measured search: "
              f"{', '.join(f'{s:.1f}' for s in search['trial_s'])} s")
        total = setup_profiled["setup_s"]
        print(f"set-up under cProfile {total:.1f} s: " + ", ".join(
            f"{k} {v:.1f} s ({v / total:.0%})" for k, v in setup_profiled["setup_parts_s"].items()))
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
