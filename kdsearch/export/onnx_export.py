"""PyTorch -> ONNX with the dynamo exporter: dynamic batch, optimised, fully checked, tagged."""
from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from kdsearch.errors import ExportError, UsageError
from kdsearch.export._capture import captured_output
from kdsearch.files import atomic_path

__all__ = ["MIN_OPSET", "export_onnx", "kdsearch_version", "read_metadata", "set_metadata"]

MIN_OPSET = 18  # the dynamo exporter's own floor; older opsets are down-converted and lose ops
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_MAX_BATCH = 65536  # torch.export needs a finite bound on the symbolic batch; ONNX keeps it symbolic


def kdsearch_version() -> str:
    """The installed kdsearch version, or ``"unknown"`` when running from a bare checkout."""
    import importlib.metadata

    import kdsearch

    version = getattr(kdsearch, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("kdsearch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise UsageError(
                f"ONNX metadata must map str to str, got {key!r}: {type(value).__name__}; json.dumps non-string values"
            )
        out[key] = value
    if "normalization" in out:
        try:
            norm = json.loads(out["normalization"])
            ok = isinstance(norm, dict) and all(isinstance(norm.get(k), list) for k in ("mean", "std"))
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise UsageError(
                'metadata["normalization"] must be JSON like {"mean": [...], "std": [...]}; '
                f"got {out['normalization']!r}"
            )
    return out


def set_metadata(model_proto, metadata: Mapping[str, str]) -> None:  # noqa: ANN001 - onnx.ModelProto
    """Set ``metadata_props`` on an ``onnx.ModelProto``, replacing keys that already exist."""
    existing = {p.key: p for p in model_proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            prop = model_proto.metadata_props.add()
            prop.key, prop.value = key, value


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (weights are not loaded)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    if isinstance(model, torch.fx.GraphModule):
        # A PT2E model from torch.export: .eval() does not switch the BatchNorm/dropout ops in its
        # graph (torchao rewrites them, idempotently) and, once prepared, refuses to be called.
        with contextlib.suppress(ImportError):
            from torchao.quantization.pt2e import move_exported_model_to_eval

            move_exported_model_to_eval(model)
        with contextlib.suppress(NotImplementedError):
            model.eval()  # a torch.fx.symbolic_trace graph keeps its submodules: switch them too
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def strip_node_metadata(model_proto) -> None:  # noqa: ANN001 - onnx.ModelProto
    """Drop the per-node ``metadata_props`` the dynamo exporter writes (source locations, FX names):
    about 40 % of a small model's file, never read by a runtime."""
    def graphs(graph):  # noqa: ANN001, ANN202
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.g.node:
                    yield from graphs(attr.g)
                for g in attr.graphs:
                    yield from graphs(g)

    for graph in graphs(model_proto.graph):
        for node in graph.node:
            del node.metadata_props[:]
    for function in model_proto.functions:
        for node in function.node:
            del node.metadata_props[:]


def export_onnx(
    model: nn.Module,
    sample: torch.Tensor,
    path: Path,
    *,
    opset: int = MIN_OPSET,
    metadata: Mapping[str, str] | None = None,
    on_log: Callable[[str], None] | None = None,
) -> Path:
    """Export an image classifier to ONNX with a dynamic batch axis, optimised and checked.

    Uses ``torch.onnx.export(dynamo=True, optimize=True)`` (onnxscript's optimizer: constant
    folding, dead-code and redundancy elimination), then ``onnx.checker.check_model(full_check=True)``,
    sets ``metadata_props`` and writes ``path`` atomically. The model is exported in eval mode and
    its training flag restored. Input is named ``input`` ``(batch, C, H, W)``, output ``logits``.

    Args:
        sample: one example input ``(B, C, H, W)`` on the model's device; only its shape matters.
        metadata: string key/values stored in the file (``arch``, ``normalization`` JSON, ...).
        on_log: receives the exporter's captured stdout/stderr/warnings/logging text.

    Raises:
        ExportError: the exporter or the checker failed (the message says why).
    """
    import onnx

    if opset < MIN_OPSET:
        raise UsageError(f"opset {opset} is too old for the dynamo exporter; use opset >= {MIN_OPSET}")
    if sample.ndim != 4 or not sample.is_floating_point():
        raise UsageError(f"sample must be a float (B, C, H, W) tensor, got {tuple(sample.shape)} {sample.dtype}")
    meta = {"kdsearch_version": kdsearch_version(), **_check_metadata(metadata or {})}
    if sample.shape[0] < 2:
        # torch.export specialises a size-1 dimension to a constant; 2 keeps the batch symbolic.
        sample = sample.expand(2, *sample.shape[1:])  # (2, C, H, W)
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    path = Path(path)
    error: Exception | None = None
    with captured_output() as log:
        try:
            with _eval_mode(model):
                program = torch.onnx.export(
                    model,
                    (sample.contiguous(),),
                    None,
                    dynamo=True,
                    opset_version=opset,
                    dynamic_shapes=({0: batch},),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    optimize=True,
                    external_data=False,
                )
            with tempfile.TemporaryDirectory() as tmp:
                raw = Path(tmp) / "model.onnx"
                program.save(raw, external_data=False)
                proto = onnx.load(str(raw))
        except Exception as e:  # noqa: BLE001 - any exporter failure becomes one clear error
            error = e
    if on_log is not None:
        on_log(log.text)
    if error is not None:
        raise ExportError(
            f"torch.onnx.export failed for {type(model).__name__}: {type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}; the model must be traceable "
            "by torch.export (no Python branching on tensor values, no unsupported ops) - see the export log"
        ) from error
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim0.dim_param:
        raise ExportError(
            f"the exported graph has a fixed batch size {dim0.dim_value}; if the model came from torch.export "
            "(a PT2E/QAT model), capture it with dynamic_shapes={'x': {0: torch.export.Dim('batch')}}"
        )
    strip_node_metadata(proto)
    set_metadata(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001 - ValidationError and shape-inference errors alike
        raise ExportError(f"onnx.checker rejected the exported model: {e}; report this with the export log") from e
    with atomic_path(path) as tmp_path:
        onnx.save(proto, str(tmp_path))
    return path
