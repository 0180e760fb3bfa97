"""``kdsearch doctor``: is this machine ready to run kdsearch, and if not, what to do about it.

:func:`diagnose` gathers versions, GPUs, ONNX Runtime providers, where the datasets are and
the optional pieces (PostgreSQL driver, Optuna dashboard). Every problem comes with its fix;
a broken *required* piece makes the report unhealthy (``kdsearch doctor`` exits 1).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Problem", "DoctorReport", "REQUIRED_PACKAGES", "diagnose", "onnxruntime_distributions"]

# (distribution, import name): what `pip install kdsearch` brings and a run needs.
REQUIRED_PACKAGES: tuple[tuple[str, str], ...] = (
    ("torch", "torch"),
    ("onnx", "onnx"),
    ("onnxscript", "onnxscript"),
    ("torchao", "torchao"),
    ("optuna", "optuna"),
    ("typer", "typer"),
    ("rich", "rich"),
    ("numpy", "numpy"),
    ("pyyaml", "yaml"),
    ("safetensors", "safetensors"),
    ("matplotlib", "matplotlib"),
    ("torch-pruning", "torch_pruning"),
)
_ORT_DISTS = ("onnxruntime", "onnxruntime-gpu")
_DATASETS = ("fashion-mnist", "mnist")
_MIN_PYTHON = (3, 10)


@dataclass(frozen=True)
class Problem:
    """Something wrong or missing, and how to fix it; ``required`` problems make the report unhealthy."""

    what: str
    fix: str
    required: bool


@dataclass
class DoctorReport:
    """Everything ``kdsearch doctor`` shows."""

    python: str
    platform: str
    versions: dict[str, str | None]  # distribution -> version (None: not installed)
    onnxruntime_dists: list[str]  # which distribution(s) provide the onnxruntime module
    ort_providers: list[str]
    cuda: list[dict[str, Any]]  # one entry per device: index, name, memory_gib
    datasets: dict[str, str | None]  # name -> directory found (None: not found)
    postgres_driver: bool  # psycopg2 importable
    optuna_dashboard: str | None  # version, None: not installed
    problems: list[Problem] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """No required piece is broken."""
        return not any(p.required for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, with ``healthy`` added."""
        return {**asdict(self), "healthy": self.healthy}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def onnxruntime_distributions() -> list[str]:
    """The installed distributions that provide the ``onnxruntime`` module (normally exactly one)."""
    names = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in _ORT_DISTS:
            names.add(name)
    return sorted(names)


def _ort_install_problem(dists: list[str]) -> Problem | None:
    if not dists:
        wanted = "onnxruntime-gpu" if platform.system() == "Linux" and platform.machine() == "x86_64" else "onnxruntime"
        return Problem("ONNX Runtime is not installed: export cannot verify or time models", f"pip install {wanted}",
                       True)
    if len(dists) > 1:
        try:
            from kdsearch.export.runtime import check_onnxruntime_install

            message = check_onnxruntime_install()
        except ImportError:  # the shared onnxruntime/ folder is broken: the usual consequence
            message = None
        keep = "onnxruntime-gpu" if platform.system() == "Linux" and platform.machine() == "x86_64" else "onnxruntime"
        fix = message or f"pip uninstall -y onnxruntime onnxruntime-gpu && pip install {keep}"
        return Problem("both onnxruntime and onnxruntime-gpu are installed and overwrite each other's files",
                       fix.split("; ", 1)[-1] if message else fix, True)
    return None


def _ort_providers(problems: list[Problem]) -> list[str]:
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except Exception as e:  # a half-uninstalled onnxruntime raises anything from ImportError to AttributeError
        problems.append(Problem(f"onnxruntime does not import ({type(e).__name__}: {e})",
                                "reinstall it: pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
                                "onnxruntime-gpu (onnxruntime off Linux x86-64)", True))
        return []


def _cuda_devices() -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return devices


def _find_dataset(name: str, data_dir: Path | None) -> tuple[str | None, str]:
    from kdsearch.data import _download, idx
    from kdsearch.errors import DataError

    source = idx.IDX_SOURCES[name]
    try:
        return str(idx._locate(source, None, data_dir, False, None)), ""
    except DataError:
        files = [f"{base}.gz" for base in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
        return None, _download.offline_hint(name, files, source.apt_package)


def diagnose(data_dir: Path | None = None) -> DoctorReport:
    """Check this machine; ``data_dir`` is searched first for datasets, like ``--data-dir``."""
    problems: list[Problem] = []
    if sys.version_info[:2] < _MIN_PYTHON:
        problems.append(Problem(f"Python {platform.python_version()} is too old",
                                f"use Python {'.'.join(map(str, _MIN_PYTHON))} or newer", True))
    versions: dict[str, str | None] = {}
    for dist, module in REQUIRED_PACKAGES:
        versions[dist] = _version(dist)
        if versions[dist] is None:
            problems.append(Problem(f"{dist} is not installed", f"pip install {dist}", True))
        elif module in ("torch", "onnx", "onnxscript", "optuna"):  # cheap enough to prove they import
            try:
                importlib.import_module(module)
            except Exception as e:
                problems.append(Problem(f"{dist} {versions[dist]} is installed but does not import "
                                        f"({type(e).__name__}: {e})", f"pip install --force-reinstall {dist}", True))
    ort_dists = onnxruntime_distributions()
    for dist in _ORT_DISTS:
        versions[dist] = _version(dist)
    problem = _ort_install_problem(ort_dists)
    if problem is not None:
        problems.append(problem)
    providers = _ort_providers(problems) if ort_dists else []

    cuda = _cuda_devices() if versions["torch"] is not None else []
    if cuda and providers and "CUDAExecutionProvider" not in providers:
        problems.append(Problem("a CUDA GPU is present but ONNX Runtime has no CUDAExecutionProvider: "
                                "export latency is CPU-only", "pip uninstall -y onnxruntime && pip install "
                                "onnxruntime-gpu", False))

    datasets: dict[str, str | None] = {}
    for name in _DATASETS:
        found, hint = _find_dataset(name, data_dir)
        datasets[name] = found
        if found is None:
            problems.append(Problem(f"{name} is not on this machine (it is downloaded on first use when online)",
                                    hint, False))

    try:
        import psycopg2  # noqa: F401

        postgres = True
    except ImportError:
        postgres = False
        problems.append(Problem("no PostgreSQL driver: --storage postgresql://... (parallel search workers) "
                                "cannot connect", "pip install 'kdsearch[postgres]' (psycopg2-binary)", False))
    dashboard = _version("optuna-dashboard")
    if dashboard is None:
        problems.append(Problem("optuna-dashboard is not installed: no live view of a search",
                                "pip install 'kdsearch[dashboard]'", False))
    return DoctorReport(
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        versions=versions,
        onnxruntime_dists=ort_dists,
        ort_providers=providers,
        cuda=cuda,
        datasets=datasets,
        postgres_driver=postgres,
        optuna_dashboard=dashboard,
        problems=problems,
    )
