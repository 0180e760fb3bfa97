"""A hand-built run directory (teacher + distilled student) and one finished QAT run on it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchao")

STUDENT_GENES = {"block": "basic", "depths": [1, 1, 1], "widths": [8, 8, 8]}
TEACHER_GENES = {"block": "basic", "depths": [1, 1, 1], "widths": [8, 16, 16]}


def make_run_dir(root: Path, npz: Path) -> Path:
    """run.yaml + teacher/ + distill/ as `kdsearch run` leaves them, in seconds instead of minutes."""
    from kdsearch.arch import Arch
    from kdsearch.spaces.catalog import family_space
    from kdsearch.spaces.model_files import save_model_dir
    from kdsearch.pipeline import RunConfig, config_from_dict, load_run_dataset, save_run_config

    run = root / "run"
    config = config_from_dict({"data": {"spec": f"npz:{npz}", "subset": 256}, "teacher": str(run / "teacher")},
                              RunConfig())
    save_run_config(run, config)
    dataset = load_run_dataset(config)
    from kdsearch.distill.config import TrainConfig
    from kdsearch.distill.trainer import train

    teacher = None
    for genes, name, where in ((TEACHER_GENES, "model", "teacher"), (STUDENT_GENES, "student", "distill")):
        arch = Arch("resnet_cifar", genes)
        torch.manual_seed(len(name))
        model = family_space(arch).build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
        # two short epochs: decisive logits, so int8-vs-reference agreement is not decided by near-ties
        loss = "ce" if teacher is None else "kd:1,ce:1"
        train(model, dataset, root / f"train_{name}", TrainConfig(epochs=2, batch_size=32, loss=loss, device="cpu",
                                                                   lr=0.05), teacher=teacher)
        teacher = model
        save_model_dir(run / where, model, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                       arch=arch, weights_name=name,
                       extra={"normalization": {"mean": list(dataset.mean), "std": list(dataset.std)}})
    return run


@pytest.fixture(scope="session")
def base_run(tmp_path_factory: pytest.TempPathFactory, fashion_npz: Path) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("qatrun"), fashion_npz)


@pytest.fixture()
def fresh_run(base_run: Path, tmp_path: Path) -> Path:
    """A copy of the run directory without any QAT output."""
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst, ignore=shutil.ignore_patterns("qat", "export"))
    return dst


QAT_CONFIG = dict(epochs=2, batch_size=64, lr=0.01, device="cpu")


@pytest.fixture(scope="session")
def qat_config() -> dict:
    return dict(QAT_CONFIG)


@pytest.fixture(autouse=True, scope="session")
def quantize_command() -> None:
    """`kdsearch quantize` on the app, whether or not cli/__init__ has wired it yet."""
    from kdsearch.cli import app
    from kdsearch.cli.quantize import register

    if "quantize" not in {c.name for c in app.registered_commands}:
        register(app)


def _quantize(run: Path, config, **kwargs) -> dict:
    """``quantize_student`` on ``run``'s distilled student, teacher and dataset, into ``run/qat``.

    The objects are loaded here, not by the pipeline's qat stage, so these tests exercise
    ``quantize_student`` itself.
    """
    from kdsearch.pipeline import load_run_config, load_run_dataset, resolve_teacher
    from kdsearch.quant import quantize_student
    from kdsearch.spaces.model_files import load_model_dir

    run_config = load_run_config(run)
    dataset = load_run_dataset(run_config)
    student, student_meta = load_model_dir(run / "distill", weights_name="student")
    teacher = resolve_teacher(run, run_config, dataset).module
    return quantize_student(student, student_meta, teacher, dataset, run / "qat", config, **kwargs)


@pytest.fixture(scope="session")
def qat_run(base_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from kdsearch.quant import QatConfig

    run = tmp_path_factory.mktemp("qatdone") / "run"
    shutil.copytree(base_run, run)
    return run, _quantize(run, QatConfig(**QAT_CONFIG))


@pytest.fixture(scope="session")
def quantize():
    """``quantize(run, config, **kwargs)``: QAT-KD of a run directory's student (see :func:`_quantize`)."""
    return _quantize
