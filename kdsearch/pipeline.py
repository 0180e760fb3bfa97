"""``kdsearch run``: teach → search → distill → export over one run directory.

Every stage also runs alone on a run directory; ``run.yaml`` holds the resolved
configuration of all of them, so ``kdsearch run --config run.yaml`` reproduces a run.
"""
from __future__ import annotations

import json
import shutil
import time
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from kdsearch.arch import Arch
from kdsearch.distill.trainer import TrainConfig
from kdsearch.errors import ConfigError, UsageError
from kdsearch.files import read_json, write_json, write_text
from kdsearch.progress import NULL_PROGRESS, Progress
from kdsearch.quant.qat import QatConfig
from kdsearch.search.correlate import CorrelateConfig
from kdsearch.search.study import SearchConfig

__all__ = [
    "DataConfig",
    "ExportConfig",
    "RunConfig",
    "PRESETS",
    "prepare_run_dir",
    "run_pipeline",
    "teach_stage",
    "search_stage",
    "distill_stage",
    "export_stage",
    "load_run_config",
    "save_run_config",
    "config_from_dict",
]


@dataclass(frozen=True)
class DataConfig:
    spec: str = "fashion-mnist"  # NAME[:PATH]
    data_dir: str | None = None
    subset: int | None = None  # keep N training images (quick runs)
    seed: int = 0  # the train/val split and the subset

    def __post_init__(self) -> None:
        if self.subset is not None and self.subset <= 0:
            raise UsageError(f"--subset must be positive (got {self.subset})")


@dataclass(frozen=True)
class ExportConfig:
    int8: str = "none"  # none | ptq | qat
    opset: int = 18
    provider: str = "cpu"  # cpu | cuda | tensorrt
    calib_images: int = 256  # training images that calibrate post-training quantization
    latency_runs: int = 100

    def __post_init__(self) -> None:
        if self.int8 not in {"none", "ptq", "qat"}:
            raise UsageError(f"unknown --int8 {self.int8!r}; use none, ptq or qat")
        if self.opset < 18:
            raise UsageError(f"--opset must be 18 or more (got {self.opset})")
        if self.provider not in {"cpu", "cuda", "tensorrt"}:
            raise UsageError(f"unknown --provider {self.provider!r}; use cpu, cuda or tensorrt")
        if self.calib_images <= 0 or self.latency_runs <= 0:
            raise UsageError("--calib-images and --latency-runs must be positive")


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of every stage (what ``run.yaml`` holds)."""

    data: DataConfig = field(default_factory=DataConfig)
    teacher: str | None = None  # None: train one with `teach` first
    teacher_model: str = "resnet20"  # the zoo model `teach` trains when no teacher is given
    teach: TrainConfig = field(default_factory=lambda: TrainConfig(loss="ce", epochs=15))
    search: SearchConfig = field(default_factory=SearchConfig)
    distill: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    qat: bool = False  # quantization-aware training with KD after distill, then an int8 QAT export
    quantize: QatConfig = field(default_factory=QatConfig)  # `kdsearch quantize` and `run --qat`
    correlate: CorrelateConfig = field(default_factory=CorrelateConfig)  # `kdsearch correlate`
    student_fraction: float | None = 0.25  # max student params as a fraction of the teacher's (when no --max-params)
    device: str = "auto"


PRESETS: dict[str, dict[str, Any]] = {
    # two CPU cores, ≈ 10-15 minutes on Fashion-MNIST
    "quick": {
        # an eighth of the teacher: the default winner rule fills the budget, and a quarter (68k params,
        # ~47 MFLOPs) would take distillation past the 15 minutes
        "student_fraction": 0.125,
        "teach": {"loss": "ce", "epochs": 4, "batch_size": 128, "schedule": "onecycle", "lr": 0.2},
        "search": {"trials": 48, "population": 12},
        "distill": {"epochs": 4, "batch_size": 128, "schedule": "onecycle", "lr": 0.2},
        "export": {"latency_runs": 100},
    },
    # seconds: for tests and smoke checks
    "tiny": {
        "data": {"subset": 512},
        "teacher_model": "resnet8",
        "student_fraction": 1.0,
        "teach": {"loss": "ce", "epochs": 1, "batch_size": 64},
        "search": {"trials": 6, "population": 4, "proxy_batch": 16},
        "distill": {"epochs": 1, "batch_size": 64},
        "export": {"latency_runs": 10, "calib_images": 32},
    },
    # the full recipe: hours on CPU, minutes on a GPU
    "standard": {
        "teacher_model": "resnet56",
        "teach": {"loss": "ce", "epochs": 60},
        "search": {"trials": 500, "population": 32},
        "distill": {"epochs": 60},
    },
}


_SECTIONS = {"data": DataConfig, "teach": TrainConfig, "search": SearchConfig, "distill": TrainConfig,
             "export": ExportConfig, "quantize": QatConfig, "correlate": CorrelateConfig}


def _section(cls, base: Any, values: Mapping[str, Any], where: str):
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of option: value")
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    clean = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in values:
            v = values[f.name]
            if is_dataclass(hints[f.name]):  # a nested section, e.g. correlate.train
                clean[f.name] = _section(hints[f.name], getattr(base, f.name), v or {}, f"{where}.{f.name}")
                continue
            if f.name in {"objectives", "proxies"} and isinstance(v, str):
                v = tuple(x.strip() for x in v.split(",") if x.strip())
            elif isinstance(v, list):
                v = tuple(v)
            if not _matches(v, hints[f.name]):
                raise ConfigError(f"{where}.{f.name} = {v!r} has the wrong type; expected {_type_name(hints[f.name])}")
            clean[f.name] = v
    if cls is SearchConfig and "proxy" in clean and "objectives" not in clean:  # as --proxy does
        clean["objectives"] = (clean["proxy"], *base.objectives[1:])
    try:
        return replace(base, **clean)
    except TypeError as e:
        raise ConfigError(f"bad value in {where}: {e}") from None


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a dataclass field's type (int accepted for float, never bool for numbers)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_matches(v, inner) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def config_from_dict(data: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Overlay a (YAML) mapping on ``base``; unknown keys and wrong types are errors."""
    base = base or RunConfig()
    if not isinstance(data, Mapping):
        raise ConfigError("a kdsearch config must be a YAML mapping")
    top = {f.name for f in fields(RunConfig)}
    unknown = set(data) - top
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(top))}")
    changes: dict[str, Any] = {}
    for name, value in data.items():
        if name in _SECTIONS:
            changes[name] = _section(_SECTIONS[name], getattr(base, name), value or {}, name)
        else:
            changes[name] = value
    for key, kind in (("teacher", (str, type(None))), ("teacher_model", str), ("device", str),
                      ("student_fraction", (int, float, type(None)))):
        if key in changes and not isinstance(changes[key], kind):
            raise ConfigError(f"config key {key!r} has the wrong type ({type(changes[key]).__name__})")
    return replace(base, **changes)


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    return config_from_dict(PRESETS[name])


def _plain(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def save_run_config(run_dir: Path, config: RunConfig) -> None:
    import yaml

    write_text(run_dir / "run.yaml", yaml.safe_dump(_plain(asdict(config)), sort_keys=False))


def load_run_config(run_dir: Path) -> RunConfig:
    """The configuration saved in ``run_dir/run.yaml``."""
    from kdsearch.config_files import load_yaml

    path = run_dir / "run.yaml"
    if not path.exists():
        raise UsageError(f"{run_dir} is not a kdsearch run directory (no run.yaml); give the --out of a `kdsearch run`")
    return config_from_dict(load_yaml(path))


def prepare_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse to overwrite an existing run unless ``resume`` or ``force``; check it is writable."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file; give a directory")
    if run_dir.exists() and any(run_dir.iterdir()):
        if force and not resume:
            if not (run_dir / "run.yaml").exists():
                raise UsageError(f"--force only replaces a kdsearch run directory; {run_dir} holds other files")
            shutil.rmtree(run_dir)
        elif not resume:
            raise UsageError(f"{run_dir} already exists; add --resume to continue it or --force to start over")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to {run_dir} ({e.strerror}); choose another --out") from None


def load_run_dataset(config: RunConfig):
    from kdsearch.data import load_dataset

    d = config.data
    return load_dataset(d.spec, data_dir=Path(d.data_dir) if d.data_dir else None, subset=d.subset, seed=d.seed)


def check_inputs(config: RunConfig, dataset, *, search: bool = True, student: Arch | None = None):
    """Fail on a bad teacher, zoo model, space, budget, storage, device or student arch before
    anything is written.

    Returns the loaded teacher (None when the run trains its own).
    """
    import torch

    from kdsearch.devices import resolve_device

    for device in {config.device, config.teach.device, config.distill.device}:
        resolve_device(device)
    if student is not None:
        from kdsearch.distill.stage import student_space

        student_space(student, config.search.space).validate(student)

    from kdsearch.models.zoo import MODELS, create_model
    from kdsearch.search.study import feasible_samples, get_storage
    from kdsearch.spaces import load_space

    space = load_space(config.search.space)
    if search:
        from kdsearch.proxies import PROXIES
        from kdsearch.search.study import COST_OBJECTIVES

        for name in config.search.objectives:
            if name not in COST_OBJECTIVES:
                PROXIES.get(name)
    teacher = None
    if config.teacher is not None:
        from kdsearch.models.teacher import load_teacher

        teacher = load_teacher(config.teacher, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                         image_size=dataset.image_size)
        module = teacher.module
    else:
        MODELS.get(config.teacher_model)
        with torch.device("meta"):
            module = create_model(config.teacher_model, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    if search:
        feasible_samples(space, dataset, search_config_for(config, module), wanted=0)
    if search and config.search.storage:
        get_storage(config.search.storage)
    return teacher


def teach_stage(out: Path, config: RunConfig, dataset, *, resume: bool, progress: Progress) -> dict[str, Any]:
    """Train ``config.teacher_model`` with cross-entropy into the model directory ``out``."""
    import torch

    from kdsearch.distill.stage import train_teacher
    from kdsearch.models.zoo import create_model, model_arch

    if resume and (out / "model.safetensors").exists():
        progress.note(f"teacher already trained in {out}")
        return read_json(out / "metrics.json")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.teach.seed)
        model = create_model(config.teacher_model, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    return train_teacher(model, dataset, out, config.teach, arch=model_arch(config.teacher_model),
                         model_name=config.teacher_model, resume=resume, progress=progress)


def resolve_teacher(run_dir: Path, config: RunConfig, dataset):
    from kdsearch.models.teacher import load_teacher

    spec = config.teacher or str(run_dir / "teacher")
    return load_teacher(spec, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                         image_size=dataset.image_size)


def search_config_for(config: RunConfig, teacher) -> SearchConfig:
    """The search configuration with ``--max-params`` defaulting to a fraction of the teacher's size."""
    s = config.search
    if s.max_params is None and config.student_fraction:
        module = getattr(teacher, "module", teacher)
        teacher_params = sum(p.numel() for p in module.parameters())
        s = replace(s, max_params=int(teacher_params * config.student_fraction))
    return s


def search_stage(run_dir: Path, config: RunConfig, dataset, teacher, *, resume: bool, progress: Progress):
    from kdsearch.search.study import run_search

    out = run_dir / "search"
    if resume and (out / "winner.json").exists():
        progress.note(f"search already finished in {out}")
        return Arch.load(out / "winner.json"), read_json(out / "winner.json")
    result = run_search(teacher, dataset, out, search_config_for(config, teacher), resume=resume, progress=progress)
    return result.winner, read_json(out / "winner.json")


def distill_stage(run_dir: Path, config: RunConfig, dataset, teacher, arch: Arch, *, resume: bool,
                  progress: Progress) -> dict[str, Any]:
    from kdsearch.distill.stage import distill_student

    out = run_dir / "distill"
    if resume and (out / "student.safetensors").exists():
        progress.note(f"student already distilled in {out}")
        return read_json(out / "metrics.json")
    if teacher.trained is not True:
        progress.note(f"warning: teacher {teacher.source} is not known to be trained; distilling from it may not help")
    return distill_student(arch, teacher, dataset, out, config.distill, resume=resume, space_spec=config.search.space,
                           progress=progress)


def export_stage(run_dir: Path, config: RunConfig, dataset, *, progress: Progress) -> dict[str, Any]:
    """Export ``run_dir/distill``'s student to ``run_dir/export`` and verify it."""
    import json

    from kdsearch.data import normalize
    from kdsearch.export import export_model
    from kdsearch.models.teacher import load_model_dir

    src = run_dir / "distill"
    if not (src / "student.json").exists():
        raise UsageError(f"{run_dir} has no distilled student (distill/student.json); run `kdsearch distill` first")
    model, meta = load_model_dir(src, weights_name="student")
    model.eval()
    e = config.export
    qat_model = None
    if e.int8 == "qat":
        from kdsearch.quant import load_qat_model  # raises UsageError when `kdsearch quantize` has not run

        progress.note(f"rebuilding the int8 QAT model from {run_dir / 'qat'}")
        qat_model = load_qat_model(run_dir / "qat")
    calib = dataset.train.images[: e.calib_images]
    metadata = {
        "arch": json.dumps(meta.get("arch")),
        "val_acc": str(meta.get("val_acc")),
        "dataset": dataset.name,
        "classes": json.dumps(list(dataset.classes)),
        "normalization": json.dumps({"mean": list(dataset.mean), "std": list(dataset.std)}),
    }
    return export_model(
        model,
        val_images=normalize(dataset.val.images, dataset.mean, dataset.std),
        val_labels=dataset.val.labels,
        calib_images=normalize(calib, dataset.mean, dataset.std),
        out_dir=run_dir / "export",
        int8=e.int8,
        qat_model=qat_model,
        opset=e.opset,
        provider=e.provider,
        latency_runs=e.latency_runs,
        metadata=metadata,
        progress=progress.note,
    )


def run_pipeline(config: RunConfig, run_dir: Path, *, resume: bool = False, force: bool = False,
                 progress: Progress = NULL_PROGRESS) -> dict[str, Any]:
    """Run every stage into ``run_dir`` and return the summary (also ``summary.json``).

    Every input is checked before the run directory is touched, so a typo leaves nothing behind.
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    dataset = load_run_dataset(config)
    timings["data"] = time.perf_counter() - t
    check_inputs(config, dataset)
    prepare_run_dir(run_dir, resume=resume, force=force)
    save_run_config(run_dir, config)
    from kdsearch.logs import capture_library_noise

    with capture_library_noise(run_dir / "kdsearch.log"):  # library chatter goes to the log, not the terminal
        return _run_stages(config, run_dir, dataset, timings, resume=resume, progress=progress)


def _run_stages(config: RunConfig, run_dir: Path, dataset, timings: dict[str, float], *, resume: bool,
                progress: Progress) -> dict[str, Any]:
    teacher_metrics = None
    if config.teacher is None:
        t = time.perf_counter()
        progress.note(f"stage teach: training {config.teacher_model} on {dataset.name}")
        teacher_metrics = teach_stage(run_dir / "teacher", config, dataset, resume=resume, progress=progress)
        timings["teach"] = time.perf_counter() - t
    teacher = resolve_teacher(run_dir, config, dataset)
    t = time.perf_counter()
    progress.note("stage search")
    arch, winner = search_stage(run_dir, config, dataset, teacher, resume=resume, progress=progress)
    timings["search"] = time.perf_counter() - t
    t = time.perf_counter()
    progress.note(f"stage distill: {arch.space} {json.dumps(arch.genes, separators=(',', ':'))}")
    student_metrics = distill_stage(run_dir, config, dataset, teacher, arch, resume=resume, progress=progress)
    timings["distill"] = time.perf_counter() - t
    if config.qat:
        from kdsearch.quant import quantize_student

        t = time.perf_counter()
        progress.note("stage quantize (QAT with KD)")
        if not (resume and (run_dir / "qat" / "metrics.json").exists()):
            quantize_student(run_dir, config.quantize, resume=resume, progress=progress)
        timings["qat"] = time.perf_counter() - t
        config = replace(config, export=replace(config.export, int8="qat"))
    t = time.perf_counter()
    progress.note("stage export")
    export = export_stage(run_dir, config, dataset, progress=progress)
    timings["export"] = time.perf_counter() - t
    summary = build_summary(run_dir, dataset, teacher, teacher_metrics, winner, student_metrics, export, timings)
    summary["report"] = str(run_dir / "report.html")
    write_json(run_dir / "summary.json", summary)
    from kdsearch.report.html import write_report

    write_report(run_dir)  # after summary.json: the page reads it (teacher FLOPs, timings)
    return summary


def build_summary(run_dir, dataset, teacher, teacher_metrics, winner, student_metrics, export, timings) -> dict[str, Any]:
    from kdsearch.proxies import count_flops

    h, w = dataset.image_size
    teacher_params = sum(p.numel() for p in teacher.module.parameters())
    teacher_flops = count_flops(teacher.module, (dataset.in_channels, h, w))
    teacher_acc = (teacher_metrics or {}).get("val_acc") or student_metrics.get("teacher_val_acc")
    fp32 = export["files"]["fp32"]
    return {
        "run_dir": str(run_dir),
        "dataset": dataset.name,
        "teacher": {"source": teacher.source, "val_acc": teacher_acc, "params": teacher_params, "flops": teacher_flops},
        "student": {
            "arch": winner["arch"],
            "val_acc": student_metrics.get("val_acc"),
            "test_acc": student_metrics.get("test_acc"),
            "params": winner["params"],
            "flops": winner["flops"],
            "agreement": student_metrics.get("agreement"),
        },
        "reduction": {"params": teacher_params / max(1, winner["params"]), "flops": teacher_flops / max(1, winner["flops"])},
        "onnx": {
            "path": str(run_dir / "export" / fp32["path"]),
            "val_acc": fp32.get("accuracy"),
            "top1_agreement": min(p["top1_agreement"] for p in fp32["parity"].values() if isinstance(p, dict)),
            "latency_ms_b1": fp32["latency_ms"]["batch_1"]["p50"],
            "pytorch_latency_ms_b1": export["pytorch_eager"]["latency_ms"]["batch_1"]["p50"],
        },
        "timings_s": timings,
    }
