"""What a run directory holds, read once for the HTML page and the terminal summary.

Every stage is optional: a run stopped after the search still has a report, with only the
sections of the stages that ran.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdsearch.errors import ConfigError, UsageError
from kdsearch.files import read_json
from kdsearch.rundir import ExportRecord, QatMetrics, RunDir, TrainMetrics, WinnerRecord, read_leaderboard

__all__ = ["RunContents", "read_run", "key_figures"]


@dataclass
class RunContents:
    """The artifacts of one run directory; None (or empty) for what a stage did not write."""

    run_dir: Path
    config_text: str  # run.yaml as written (the resolved configuration)
    config: dict[str, Any]
    teacher: TrainMetrics | None = None  # teacher/metrics.json
    teacher_model: dict[str, Any] | None = None  # teacher/model.json
    winner: WinnerRecord | None = None  # search/winner.json
    leaderboard: list[dict[str, Any]] = field(default_factory=list)  # search/leaderboard.csv, in the winner rule's order
    distill: TrainMetrics | None = None  # distill/metrics.json
    qat: QatMetrics | None = None  # qat/metrics.json
    export: ExportRecord | None = None  # export/export.json
    summary: dict[str, Any] | None = None  # summary.json (written by `kdsearch run`)
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
    config_path = run_dir / "run.yaml"
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
    if run.leaderboard.is_file():
        contents.leaderboard = read_leaderboard(run.leaderboard)
    contents.distill = TrainMetrics.load_optional(run.distill_metrics)
    contents.qat = QatMetrics.load_optional(run.qat_metrics)
    contents.export = ExportRecord.load_optional(run.export_record)
    contents.summary = _optional_json(run.summary)
    contents.images = {
        "search": _pngs(run_dir / "search", ("pareto.png",)),
        "teacher": _pngs(run_dir / "teacher", ("curves.png",)),
        "distill": _pngs(run_dir / "distill", ("curves.png",)),
        "qat": _pngs(run_dir / "qat", ("curves.png",)),
        "correlate": _pngs(run_dir / "correlate"),
    }
    return contents


def key_figures(run: RunContents) -> dict[str, Any]:
    """The numbers a person looks for first; None where the stage did not run."""
    s = run.summary or {}
    teacher = s.get("teacher", {})
    student = s.get("student", {})
    winner, distill = run.winner, run.distill
    teacher_acc = teacher.get("val_acc")
    if teacher_acc is None:
        teacher_acc = run.teacher.val_acc if run.teacher else (distill.teacher_val_acc if distill else None)
    teacher_params = teacher.get("params", run.teacher.params if run.teacher else None)
    student_params = student.get("params") or (winner.params if winner else (distill.params if distill else None))
    figures: dict[str, Any] = {
        "stages": run.stages,
        "teacher": {"val_acc": teacher_acc, "params": teacher_params, "flops": teacher.get("flops")},
        "student": {
            "arch": winner.arch if winner else student.get("arch"),
            "val_acc": distill.val_acc if distill else None,
            "test_acc": distill.test_acc if distill else None,
            "params": student_params,
            "flops": student.get("flops", winner.flops if winner else None),
        },
        "search": None,
        "qat": None,
        "export": None,
    }
    if winner is not None:
        figures["search"] = {"proxy": winner.proxy, "score": winner.score, "rule": winner.rule, "reason": winner.reason,
                             "complete_trials": winner.complete_trials, "unique_candidates": winner.unique_candidates,
                             "feasible_candidates": winner.feasible_candidates}
    if run.qat is not None:
        figures["qat"] = {"fp32_val_acc": run.qat.fp32_val_acc, "fake_quant_val_acc": run.qat.fake_quant_val_acc,
                          "int8_val_acc": run.qat.int8_val_acc}
    if run.export is not None:
        figures["export"] = {
            kind: {
                "path": f.path,
                "accuracy": f.accuracy,
                "top1_agreement": f.min_top1_agreement,
                "latency_ms_b1": f.p50(1),
                "latency_ms_b32": f.p50(32),
                "size_bytes": f.size_bytes,
                "provider": f.provider_used,
            }
            for kind, f in run.export.files.items()
        }
        figures["teacher"]["onnx_latency_ms_b1"] = run.export.teacher_p50(1)
        figures["teacher"]["onnx_latency_ms_b32"] = run.export.teacher_p50(32)
        figures["student"]["input_size"] = run.export.input_size
    return json.loads(json.dumps(figures, default=str))  # plain JSON types only
