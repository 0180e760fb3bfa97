"""The resolved configuration of a run: what ``run.yaml`` holds, presets, and YAML overlay.

Torch-free: the CLI imports this module to parse flags and files.
"""
from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from kdsearch.distill.config import TrainConfig
from kdsearch.errors import ConfigError, UsageError
from kdsearch.export.config import ExportConfig
from kdsearch.files import write_text
from kdsearch.quant.config import QatConfig
from kdsearch.rundir import RunDir
from kdsearch.search.config import CorrelateConfig, SearchConfig

__all__ = [
    "DataConfig",
    "ExportConfig",
    "RunConfig",
    "PRESETS",
    "preset",
    "config_from_dict",
    "load_run_config",
    "save_run_config",
]


@dataclass(frozen=True)
class DataConfig:
    spec: str = "fashion-mnist"  # NAME[:PATH]
    data_dir: str | None = None
    subset: int | None = None  # keep N training images (quick runs)
    image_size: int | None = None  # square side; None: photos (> 64 px) cropped to 224, small images native
    seed: int = 0  # the train/val split and the subset

    def __post_init__(self) -> None:
        if self.subset is not None and self.subset <= 0:
            raise UsageError(f"--subset must be positive (got {self.subset})")


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of every stage (what ``run.yaml`` holds)."""

    data: DataConfig = field(default_factory=DataConfig)
    teacher: str | None = None  # None: train one with `teach` first
    teacher_model: str = "resnet20"  # the zoo model `teach` trains when no teacher is given
    teach: TrainConfig = field(default_factory=lambda: TrainConfig(loss="ce", epochs=15))
    search: SearchConfig = field(default_factory=SearchConfig)
    # the student starts from the teacher's weights where its family can be cut from the teacher (--init auto):
    # on the quick recipe +0.30 points of test top-1 [+0.14, +0.47] over fresh weights, 7 of 7 seeds
    # (benchmarks/quick_length.json); level with them under the mbconv4 teacher (quick_length_mbconv4.json)
    distill: TrainConfig = field(default_factory=lambda: TrainConfig(init="auto"))
    export: ExportConfig = field(default_factory=ExportConfig)
    qat: bool = False  # quantization-aware training with KD after distill, then an int8 QAT export
    quantize: QatConfig = field(default_factory=QatConfig)  # `kdsearch quantize` and `run --qat`
    correlate: CorrelateConfig = field(default_factory=CorrelateConfig)  # `kdsearch correlate`
    student_fraction: float | None = 0.25  # max student params as a fraction of the teacher's (when no --max-params)
    # No top-level device: every training section has its own (teach, distill, quantize, correlate.train);
    # a config file's top-level ``device:`` sets those it does not set itself (see config_from_dict).


PRESETS: dict[str, dict[str, Any]] = {
    # two CPU cores, Fashion-MNIST: about 4 minutes with a trained teacher (233 s, benchmarks/quick_run_pruned.json),
    # 6 more when it trains one (365 s, RESULTS.md)
    "quick": {
        # the budget is speed, measured: at least 4x the teacher's ONNX Runtime speed at batch 1 and 32
        # (one thread). No parameter budget: at narrow widths parameters buy depth, and depth costs latency.
        "student_fraction": None,
        "teach": {"loss": "ce", "epochs": 4, "batch_size": 128, "schedule": "onecycle", "lr": 0.2},
        # students cut from the teacher (pruned): over seeds 0-6, +0.29 val / +0.45 test points over resnet_cifar's
        # inherited student, ahead at six of seven (benchmarks/quick_spaces.json, quick_spaces_s3-6.json); +0.75
        # test [+0.44, +1.08] over fresh weights (benchmarks/quick_length.json)
        "search": {"trials": 48, "population": 12, "speedup": 4.0, "space": "pruned"},
        "distill": {"epochs": 4, "batch_size": 128, "schedule": "onecycle", "lr": 0.2},
        "export": {"latency_runs": 100},
    },
    # seconds: for tests and smoke checks
    "tiny": {
        "data": {"subset": 512},
        # ResNet20, not a smaller teacher: at 28 px and batch 1 the tiniest nets cost little more than
        # ONNX Runtime's per-call overhead, so a speed budget needs a teacher that is worth beating
        "teacher_model": "resnet20",
        "student_fraction": None,
        "teach": {"loss": "ce", "epochs": 1, "batch_size": 64},
        "search": {"trials": 6, "population": 4, "proxy_batch": 16, "speedup": 2.0},
        "distill": {"epochs": 1, "batch_size": 64},
        "export": {"latency_runs": 10, "calib_images": 32},
    },
    # the full recipe: hours on CPU, minutes on a GPU
    "standard": {
        "teacher_model": "resnet56",
        "student_fraction": None,
        "teach": {"loss": "ce", "epochs": 60},
        "search": {"trials": 500, "population": 32, "speedup": 4.0},
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


def _spread_device(data: Mapping[str, Any]) -> dict[str, Any]:
    """A top-level ``device: cuda`` written into every training section that names no device of its own."""
    data = dict(data)
    device = data.pop("device")
    if not isinstance(device, str):
        raise ConfigError(f"config key 'device' has the wrong type ({type(device).__name__}); write auto, cpu or cuda")
    for path in (("teach",), ("distill",), ("quantize",), ("correlate", "train")):
        outer = data
        for i, name in enumerate(path):
            inner = outer.get(name) or {}
            if not isinstance(inner, Mapping):
                break  # _section reports it
            inner = dict(inner)
            if i == len(path) - 1:
                inner.setdefault("device", device)
            outer[name] = inner
            outer = inner
    return data


def config_from_dict(data: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Overlay a (YAML) mapping on ``base``; unknown keys and wrong types are errors.

    A top-level ``device`` is shorthand for the device of every training section (teach, distill,
    quantize, correlate.train) that does not name its own.
    """
    base = base or RunConfig()
    if not isinstance(data, Mapping):
        raise ConfigError("a kdsearch config must be a YAML mapping")
    if "device" in data:
        data = _spread_device(data)
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
    for key, kind in (("teacher", (str, type(None))), ("teacher_model", str),
                      ("student_fraction", (int, float, type(None)))):
        if key in changes and not isinstance(changes[key], kind):
            raise ConfigError(f"config key {key!r} has the wrong type ({type(changes[key]).__name__})")
    return replace(base, **changes)


def preset(name: str) -> RunConfig:
    """The configuration of a named preset (quick, tiny, standard)."""
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

    write_text(RunDir(run_dir).config, yaml.safe_dump(_plain(asdict(config)), sort_keys=False))


def load_run_config(run_dir: Path) -> RunConfig:
    """The configuration saved in ``run_dir/run.yaml``."""
    from kdsearch.config_files import load_yaml

    path = RunDir(run_dir).config
    if not path.exists():
        raise UsageError(f"{run_dir} is not a kdsearch run directory (no run.yaml); give the --out of a `kdsearch run`")
    return config_from_dict(load_yaml(path))
