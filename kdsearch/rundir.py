"""The run-directory contract: where every stage's files live, and what its JSON files hold.

The layout lives here and nowhere else. Stages write into a folder they are given; the
pipeline maps a :class:`RunDir` onto those folders. Each JSON file a stage writes is a typed
record below, and the writer and every reader use the same class, so a renamed key fails a
test instead of silently blanking a report cell::

    runs/<name>/
      run.yaml  kdsearch.log  summary.json  report.html
      teacher/  model.json model.safetensors metrics.json (TrainMetrics) curves.png
      search/   space.yaml study.db leaderboard.csv winner.json (WinnerRecord) speed.json (SpeedRecord) pareto.png
      race/     race.json rungs.png, and one folder per finalist with its last.ckpt (the short-distillation race)
      distill/  student.json student.safetensors metrics.json (TrainMetrics) curves.png last.ckpt [curve.json]
      qat/      qat.json (QatModel) student.qat.safetensors metrics.json (QatMetrics) curves.png last.ckpt
      export/   student.onnx student.ptq.onnx student.qat.onnx teacher.onnx export.json (ExportRecord) export.log
      correlate/  correlate.json students.jsonl [curves.jsonl] (``kdsearch correlate``)

A module that writes into a folder it is given (not a :class:`RunDir`) names its files with the
constants below or a record's ``FILE``; no other module spells a file name of this layout.
"""
from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

from kdsearch.errors import ConfigError
from kdsearch.files import read_json, write_json

__all__ = [
    "RunDir",
    "Record",
    "TrainMetrics",
    "QatMetrics",
    "QatModel",
    "WinnerRecord",
    "SpeedRecord",
    "ExportedFile",
    "ExportRecord",
    "RaceRecord",
    "RunSummary",
    "INT8_MODES",
    "read_leaderboard",
    "RUN_CONFIG",
    "RUN_LOG",
    "REPORT",
    "LEADERBOARD",
    "PARETO_PLOT",
    "STUDY_DB",
    "SEARCHED_SPACE",
    "RACE_PLOT",
    "CURVES_PLOT",
    "CURVE_LOG",
    "CHECKPOINT",
    "STUDENT_ARCH",
    "STUDENT_WEIGHTS",
    "QAT_META",
    "QAT_WEIGHTS",
    "EXPORT_LOG",
    "TEACHER_ONNX",
    "CORRELATE_RECORD",
    "CORRELATE_STUDENTS",
    "CORRELATE_CURVES",
]

INT8_MODES = ("ptq", "qat")  # the int8 files an export can hold beside the fp32 one

# File names of the layout above (the JSON records' names are their classes' FILE).
RUN_CONFIG = "run.yaml"  # the resolved RunConfig
RUN_LOG = "kdsearch.log"  # the libraries' chatter, captured
REPORT = "report.html"
LEADERBOARD = "leaderboard.csv"  # search/: one row per scored trial (read_leaderboard)
PARETO_PLOT = "pareto.png"
STUDY_DB = "study.db"  # search/: the default SQLite Optuna storage
SEARCHED_SPACE = "space.yaml"  # search/: the definition of the space searched
RACE_PLOT = "rungs.png"
CURVES_PLOT = "curves.png"  # every training folder: the learning curves
CURVE_LOG = "curve.json"  # a distillation's learning curve, under curve_every
CHECKPOINT = "last.ckpt"  # every training folder: the state to resume from
STUDENT_ARCH = "student.json"  # distill/: the student's arch and metadata
STUDENT_WEIGHTS = "student.safetensors"
QAT_META = "qat.json"  # qat/: the quantized student's arch, recipe and quantizer settings
QAT_WEIGHTS = "student.qat.safetensors"  # qat/: the prepared (fake-quant) student's state
EXPORT_LOG = "export.log"  # export/: the exporters' captured output
TEACHER_ONNX = "teacher.onnx"  # export/: the teacher, timed beside the student's files
CORRELATE_RECORD = "correlate.json"  # correlate/: the study's config, budgets and metrics
CORRELATE_STUDENTS = "students.jsonl"  # correlate/: one finished student per line (the resume log)
CORRELATE_CURVES = "curves.jsonl"  # correlate/: each student's learning curve, under train.curve_every

R = TypeVar("R", bound="Record")


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created until a stage writes)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # top level
    @property
    def config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def log(self) -> Path:
        return self.root / RUN_LOG

    @property
    def summary(self) -> Path:
        return self.root / RunSummary.FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT

    # one folder per stage
    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def search(self) -> Path:
        return self.root / "search"

    @property
    def race(self) -> Path:
        return self.root / "race"

    @property
    def distill(self) -> Path:
        return self.root / "distill"

    @property
    def qat(self) -> Path:
        return self.root / "qat"

    @property
    def export(self) -> Path:
        return self.root / "export"

    # the files other stages read
    @property
    def winner(self) -> Path:
        return self.search / WinnerRecord.FILE

    @property
    def speed(self) -> Path:
        return self.search / SpeedRecord.FILE

    @property
    def leaderboard(self) -> Path:
        return self.search / LEADERBOARD

    @property
    def pareto_plot(self) -> Path:
        return self.search / PARETO_PLOT

    @property
    def race_record(self) -> Path:
        return self.race / RaceRecord.FILE

    @property
    def race_plot(self) -> Path:
        return self.race / RACE_PLOT

    @property
    def searched_space(self) -> Path:
        """The definition of the space the run searched, copied from its YAML: later stages,
        ``--resume`` and a copy of the run on another machine read this, not the user's file."""
        return self.search / SEARCHED_SPACE

    @property
    def distill_metrics(self) -> Path:
        return self.distill / TrainMetrics.FILE

    @property
    def teacher_metrics(self) -> Path:
        return self.teacher / TrainMetrics.FILE

    @property
    def qat_metrics(self) -> Path:
        return self.qat / QatMetrics.FILE

    @property
    def export_record(self) -> Path:
        return self.export / ExportRecord.FILE

    @property
    def student_json(self) -> Path:
        return self.distill / STUDENT_ARCH

    @property
    def student_weights(self) -> Path:
        return self.distill / STUDENT_WEIGHTS


class Record:
    """A JSON file a stage writes: a frozen dataclass with strict loading.

    ``load`` refuses unknown and missing keys with a :class:`ConfigError` naming the file, so a
    writer and its readers cannot drift apart unnoticed.
    """

    FILE: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any], where: str = "") -> R:
        where = where or cls.FILE
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} does not hold a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {', '.join(unknown)}; it was written by another kdsearch version")
        try:
            return cls(**dict(data))  # type: ignore[call-arg]
        except TypeError as e:
            raise ConfigError(f"{where} is incomplete ({e}); re-run the stage that writes it") from None

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[R], path: Path) -> R:
        return cls.from_dict(read_json(path, what=str(path)), where=str(path))

    @classmethod
    def load_optional(cls: type[R], path: Path) -> R | None:
        return cls.load(path) if Path(path).is_file() else None


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class TrainMetrics(Record):
    """``metrics.json`` of a trained network (teacher or distilled student)."""

    FILE: ClassVar[str] = "metrics.json"

    val_acc: float | None
    params: int
    history: list[dict[str, Any]]  # one entry per epoch: train_loss (by term), train_acc, val_acc, lr, ...
    val_top5: float | None = None
    test_acc: float | None = None
    teacher: str | None = None  # the teacher's source (distillation only)
    teacher_val_acc: float | None = None
    agreement: float | None = None  # student-teacher top-1 agreement on the validation split
    loss: str | None = None  # e.g. "kd:1,ce:1"
    assistant: dict[str, Any] | None = None  # teacher-assistant distillation: the assistant's arch and figures
    # how a distilled student started: {"mode": "random"} (with a "reason" when --init auto could not
    # inherit) or {"mode": "inherit", "teacher", "family", "fraction", "inherited", "total", "parameters"}:
    # the share of its parameter values cut from the teacher and which parameters hold them, or
    # {"mode": "pruned", "teacher", "teacher_sha256"} for a student of --space pruned (its teacher cut down)
    init: dict[str, Any] | None = None


@dataclass(frozen=True)
class QatMetrics(Record):
    """``qat/metrics.json``: the student's accuracy before QAT, fake-quantized and as real int8."""

    FILE: ClassVar[str] = "metrics.json"

    fp32_val_acc: float
    fake_quant_val_acc: float
    int8_val_acc: float
    teacher_val_acc: float | None
    val_images: int
    loss: str
    recipe: str
    epochs: int
    history: list[dict[str, Any]]


@dataclass(frozen=True)
class QatModel(Record):
    """``qat/qat.json``: what rebuilds the quantized student around ``student.qat.safetensors``."""

    FILE: ClassVar[str] = QAT_META

    student: dict[str, Any]  # the student's description: arch, space, family, model, num_classes, in_channels, normalization
    recipe: str  # the quantization recipe (kdsearch.quant.QUANTIZERS)
    image_size: list[int]  # (H, W) the prepared graph was captured at
    config: dict[str, Any]  # the QatConfig it was trained with


@dataclass(frozen=True)
class WinnerRecord(Record):
    """``search/winner.json``: the chosen architecture, the rule that chose it, and why."""

    FILE: ClassVar[str] = "winner.json"

    arch: dict[str, Any]  # an Arch as a dict
    rule: str  # largest | best | knee
    proxy: str
    score: float
    params: int
    flops: int
    latency_ms: float | None
    trial: int
    complete_trials: int
    unique_candidates: int
    feasible_candidates: int
    config: dict[str, Any]  # the resolved SearchConfig
    reason: str = ""  # one line: why this candidate won under ``rule``
    race: dict[str, Any] | None = None  # the short-distillation race that chose it (kdsearch.search.race); None: no race
    speedup: dict[str, float] | None = None  # batch ("1", "32") -> measured speed-up over the teacher (search/speed.json)
    # what the winner starts from when distilled under the run's --init: mode (inherit | random | pruned) and,
    # inherited, which tensors and what fraction of its parameters come from the teacher
    init: dict[str, Any] | None = None


@dataclass(frozen=True)
class SpeedRecord(Record):
    """``search/speed.json``: the teacher timed at the start of the search, and the candidates timed against it.

    Every speed-up is the ratio of two ONNX Runtime medians from one interleaved loop
    (:mod:`kdsearch.export.timing`), at each batch in ``batches``.
    """

    FILE: ClassVar[str] = "speed.json"

    provider: str  # ONNX Runtime provider: cpu | cuda | tensorrt
    threads: int | None  # intra-op threads (None: ONNX Runtime's default)
    batches: list[int]  # [1, latency batch]
    teacher_ms: dict[str, float]  # batch -> the teacher's p50 latency when the search started
    speedup_budget: float | None  # --speedup: the least speed-up the student must reach at every batch
    timed: list[dict[str, Any]]  # finalists timed for real: arch, arch_key, params, flops, score,
    #   predicted_ms/ms/speedup {batch: value}, meets_budget
    replaced: list[str]  # one line per winner replaced because its real timing missed the budget
    table: dict[str, Any] | None = None  # the latency model used for every candidate: its cache path per batch


@dataclass(frozen=True)
class ExportedFile(Record):
    """One ONNX file of an export, verified and measured in ONNX Runtime."""

    FILE: ClassVar[str] = ""

    path: str  # relative to the export folder
    size_bytes: int
    opset: int
    provider_used: str
    parity: dict[str, Any]  # per batch: agreement with the PyTorch reference
    accuracy: float
    latency_ms: dict[str, dict[str, float]]  # "batch_1" -> {"p50": ..., "p90": ..., ...}
    calib_images: int | None = None  # PTQ: the training images that calibrated it
    speedup: dict[str, float] | None = None  # batch ("1", "32") -> times faster than the teacher (below 1: slower),
    #   both timed in one interleaved loop; None: no teacher was timed
    speedup_vs_fp32: dict[str, float] | None = None  # int8 files: batch -> times faster than the fp32 student, same loop

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for key in ("calib_images", "speedup", "speedup_vs_fp32"):  # only the files they apply to have one
            if data[key] is None:
                del data[key]
        return data

    def p50(self, batch: int) -> float | None:
        return self.latency_ms.get(f"batch_{batch}", {}).get("p50")

    def speedup_at(self, batch: int) -> float | None:
        """Times faster than the teacher at ``batch`` (timed interleaved with it); None when not timed."""
        return (self.speedup or {}).get(str(batch))

    def speedup_vs_fp32_at(self, batch: int) -> float | None:
        """An int8 file: times faster than the fp32 student at ``batch``; None for the fp32 file."""
        return (self.speedup_vs_fp32 or {}).get(str(batch))

    @property
    def min_top1_agreement(self) -> float | None:
        values = [p["top1_agreement"] for p in self.parity.values() if isinstance(p, dict) and "top1_agreement" in p]
        return min(values) if values else None


@dataclass(frozen=True)
class ExportRecord(Record):
    """``export/export.json``: the fp32 file and any int8 twins, side by side."""

    FILE: ClassVar[str] = "export.json"

    kdsearch_version: str
    opset: int
    provider_requested: str
    parity_rule: dict[str, Any]
    files: dict[str, ExportedFile]  # "fp32", "ptq", "qat"
    pytorch_eager: dict[str, Any]
    log: str
    student_digest: str | None = None  # SHA-256 of the exported student's weights: int8 files of another student are not kept
    input_size: list[int] | None = None  # (C, H, W) the student expects (also in each file's ONNX metadata)
    teacher: dict[str, Any] | None = None  # the teacher in ONNX Runtime: path, size_bytes, latency_ms; or {"error": why}
    timing: dict[str, Any] | None = None  # how every latency was taken: batches, threads, runs, warmup (one
    #   interleaved loop per batch over the teacher and every file); None: an export.json of an older version
    recommended: str | None = None  # the file to ship: fp32, unless an int8 file is faster than it at every batch
    memory: dict[str, Any] | None = None  # the memory guard's choice: budget_bytes, budget_source, held_bytes (the
    #   process's RSS before the batches), per_image_bytes, accuracy_batch, calib_batch (None: no PTQ); None: older

    def __post_init__(self) -> None:
        files = {k: v if isinstance(v, ExportedFile) else ExportedFile.from_dict(v, f"export.json files.{k}")
                 for k, v in self.files.items()}
        object.__setattr__(self, "files", files)

    @property
    def fp32(self) -> ExportedFile:
        return self.files["fp32"]

    def teacher_p50(self, batch: int) -> float | None:
        """The teacher's ONNX Runtime p50 latency at ``batch``; None when it was not measured."""
        return ((self.teacher or {}).get("latency_ms") or {}).get(f"batch_{batch}", {}).get("p50")

    @property
    def latency_batches(self) -> tuple[int, ...]:
        """The batch sizes every file was timed at: 1 and the throughput batch."""
        return tuple((self.timing or {}).get("batches") or (1, 32))

    @property
    def shipped(self) -> ExportedFile:
        """The file to ship: :attr:`recommended`, or the fp32 file."""
        return self.files.get(self.recommended or "fp32", self.fp32)


@dataclass(frozen=True)
class RaceRecord(Record):
    """``race/race.json`` (and ``winner.json``'s ``race``): the short-distillation race of the finalists."""

    FILE: ClassVar[str] = "race.json"

    rule: str  # one line: how the race ranked and cut
    rank: str  # tse | val (kdsearch.search.config.RACE_RANKS)
    eta: int  # each rung keeps the best 1/eta
    rungs: list[int]  # the optimizer step each rung ends at
    survivors: list[int]  # finalists trained to each rung
    full_steps: int  # the optimizer steps of one full distillation
    budget: float  # --race-budget: race and the winner's distillation together, in full distillations
    planned_steps: int
    spent_steps: int
    spent_distillations: float
    finalists: list[dict[str, Any]]  # finalist, arch (canonical JSON), state, rung_reached, rungs: [{val_acc, ...}]
    winner: str  # the winning arch, canonical JSON
    storage: str  # the Optuna storage the race's trials live in
    study_name: str
    total_distillations: float | None = None  # race and the rest of the winner's distillation, in distillations
    seed: int | None = None  # the seed the finalists trained with (none that kdsearch correlate judges by)
    # where the winner's run stopped, which its distillation goes on from: checkpoint (relative to race/), step,
    # settings (the TrainConfig it must be distilled with)
    continuation: dict[str, Any] | None = None

    @property
    def won(self) -> dict[str, Any]:
        """The winner's finalist entry: complete, with every rung it trained."""
        return next(f for f in self.finalists if f["state"] == "complete" and f["arch"] == self.winner)


@dataclass(frozen=True)
class RunSummary(Record):
    """``summary.json``: the headline figures of a finished ``kdsearch run``."""

    FILE: ClassVar[str] = "summary.json"

    run_dir: str
    dataset: str
    teacher: dict[str, Any]  # source, val_acc, params, flops, onnx_latency_ms_b<batch>
    student: dict[str, Any]  # arch, val_acc, test_acc, params, flops, agreement
    reduction: dict[str, float]  # params, flops: the teacher's over the student's
    onnx: dict[str, Any]  # the fp32 file: path, val_acc, latencies and speed-ups per batch, the recommended file
    timings_s: dict[str, float]  # stage -> seconds
    report: str | None = None  # the report.html written after it


# search/leaderboard.csv: one row per scored trial, in the order of the rule that chose the winner
_INT_COLUMNS = ("trial", "params", "flops")
_BOOL_COLUMNS = ("feasible", "reused")


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def read_leaderboard(path: Path) -> list[dict[str, Any]]:
    """``search/leaderboard.csv`` with numbers, booleans and empty cells (None) restored."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            raw = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"cannot read {path} ({e}); re-run `kdsearch search` to rewrite it") from None
    rows = []
    for r in raw:
        row: dict[str, Any] = {}
        for key, value in r.items():
            if key in _BOOL_COLUMNS:
                row[key] = value == "True"
            elif key == "arch":
                row[key] = value
            elif key in _INT_COLUMNS and value not in ("", None):
                row[key] = int(float(value))
            else:
                row[key] = _number(value or "")
        rows.append(row)
    return rows
