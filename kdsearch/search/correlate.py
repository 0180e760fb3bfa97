"""Does the proxy pick well? Distil a stratified sample of a space and rank-correlate proxies with accuracy.

``correlate`` samples architectures spread evenly over log-parameters, distils each with the
standard KD recipe for a few epochs, scores each with every proxy (and with DisWOT variants:
teacher initialisation, batch size, term weights) and reports per proxy:

- Kendall τ and Spearman ρ against distilled accuracy;
- a size-controlled Kendall τ: proxy and accuracy are each residualised on log-params with
  least squares, then ranked; what a proxy knows beyond "bigger is better";
- top-5 hit rate: the share of the five most accurate archs among the proxy's five best;
- regret under budget: for several params budgets, the accuracy of the best arch within the
  budget minus that of the proxy's favourite within it (0 is perfect).

With ``repeats`` > 1 every arch is distilled once per training seed; accuracy is then the mean
over seeds, and the seeds' agreement with each other (``reliability``) measures the training noise
in that ground truth: how well one training run ranks the archs for another, overall and beyond
size, and the regret of picking by one seed's accuracy judged on another's. It is not an upper
bound on a proxy's agreement with the seed mean (a proxy can score above it).

Every finished student is appended to ``students.jsonl`` (one fsynced JSON line, keyed by arch
and training seed) and never trained twice; scores are recomputed on every run (seconds), so new
proxies need no training. Under ``train.curve_every`` each student's learning curve (every step's
loss terms, validation top-1 every N steps) is appended to ``curves.jsonl``, so races can be
simulated offline on the ground truth.
"""
from __future__ import annotations

import csv
import io
import json
import math
import random
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from kdsearch.arch import Arch
from kdsearch.data import Dataset, fixed_batch
from kdsearch.errors import UsageError
from kdsearch.files import append_line, read_json, write_json, write_text
from kdsearch.models.teacher import Teacher
from kdsearch.progress import NULL_PROGRESS, Progress
from kdsearch.rundir import CHECKPOINT, CORRELATE_CURVES, CORRELATE_RECORD, CORRELATE_STUDENTS, CURVE_LOG
from kdsearch.search.config import CorrelateConfig, parse_edges

__all__ = [
    "CorrelateResult",
    "run_correlate",
    "stratified_archs",
    "proxy_metrics",
    "size_controlled_tau",
    "regret_under_budget",
    "top_k_hit_rate",
    "DISWOT_WEIGHTS",
    "with_train",
    "seed_reliability",
    "score_variants",
]

BASELINES = ("params", "flops")  # always reported: a proxy must beat these to be worth its cost
# w_rel / w_sem ratios tried for the combined DisWOT score, from its two separately scored terms
DISWOT_WEIGHTS = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass
class CorrelateResult:
    students: list[dict[str, Any]]  # one per arch: arch, params, flops, acc, scores (per variant)
    metrics: list[dict[str, Any]]  # one per proxy variant, best size-controlled τ first
    out_dir: Path
    trained_now: int = 0
    reliability: dict[str, Any] = field(default_factory=dict)  # seed-to-seed agreement; empty with one seed


def _spread(values: Sequence[float], n: int) -> list[int]:
    """Indices of ``n`` of ``values`` spread evenly in log scale from the smallest to the largest:
    evenly spaced targets, each taking the nearest value not taken yet (random samples crowd the
    middle sizes, this spreads them out)."""
    if n <= 0:
        return []
    lo, hi = math.log(min(values)), math.log(max(values))
    free = list(range(len(values)))
    picks = []
    for i in range(n):
        target = lo + (hi - lo) * i / max(1, n - 1)
        best = min(free, key=lambda j: (abs(math.log(values[j]) - target), j))
        free.remove(best)
        picks.append(best)
    return picks


def _sample_costs(space, dataset: Dataset, *, seed: int, pool: int, max_params: int | None,
                  flops: bool) -> list[tuple[int, int, Arch]]:
    """(params, FLOPs or 0, arch) of the distinct archs among ``pool`` seeded samples, smallest first."""
    from kdsearch.proxies import count_flops

    rng = random.Random(seed)
    sized: dict[str, tuple[int, int, Arch]] = {}
    h, w = dataset.image_size
    for _ in range(pool):
        arch = space.sample(rng, dataset.image_size)
        if arch.key in sized:
            continue
        with torch.device("meta"):  # parameter count without allocating
            model = space.build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
        params = sum(p.numel() for p in model.parameters())
        if max_params is None or params <= max_params:
            cost = 0
            if flops:
                cost = count_flops(space.build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels),
                                   (dataset.in_channels, h, w))
            sized[arch.key] = (params, cost, arch)
    return sorted(sized.values(), key=lambda c: (c[0], c[2].key))


EDGE_BAND = (0.7, 1.1)  # an arch is "near" an edge when its cost lies in [0.7, 1.1] × the edge
EDGE_SHARE = 2 / 3  # with edges, this share of the archs is drawn near them, the rest spread over sizes


def stratified_archs(space, dataset: Dataset, n: int, *, seed: int, pool: int = 600,
                     max_params: int | None = None, edges: Sequence[tuple[str, float]] = ()) -> list[Arch]:
    """``n`` distinct archs from ``pool`` seeded samples, spread evenly over log-parameters.

    With ``edges`` (``("params" | "flops", value)`` budget edges), ``EDGE_SHARE`` of them are
    drawn near the edges instead, in equal numbers, each edge's spread over its band
    (``EDGE_BAND``): where a winner rule's choice within a budget is decided.
    """
    costs = _sample_costs(space, dataset, seed=seed, pool=pool, max_params=max_params,
                          flops=any(resource == "flops" for resource, _ in edges))
    if len(costs) < n:
        raise UsageError(f"only {len(costs)} distinct archs of {space.name} fit; ask for fewer --archs or raise --max-params")
    taken: set[int] = set()
    near_edges = round(n * EDGE_SHARE) if edges else 0
    for e, (resource, edge) in enumerate(edges):
        want = near_edges // len(edges) + (e < near_edges % len(edges))
        column = 0 if resource == "params" else 1
        band = [i for i, c in enumerate(costs) if i not in taken and EDGE_BAND[0] * edge <= c[column] <= EDGE_BAND[1] * edge]
        if len(band) < want:
            raise UsageError(f"only {len(band)} sampled archs of {space.name} lie near the {resource} edge {edge:,.0f}; "
                             "raise --pool or move the edge")
        taken.update(band[i] for i in _spread([costs[i][column] for i in band], want))
    rest = [i for i in range(len(costs)) if i not in taken]
    taken.update(rest[i] for i in _spread([costs[i][0] for i in rest], n - len(taken)))
    return [costs[i][2] for i in sorted(taken)]


def _rank_corr(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    from scipy import stats

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan"), float("nan")
    return float(stats.kendalltau(x, y).statistic), float(stats.spearmanr(x, y).statistic)


def _residuals(values: Sequence[float], log_params: Sequence[float]) -> list[float]:
    import numpy as np

    a = np.column_stack([np.ones(len(log_params)), np.asarray(log_params, float)])  # (n, 2)
    v = np.asarray(values, float)  # (n,)
    coef, *_ = np.linalg.lstsq(a, v, rcond=None)
    return list(v - a @ coef)


def size_controlled_tau(scores: Sequence[float], acc: Sequence[float], params: Sequence[float]) -> float:
    """Kendall τ of the residuals of ``scores`` and ``acc`` after a least-squares fit on log-params each."""
    from scipy import stats

    logp = [math.log(p) for p in params]
    rs, ra = _residuals(scores, logp), _residuals(acc, logp)
    if max(rs) - min(rs) <= 1e-9 * max(1.0, max(abs(v) for v in scores)):
        return float("nan")  # a function of log-params alone (params, near enough flops): nothing left to rank
    return float(stats.kendalltau(rs, ra).statistic)


def top_k_hit_rate(scores: Sequence[float], acc: Sequence[float], k: int = 5) -> float:
    """Share of the ``k`` most accurate archs that are among the proxy's ``k`` best."""
    best = set(sorted(range(len(acc)), key=lambda i: -acc[i])[:k])
    picked = set(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])
    return len(best & picked) / k


def regret_under_budget(scores: Sequence[float], acc: Sequence[float], params: Sequence[float],
                        budgets: Sequence[float]) -> list[float]:
    """Per budget: best accuracy within it minus the accuracy of the proxy's best within it."""
    out = []
    for budget in budgets:
        inside = [i for i in range(len(params)) if params[i] <= budget]
        if not inside:
            out.append(float("nan"))
            continue
        true_best = max(acc[i] for i in inside)
        pick = max(inside, key=lambda i: (scores[i], -params[i]))
        out.append(true_best - acc[pick])
    return out


def proxy_metrics(scores: Sequence[float], acc: Sequence[float], params: Sequence[float],
                  budgets: Sequence[float]) -> dict[str, Any]:
    """Every figure of merit of one proxy against distilled accuracy."""
    tau, rho = _rank_corr(scores, acc)
    regrets = regret_under_budget(scores, acc, params, budgets)
    finite = [r for r in regrets if not math.isnan(r)]
    return {
        "kendall_tau": tau,
        "spearman_rho": rho,
        "size_controlled_tau": size_controlled_tau(scores, acc, params),
        "top5_hit": top_k_hit_rate(scores, acc, 5),
        "mean_regret": sum(finite) / len(finite) if finite else float("nan"),
        "regret_by_budget": {str(int(b)): r for b, r in zip(budgets, regrets)},
    }


def _read_students(path: Path, default_seed: int) -> dict[tuple[str, int], dict[str, Any]]:
    """Finished students by (arch key, training seed); a torn last line (a crash mid-write) is ignored.

    Rows written before seeds were recorded count as ``default_seed``, the study's first seed.
    """
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[(row["key"], row.get("seed", default_seed))] = row
    return done


def _accuracy(row: dict[str, Any]) -> float:
    return row["test_acc"] if row.get("test_acc") is not None else row["val_acc"]


def seed_reliability(accs: Sequence[Sequence[float]], params: Sequence[float],
                     budgets: Sequence[float]) -> dict[str, Any]:
    """How well one training seed's accuracies predict another's: the training noise in the ground truth.

    ``accs[i][r]`` is arch ``i`` trained with seed ``r``. Kendall τ and size-controlled τ are
    averaged over seed pairs; ``mean_regret`` is the regret under budget of picking by one
    seed's accuracy, judged by another's, averaged over ordered pairs. Empty with one seed.
    """
    import statistics

    seeds = len(accs[0]) if accs else 0
    if seeds < 2:
        return {}
    column = [[row[r] for row in accs] for r in range(seeds)]
    pairs = [(a, b) for a in range(seeds) for b in range(seeds) if a != b]
    taus = [_rank_corr(column[a], column[b])[0] for a, b in pairs if a < b]
    controlled = [size_controlled_tau(column[a], column[b], params) for a, b in pairs if a < b]
    regrets = []
    for a, b in pairs:
        finite = [r for r in regret_under_budget(column[a], column[b], params, budgets) if not math.isnan(r)]
        regrets.append(sum(finite) / len(finite))
    means = [statistics.fmean(row) for row in accs]
    return {
        "seeds": seeds,
        "kendall_tau": statistics.fmean(taus),
        "size_controlled_tau": statistics.fmean(controlled),
        "mean_regret": statistics.fmean(regrets),
        "acc_sd_within_arch": statistics.fmean(statistics.stdev(row) for row in accs),
        "acc_sd_between_archs": statistics.stdev(means),
    }


def train_and_record(arch: Arch, seed: int, space, teacher: Teacher, dataset: Dataset, out_dir: Path,
                     config: CorrelateConfig) -> dict[str, Any]:
    """One step of a study: distil ``arch`` at ``seed`` into ``out_dir/students/<name>`` (resuming its
    checkpoint), append its learning curve and its row to the study's files, and return the row.

    The name is the arch key's CRC32, suffixed ``-s<seed>`` at a seed other than ``config.train.seed``,
    so a caller that trains archs of its own choosing fills the same study ``run_correlate`` would."""
    from kdsearch.distill.stage import distill_student
    from kdsearch.proxies import count_flops

    name = f"{zlib.crc32(arch.key.encode()):08x}" + ("" if seed == config.train.seed else f"-s{seed}")
    work = out_dir / "students" / name
    resume = (work / CHECKPOINT).exists()
    t0 = time.perf_counter()
    metrics = distill_student(arch, teacher, dataset, work, replace(config.train, seed=seed), resume=resume,
                              space_spec=config.space)
    train_s = time.perf_counter() - t0
    if (work / CURVE_LOG).exists():  # before the student's line: a resumed study may repeat a curve, never lose one
        append_line(out_dir / CORRELATE_CURVES, {"key": arch.key, "seed": seed, **read_json(work / CURVE_LOG)})
    model = space.build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    h, w = dataset.image_size
    row = {"key": arch.key, "arch": arch.to_dict(), "params": sum(p.numel() for p in model.parameters()),
           "flops": count_flops(model, (dataset.in_channels, h, w)), "val_acc": metrics["val_acc"],
           "test_acc": metrics["test_acc"], "train_s": train_s, "resumed": resume,
           "epochs": config.train.epochs, "seed": seed}
    append_line(out_dir / CORRELATE_STUDENTS, row)
    return row


def score_variants(space, archs: list[Arch], teacher: Teacher, dataset: Dataset, config: CorrelateConfig,
                    progress: Progress) -> list[dict[str, float]]:
    """Scores of every arch under every proxy variant: ``name`` (main), ``name@random``, ``name@b16``..."""
    from kdsearch.models.features import locate_parts
    from kdsearch.proxies import PROXIES, create_proxy, score_candidate, teacher_stats
    from kdsearch.spaces.candidates import build_candidate

    names = list(dict.fromkeys(config.proxies or PROXIES.names()))
    for base in ("diswot_semantic", "diswot_relation", *BASELINES):  # weight sweep and baselines need these
        if base not in names:
            names.append(base)
    proxies = {n: create_proxy(n) for n in names}
    aware = {n: p for n, p in proxies.items() if p.needs_teacher}
    main_init = config.teacher_inits[0]
    variants: list[tuple[str, dict, int, str]] = [("", proxies, config.proxy_batch, main_init)]
    for init in config.teacher_inits[1:]:
        variants.append((f"@{init}", aware, config.proxy_batch, init))
    for b in config.extra_batches:
        variants.append((f"@b{b}", aware, b, main_init))
    scores: list[dict[str, float]] = [{} for _ in archs]
    progress.start("score", "scoring", len(archs) * len(variants))
    for suffix, group, size, init in variants:
        if not group:
            continue
        batch = fixed_batch(dataset, size, config.seed)
        module = teacher.module if init == "pretrained" else teacher.fresh_copy(config.seed)
        parts = locate_parts(module, batch[0])
        stats = teacher_stats(group, module, batch, parts)
        for i, arch in enumerate(archs):
            student = build_candidate(space, arch, dataset.num_classes, dataset.in_channels, config.seed)  # as the search does
            for name, value in score_candidate(student, batch, group, stats, seed=config.seed).items():
                scores[i][name + suffix] = value
            progress.advance("score")
    progress.finish("score")
    for s in scores:  # DisWOT's combined score at other term weights: -(L_sem + r·L_rel)
        for suffix in {k[len("diswot_semantic"):] for k in s if k.startswith("diswot_semantic")}:
            sem, rel = s.get("diswot_semantic" + suffix), s.get("diswot_relation" + suffix)
            if sem is None or rel is None:
                continue
            for ratio in DISWOT_WEIGHTS:
                s[f"diswot[w_rel={ratio:g}]{suffix}"] = sem + ratio * rel
    return scores


def run_correlate(
    teacher: Teacher,
    dataset: Dataset,
    out_dir: Path,
    config: CorrelateConfig,
    *,
    progress: Progress = NULL_PROGRESS,
) -> CorrelateResult:
    """Distil ``config.archs`` stratified archs (resumable), score them, and rank every proxy.

    Writes ``students.jsonl``, ``scores.csv`` (one row per arch), ``correlate.csv`` (one row
    per proxy variant), ``correlate.json`` and ``scatter.png`` / ``size_controlled.png`` to ``out_dir``.
    """
    from kdsearch.spaces import load_space

    space = load_space(config.space)
    out_dir.mkdir(parents=True, exist_ok=True)
    archs = stratified_archs(space, dataset, config.archs, seed=config.seed, pool=config.pool, max_params=config.max_params,
                             edges=parse_edges(config.edges))
    students_path = out_dir / CORRELATE_STUDENTS
    seeds = [config.train.seed + r for r in range(config.repeats)]
    done = _read_students(students_path, config.train.seed)
    # seed-major: every arch is trained once before any is trained twice, so a cut-short study is still whole
    todo = [(a, seed) for seed in seeds for a in archs if (a.key, seed) not in done]
    progress.start("distill", f"distil {len(todo)} students ({len(archs) * len(seeds) - len(todo)} done before)", len(todo))
    for arch, seed in todo:
        done[(arch.key, seed)] = row = train_and_record(arch, seed, space, teacher, dataset, out_dir, config)
        progress.advance("distill", acc=_accuracy(row))
    progress.finish("distill")

    students = []
    for a in archs:
        runs = [done[(a.key, seed)] for seed in seeds]
        accs = [_accuracy(r) for r in runs]
        students.append({**runs[0], "accs": accs, "acc": sum(accs) / len(accs),
                         "val_acc": sum(r["val_acc"] for r in runs) / len(runs),
                         "train_s": sum(r["train_s"] for r in runs)})
    scores = score_variants(space, archs, teacher, dataset, config, progress)
    for s, sc in zip(students, scores):
        s["scores"] = sc
    acc = [s["acc"] for s in students]
    params = [s["params"] for s in students]
    ordered = sorted(params)
    budgets = [ordered[max(0, math.ceil(q * len(ordered)) - 1)] for q in config.budgets]
    metrics = []
    for name in scores[0]:
        column = [sc[name] for sc in scores]
        if any(not math.isfinite(v) for v in column):
            continue  # a proxy that overflowed on some arch cannot rank them all
        if name in BASELINES:  # costs grow multiplicatively: log keeps every rank, and log-params residualises to 0
            column = [math.log(max(v, 1.0)) for v in column]
        metrics.append({"proxy": name, **proxy_metrics(column, acc, params, budgets)})
    metrics.sort(key=lambda m: -(m["size_controlled_tau"] if math.isfinite(m["size_controlled_tau"]) else -2))
    reliability = seed_reliability([s["accs"] for s in students], params, budgets)
    _write_outputs(out_dir, students, metrics, config, budgets, reliability)
    return CorrelateResult(students, metrics, out_dir, trained_now=len(todo), reliability=reliability)


def _write_outputs(out_dir: Path, students: list[dict[str, Any]], metrics: list[dict[str, Any]],
                   config: CorrelateConfig, budgets: list[int], reliability: dict[str, Any]) -> None:
    from kdsearch.report.plots import plot_proxy_scatter

    buf = io.StringIO()
    names = list(students[0]["scores"])
    writer = csv.writer(buf)
    writer.writerow(["arch", "params", "flops", "acc", "val_acc", "train_s", "acc_by_seed", *names])
    for s in students:
        writer.writerow([json.dumps(s["arch"], sort_keys=True), s["params"], s["flops"], s["acc"], s["val_acc"],
                         f"{s['train_s']:.2f}", json.dumps(s["accs"]), *[s["scores"][n] for n in names]])
    write_text(out_dir / "scores.csv", buf.getvalue())
    buf = io.StringIO()
    writer = csv.writer(buf)
    cols = ["kendall_tau", "spearman_rho", "size_controlled_tau", "top5_hit", "mean_regret"]
    writer.writerow(["proxy", *cols])
    for m in metrics:
        writer.writerow([m["proxy"], *[f"{m[c]:.4f}" for c in cols]])
    write_text(out_dir / "correlate.csv", buf.getvalue())
    plain = asdict(config)
    write_json(out_dir / CORRELATE_RECORD, {"config": plain, "budgets": budgets, "metrics": metrics,
                                            "reliability": reliability, "archs": len(students)})
    shown = [m["proxy"] for m in metrics if "@" not in m["proxy"] and "[" not in m["proxy"]]
    acc = [s["acc"] for s in students]
    params = [s["params"] for s in students]
    plot_proxy_scatter({n: [s["scores"][n] for s in students] for n in shown}, acc, params, out_dir / "scatter.png")
    logp = [math.log(p) for p in params]
    residual = {n: _residuals([s["scores"][n] for s in students], logp) for n in shown if n not in BASELINES}
    plot_proxy_scatter(residual, _residuals(acc, logp), params, out_dir / "size_controlled.png",
                       ylabel="accuracy residual", xlabel_suffix=" residual")


def with_train(config: CorrelateConfig, **train: Any) -> CorrelateConfig:
    """``config`` with training options replaced (None values are left alone)."""
    given = {k: v for k, v in train.items() if v is not None}
    return replace(config, train=replace(config.train, **given)) if given else config
