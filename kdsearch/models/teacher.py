"""Load a teacher from a spec: a zoo name, a kdsearch model directory, TorchScript or ``.pt2``.

Nothing is ever unpickled: weights come from safetensors, TorchScript archives hold no Python
code, and ``.pt2`` files are read with ``torch.export.load``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsearch.arch import Arch
from kdsearch.errors import ConfigError, ModelError, UsageError
from kdsearch.files import atomic_path, read_json, write_json

__all__ = ["Teacher", "load_teacher", "save_model_dir", "load_model_dir", "build_from_description", "check_io"]


@dataclass
class Teacher:
    """A teacher network and what is known about it."""

    module: nn.Module
    source: str  # the spec it came from
    trained: bool | None  # False: a freshly initialised zoo model; None: an opaque file, cannot tell
    arch: Arch | None = None  # when the teacher is a member of a search space
    model_name: str | None = None  # when it is a zoo model
    info: dict[str, Any] = field(default_factory=dict)  # model.json metadata (val_acc, dataset...)

    def fresh_copy(self, seed: int) -> nn.Module:
        """A newly initialised network of the same architecture (DisWOT's reference teacher)."""
        if self.arch is None and self.model_name is None:  # an opaque file: read it again, then re-initialise
            again = load_teacher(self.source, num_classes=self.info["num_classes"], in_channels=self.info["in_channels"],
                                 image_size=tuple(self.info.get("image_size", (32, 32))))
            return reinitialise(again.module, seed, self.source)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_from_description(
                {"arch": self.arch.to_dict() if self.arch else None, "model": self.model_name},
                self.info["num_classes"],
                self.info["in_channels"],
            )


def reinitialise(module: nn.Module, seed: int, source: str = "the teacher") -> nn.Module:
    """Give an opaque teacher (``.pt2``, TorchScript) fresh weights in place, by tensor shape: conv
    kernels Kaiming-normal (fan-out), linear weights ``N(0, 0.01)``, norm scales 1, biases 0, statistics reset
    (the initialisation of kdsearch's own networks)."""
    if isinstance(module, torch.jit.ScriptModule):
        raise UsageError(f"--teacher-init random cannot re-initialise the TorchScript graph of {source}; "
                         "use --teacher-init pretrained, or give the teacher as .pt2 or a kdsearch model directory")
    fresh = module
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name, p in fresh.named_parameters():
            if p.dim() >= 3:
                nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.01)
            else:
                (nn.init.ones_ if name.endswith("weight") else nn.init.zeros_)(p)
        for name, b in fresh.named_buffers():
            if name.endswith("running_var"):
                b.fill_(1)
            elif name.endswith(("running_mean", "num_batches_tracked")):
                b.zero_()
    return fresh


def build_from_description(desc: dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    """Build a network from ``{"arch": {...}}`` or ``{"model": "resnet20"}`` (model.json's keys)."""
    if desc.get("arch"):
        arch = Arch.from_dict(desc["arch"])
        return family_space(arch, desc.get("family")).build(arch, num_classes=num_classes, in_channels=in_channels)
    if desc.get("model"):
        from kdsearch.models.zoo import create_model

        return create_model(desc["model"], num_classes=num_classes, in_channels=in_channels)
    raise ConfigError("model.json needs an 'arch' or a 'model' entry")


def family_space(arch: Arch, family: str | None = None):
    """A built-in space able to build ``arch``: its own, or one of the same family.

    Building checks only the family's rules, so an arch from a user's YAML (recorded with
    its ``family``) rebuilds without that YAML.
    """
    from kdsearch.errors import SpaceError
    from kdsearch.spaces import builtin_space_names, load_space, space_for_arch

    try:
        return space_for_arch(arch)
    except SpaceError:
        for name in builtin_space_names():
            space = load_space(name)
            if family is not None and space.family == family:
                return space
        raise


_MODEL_JSON_KEYS = {"family", "arch", "model", "num_classes", "in_channels", "trained", "val_acc", "test_acc", "dataset",
                    "kdsearch_version", "normalization", "epochs"}


def save_model_dir(
    directory: Path,
    model: nn.Module,
    *,
    num_classes: int,
    in_channels: int,
    arch: Arch | None = None,
    model_name: str | None = None,
    trained: bool = True,
    extra: dict[str, Any] | None = None,
    weights_name: str = "model",
    family: str | None = None,
) -> None:
    """Write ``<weights_name>.json`` (architecture + metadata) and ``<weights_name>.safetensors``."""
    from safetensors.torch import save_file

    from kdsearch import __version__

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / f"{weights_name}.safetensors") as tmp:
        save_file(state, str(tmp))
    meta: dict[str, Any] = {
        "arch": arch.to_dict() if arch else None,
        "family": family or (family_space(arch).family if arch else None),
        "model": model_name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "trained": trained,
        "kdsearch_version": __version__,
    }
    meta.update(extra or {})
    write_json(directory / f"{weights_name}.json", meta)


def load_model_dir(directory: Path, weights_name: str = "model") -> tuple[nn.Module, dict[str, Any]]:
    """Read a model directory written by :func:`save_model_dir`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_json(directory / f"{weights_name}.json", f"{weights_name}.json")
    if not isinstance(meta, dict):
        raise ConfigError(f"{directory / (weights_name + '.json')} must hold a JSON object")
    unknown = set(meta) - _MODEL_JSON_KEYS
    if unknown:
        raise ConfigError(f"{weights_name}.json has unknown key(s) {', '.join(sorted(unknown))}; remove them")
    for key in ("num_classes", "in_channels"):
        if not isinstance(meta.get(key), int) or meta[key] <= 0:
            raise ConfigError(f"{weights_name}.json needs a positive integer {key!r}")
    model = build_from_description(meta, meta["num_classes"], meta["in_channels"])
    weights = directory / f"{weights_name}.safetensors"
    if not weights.exists():
        raise ModelError(f"{weights} is missing; a model directory needs {weights_name}.json and {weights_name}.safetensors")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{weights} is not a readable safetensors file ({e}); re-create it") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelError(f"{weights} does not match the architecture in {weights_name}.json ({first})") from None
    return model, meta


def _load_pt2(path: Path) -> nn.Module:
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001 - any failure to read is the user's file
        raise ModelError(f"{path} is not a readable torch.export .pt2 file ({type(e).__name__}: {e})") from None
    # unflatten restores the module hierarchy, so features can be hooked by module path
    return torch.export.unflatten(program)


def _load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{path} is not a readable TorchScript file ({type(e).__name__}); save it with torch.jit.save") from None


def _hookable(script: nn.Module, spec: str, num_classes: int, in_channels: int, size: tuple[int, int]) -> nn.Module:
    """The TorchScript graph cut into hookable parts; the plain script (logits only) when it cannot be."""
    import warnings

    from kdsearch.errors import KdsearchWarning
    from kdsearch.models.graph_teacher import hookable_torchscript

    check_io(script, num_classes=num_classes, in_channels=in_channels, what=f"teacher {spec}", size=size)
    try:
        return hookable_torchscript(script, torch.zeros(2, in_channels, *size))
    except ModelError as e:
        warnings.warn(f"teacher {spec}: {e}; its logits still distil, but the search cannot read its features "
                      "(save it with torch.export as .pt2, or as a kdsearch model directory)", KdsearchWarning,
                      stacklevel=2)
        return script


def load_teacher(spec: str, *, num_classes: int, in_channels: int, image_size: tuple[int, int] = (32, 32)) -> Teacher:
    """Resolve ``--teacher SPEC`` into a :class:`Teacher` on the CPU, checked on inputs of ``image_size``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model.json").exists():
            raise UsageError(f"teacher directory {path} has no model.json; give a kdsearch model directory (from `kdsearch teach`)")
        module, meta = load_model_dir(path)
        arch = Arch.from_dict(meta["arch"]) if meta.get("arch") else None
        teacher = Teacher(module, spec, bool(meta.get("trained", True)), arch, meta.get("model"), meta)
    elif path.suffix == ".pt2" and path.is_file():
        teacher = Teacher(_load_pt2(path), spec, None, info={})
    elif path.suffix in {".pt", ".ts", ".torchscript", ".jit"} and path.is_file():
        teacher = Teacher(_hookable(_load_torchscript(path), spec, num_classes, in_channels, image_size), spec, None,
                          info={})
    elif path.exists():
        raise UsageError(
            f"cannot read a teacher from {path}: use a zoo name, a kdsearch model directory, a TorchScript file "
            "(.pt/.ts) or a torch.export file (.pt2)"
        )
    else:
        from kdsearch.models.zoo import MODELS, create_model, model_arch

        if spec not in MODELS:
            if "/" in spec or "." in spec:
                raise UsageError(f"teacher {spec} does not exist; check the path")
            MODELS.get(spec)  # raises the registry's "unknown model" error listing known names
        with torch.random.fork_rng(devices=[]):  # the same name gives the same teacher in every process
            torch.manual_seed(0)
            module = create_model(spec, num_classes=num_classes, in_channels=in_channels)
        teacher = Teacher(module, spec, False, model_arch(spec), spec, {})
    teacher.info.setdefault("num_classes", num_classes)
    teacher.info.setdefault("in_channels", in_channels)
    teacher.info.setdefault("image_size", list(image_size))
    check_io(teacher.module, num_classes=num_classes, in_channels=in_channels, what=f"teacher {spec}", size=image_size)
    return teacher


def check_io(model: nn.Module, *, num_classes: int, in_channels: int, what: str,
             size: tuple[int, int] = (32, 32)) -> None:
    """Fail clearly when ``model`` does not take ``in_channels`` or output ``num_classes``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, *size))
    except Exception as e:  # noqa: BLE001 - a shape error here is a data/teacher mismatch
        raise UsageError(
            f"{what} cannot take {in_channels}-channel images ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            "use a teacher trained on data of this kind"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UsageError(f"{what} must return logits of shape (batch, classes)")
    if out.shape[1] != num_classes:
        raise UsageError(
            f"{what} predicts {out.shape[1]} classes but the data has {num_classes}; use a teacher trained on this data"
        )
