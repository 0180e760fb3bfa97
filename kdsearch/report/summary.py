"""What a run directory holds, read once for the HTML page and the terminal summary.

Every stage is optional: a run stopped after the search still has a report, with only the
sections of the stages that ran.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdsearch.errors import ConfigError, KdsearchError, UsageError
from kdsearch.files import read_json
from kdsearch.ratios import export_speed_warnings
from kdsearch.rundir import (
    CURVES_PLOT,
    PARETO_PLOT,
    ExportRecord,
    QatMetrics,
    RunDir,
    RunSummary,
    SpeedRecord,
    TrainMetrics,
    WinnerRecord,
    read_leaderboard,
)

__all__ = ["RunContents", "read_run", "key_figures", "trained_student"]


@dataclass
class RunContents:
    """The artifacts of one run directory; None (or empty) for what a stage did not write."""

    run_dir: Path
    config_text: str  # run.yaml as written (the resolved configuration)
    config: dict[str, Any]
    teacher: TrainMetrics | None = None  # teacher/metrics.json
    teacher_model: dict[str, Any] | None = None  # teacher/model.json
    winner: WinnerRecord | None = None  # search/winner.json
    speed: SpeedRecord | None = None  # search/speed.json: the teacher and the finalists timed during the search
    leaderboard: list[dict[str, Any]] = field(default_factory=list)  # search/leaderboard.csv, in the winner rule's order
    distill: TrainMetrics | None = None  # distill/metrics.json
    student_model: dict[str, Any] | None = None  # distill/student.json: the student that was trained (its arch)
    qat: QatMetrics | None = None  # qat/metrics.json
    export: ExportRecord | None = None  # export/export.json
    summary: RunSummary | None = None  # summary.json (written by `kdsearch run`)
    images: dict[str, list[Path]] = field(default_factory=dict)  # section -> PNGs, in page order

    @property
    def stages(self) -> list[str]:
        """The stages that left results, in pipeline order."""
        done = {"teacher": self.teacher, "search": self.winner, "distill": self.distill, "qat": self.qat,
                "export": self.export}
        return [name for name, value in done.items() if value is not None]


def _optional_json(path: Path) -> dict[str, Any] | None:
    return read_json(path, what=path.name) if path.is_file() else None


def _pngs(directory: Path, names: tuple[str, ...] | None = None) -> list[Path]:
    if not directory.is_dir():
        return []
    if names is not None:
        return [directory / n for n in names if (directory / n).is_file()]
    return sorted(directory.glob("*.png"))


def read_run(run_dir: Path) -> RunContents:
    """Read what ``run_dir`` holds; a :class:`UsageError` when it is not a run directory."""
    import yaml

    run_dir = Path(run_dir)
    config_path = RunDir(run_dir).config
    if not config_path.is_file():
        raise UsageError(
            f"{run_dir} is not a kdsearch run directory (no run.yaml); give the --out folder of a `kdsearch run`"
        )
    config_text = config_path.read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{config_path} is not valid YAML ({e}); fix it or re-run `kdsearch run`") from None
    contents = RunContents(run_dir=run_dir, config_text=config_text, config=config if isinstance(config, dict) else {})
    run = RunDir(run_dir)
    contents.teacher = TrainMetrics.load_optional(run.teacher_metrics)
    contents.teacher_model = _optional_json(run.teacher / "model.json")
    contents.winner = WinnerRecord.load_optional(run.winner)
    contents.speed = SpeedRecord.load_optional(run.speed)
    if run.leaderboard.is_file():
        contents.leaderboard = read_leaderboard(run.leaderboard)
    contents.distill = TrainMetrics.load_optional(run.distill_metrics)
    contents.student_model = _optional_json(run.student_json)
    contents.qat = QatMetrics.load_optional(run.qat_metrics)
    contents.export = ExportRecord.load_optional(run.export_record)
    contents.summary = RunSummary.load_optional(run.summary)
    contents.images = {
        "search": _pngs(run_dir / "search", (PARETO_PLOT,)),
        "teacher": _pngs(run_dir / "teacher", (CURVES_PLOT,)),
        "distill": _pngs(run_dir / "distill", (CURVES_PLOT,)),
        "qat": _pngs(run_dir / "qat", (CURVES_PLOT,)),
        "correlate": _pngs(run_dir / "correlate"),
    }
    return contents


def _arch_key(arch: Any) -> str:
    return json.dumps(arch, sort_keys=True, separators=(",", ":"))


def _input_size(run: RunContents) -> list[int] | None:
    """(C, H, W) the student takes: from export.json, else summary.json."""
    if run.export is not None and run.export.input_size:
        return list(run.export.input_size)
    return run.summary.onnx.get("input_size") if run.summary is not None else None


def _counted_flops(model: dict[str, Any], input_size: list[int] | None) -> int | None:
    """FLOPs of the network ``distill/student.json`` describes; None when it cannot be built here."""
    if not input_size or not isinstance(model.get("num_classes"), int) or not isinstance(model.get("in_channels"), int):
        return None
    from kdsearch.proxies import count_flops
    from kdsearch.spaces.catalog import build_from_description

    try:
        network = build_from_description(model, model["num_classes"], model["in_channels"])
    except KdsearchError:
        return None
    return count_flops(network, tuple(input_size))


def trained_student(run: RunContents) -> dict[str, Any]:
    """The arch, params and FLOPs of the student that was distilled (``distill/student.json``), which
    ``kdsearch distill --student`` makes another than the search's winner; the winner before a distillation."""
    winner, model = run.winner, run.student_model or {}
    summary_student = run.summary.student if run.summary is not None else {}
    arch = model.get("arch") or (winner.arch if winner else summary_student.get("arch"))
    if arch is None:
        return {"arch": None, "params": run.distill.params if run.distill else None, "flops": None,
                "is_search_winner": False}
    key = _arch_key(arch)
    is_winner = winner is not None and key == _arch_key(winner.arch)
    params = run.distill.params if run.distill else (winner.params if is_winner else None)
    if is_winner:
        flops = winner.flops
    else:
        row = next((r for r in run.leaderboard if r.get("arch") == key and r.get("flops") is not None), None)
        if row is not None:
            flops = row["flops"]
        elif summary_student.get("arch") is not None and _arch_key(summary_student["arch"]) == key:
            flops = summary_student.get("flops")
        else:
            flops = _counted_flops(model, _input_size(run))
    return {"arch": arch, "params": params, "flops": flops, "is_search_winner": is_winner}


def _file_figures(export: ExportRecord, kind: str) -> dict[str, Any]:
    f = export.files[kind]
    batches = export.latency_batches
    figures = {"path": f.path, "accuracy": f.accuracy, "top1_agreement": f.min_top1_agreement,
               **{f"latency_ms_b{b}": f.p50(b) for b in batches},
               **{f"speedup_b{b}": f.speedup_at(b) for b in batches},  # over the teacher, timed side by side
               "size_bytes": f.size_bytes, "provider": f.provider_used, "recommended": f.path == export.shipped.path}
    if kind != "fp32":
        figures.update({f"speedup_vs_fp32_b{b}": f.speedup_vs_fp32_at(b) for b in batches})
    return figures


def key_figures(run: RunContents) -> dict[str, Any]:
    """The numbers a person looks for first; None where the stage did not run.

    Every speed-up is one ``export.json`` records: the ratio of two ONNX Runtime medians timed
    side by side; none is computed here from latencies taken apart.
    """
    teacher = run.summary.teacher if run.summary is not None else {}
    winner, distill = run.winner, run.distill
    teacher_acc = teacher.get("val_acc")
    if teacher_acc is None:
        teacher_acc = run.teacher.val_acc if run.teacher else (distill.teacher_val_acc if distill else None)
    teacher_params = teacher.get("params", run.teacher.params if run.teacher else None)
    student = trained_student(run)
    figures: dict[str, Any] = {
        "stages": run.stages,
        "teacher": {"val_acc": teacher_acc, "params": teacher_params, "flops": teacher.get("flops")},
        "student": {
            "arch": student["arch"],
            "is_search_winner": student["is_search_winner"],
            "val_acc": distill.val_acc if distill else None,
            "test_acc": distill.test_acc if distill else None,
            "params": student["params"],
            "flops": student["flops"],
        },
        "search": None,
        "qat": None,
        "export": None,
        "latency_batch": None,
        "recommended": None,
        "speed_warnings": [],
    }
    if winner is not None:
        figures["search"] = {"proxy": winner.proxy, "score": winner.score, "rule": winner.rule, "reason": winner.reason,
                             "complete_trials": winner.complete_trials, "unique_candidates": winner.unique_candidates,
                             "feasible_candidates": winner.feasible_candidates}
    if run.qat is not None:
        figures["qat"] = {"fp32_val_acc": run.qat.fp32_val_acc, "fake_quant_val_acc": run.qat.fake_quant_val_acc,
                          "int8_val_acc": run.qat.int8_val_acc}
    if run.export is not None:
        export = run.export
        figures["export"] = {kind: _file_figures(export, kind) for kind in export.files}
        for b in export.latency_batches:
            figures["teacher"][f"onnx_latency_ms_b{b}"] = export.teacher_p50(b)
        figures["student"]["input_size"] = export.input_size
        figures["latency_batch"] = export.latency_batches[-1]
        figures["recommended"] = export.shipped.path
        figures["speed_warnings"] = export_speed_warnings(export)
    return json.loads(json.dumps(figures, default=str))  # plain JSON types only
