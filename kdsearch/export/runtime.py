"""ONNX Runtime sessions and the measurements taken with them: parity, accuracy, latency."""
from __future__ import annotations

from kdsearch.errors import KdsearchWarning

import contextlib
import importlib.metadata
import itertools
import platform
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from kdsearch.errors import ExportError, UsageError
from kdsearch.export._capture import captured_output

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = [
    "PROVIDERS",
    "ort_session",
    "check_onnxruntime_install",
    "parity",
    "onnx_accuracy",
    "latency_ms",
    "torch_latency_ms",
    "torch_logits",
    "ort_logits",
    "compare_logits",
    "parity_tolerance",
    "PARITY_RTOL",
]

# Short name -> the providers list handed to ONNX Runtime, best first, CPU always last.
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# fp32 ONNX Runtime vs PyTorch differ only by float32 rounding in differently ordered kernels:
# ~1e-6 relative. 1e-3 relative to the largest |logit| (floor 1) is far above rounding in deep
# nets yet far below what a real mismatch produces (wrong weights, BatchNorm in train mode, a
# dropped op: errors of 0.1..1 relative).
PARITY_RTOL = 1e-3
_SHORT_NAME = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}


def _import_ort():  # noqa: ANN202 - the module itself
    try:
        import onnxruntime
    except ImportError as e:
        raise ExportError(
            f"onnxruntime cannot be imported ({e}); install onnxruntime-gpu (x86_64 Linux) or onnxruntime"
        ) from None
    return onnxruntime


def ort_session(path: Path, provider: str = "cpu", options: ort.SessionOptions | None = None
                ) -> tuple[ort.InferenceSession, str]:
    """Open ``path`` in ONNX Runtime on ``provider`` (``cpu|cuda|tensorrt``), with session ``options``
    (:func:`kdsearch.export.timing.session_options`: the thread count latencies are timed with).

    The providers list is always passed explicitly. When the requested provider is not built
    into this onnxruntime, or ONNX Runtime silently fell back (its libraries or the GPU are
    missing), a ``UserWarning`` says so and the provider actually used is returned.

    Returns:
        The session and the short name of the provider that runs it.
    """
    if provider not in PROVIDERS:
        raise UsageError(f"unknown ONNX Runtime provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    ort = _import_ort()
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"ONNX file {path} does not exist; export the model first")
    available = ort.get_available_providers()
    wanted = [p for p in PROVIDERS[provider] if p in available] or ["CPUExecutionProvider"]
    with captured_output() as chatter:
        try:
            session = ort.InferenceSession(str(path), options, providers=wanted)
        except Exception as e:  # noqa: BLE001 - ORT raises its own pybind exception types
            raise ExportError(f"ONNX Runtime could not load {path}: {e}; re-export the model") from None
    used = _SHORT_NAME.get(session.get_providers()[0], session.get_providers()[0])
    if used != provider:
        reason = (
            f"{PROVIDERS[provider][0]} is not in this onnxruntime build ({', '.join(available)})"
            if PROVIDERS[provider][0] not in available
            else f"{PROVIDERS[provider][0]} could not start"
        )
        detail = next((line for line in chatter.lines if "Failed" in line or "Error" in line), "")
        warnings.warn(
            f"ONNX Runtime provider {provider!r} was asked but {used!r} is used: {reason}"
            + (f" ({detail.strip()[:300]})" if detail else "")
            + f"; install the {provider.upper()} runtime libraries or pass provider='{used}'",
            KdsearchWarning,
            stacklevel=2,
        )
    return session, used


def check_onnxruntime_install() -> str | None:
    """Return a warning when both ``onnxruntime`` and ``onnxruntime-gpu`` are installed, else None.

    Both distributions write the same ``onnxruntime/`` folder, so whichever was installed last
    wins and uninstalling one breaks the other.
    """
    names = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in ("onnxruntime", "onnxruntime-gpu"):
            names.add(name)
    if names != {"onnxruntime", "onnxruntime-gpu"}:
        return None
    if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
        keep, drop = "onnxruntime-gpu", "onnxruntime"
    else:
        keep, drop = "onnxruntime", "onnxruntime-gpu"
    return (
        "both onnxruntime and onnxruntime-gpu are installed and overwrite each other's files; "
        f"keep {keep} on this platform: pip uninstall -y onnxruntime onnxruntime-gpu && pip install {keep} "
        f"(removing only {drop} would break the shared onnxruntime/ folder)"
    )


def _run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _model_device(model: nn.Module) -> torch.device:
    t = next(itertools.chain(model.parameters(), model.buffers()), None)
    return t.device if t is not None else torch.device("cpu")


@contextlib.contextmanager
def _exact_float32(device: torch.device) -> Iterator[None]:
    # TF32 convolutions (on by default in cuDNN) err by ~1e-3 relative: as much as the parity gate allows.
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.inference_mode()
def torch_logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """Logits of ``model`` (already in eval mode, on its device, TF32 off) over ``images`` in batches."""
    device = _model_device(model)
    with _exact_float32(device):
        outs = [model(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(outs).numpy()  # (N, K)


def ort_logits(session: ort.InferenceSession, images: torch.Tensor | np.ndarray, batch_size: int) -> np.ndarray:
    """Logits of an ONNX Runtime session over ``images`` in batches."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.concatenate([_run(session, x[i : i + batch_size]) for i in range(0, len(x), batch_size)])  # (N, K)


def parity_tolerance(max_abs_logit: float, rtol: float = PARITY_RTOL) -> float:
    """The largest max |logit difference| an fp32 export may show: ``rtol * max(1, max|logit|)``."""
    return rtol * max(1.0, max_abs_logit)


def compare_logits(ref: np.ndarray, out: np.ndarray, rtol: float = PARITY_RTOL) -> dict[str, float]:
    """Agreement of ``out`` with the reference ``ref``, both ``(N, K)`` logits.

    Returns:
        ``max_abs_diff``, ``top1_agreement``, ``cosine`` (mean per-sample cosine similarity),
        ``max_abs_logit`` (of ``ref``), ``tolerance`` (:func:`parity_tolerance`) and
        ``decisive_top1_agreement``: top-1 agreement where near-ties (reference top-2 margin
        <= 2·tolerance) count as agreeing, since within the tolerance such a flip is rounding.
    """
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    norms = np.linalg.norm(ref64, axis=1) * np.linalg.norm(out64, axis=1)
    cosine = np.sum(ref64 * out64, axis=1) / np.maximum(norms, 1e-12)  # (N,)
    max_abs_logit = float(np.max(np.abs(ref64)))
    tol = parity_tolerance(max_abs_logit, rtol)
    top2 = np.sort(ref64, axis=1)[:, -2:]  # (N, 2)
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * tol  # (N,)
    agree = ref.argmax(1) == out.argmax(1)  # (N,)
    return {
        "max_abs_diff": float(np.max(np.abs(ref64 - out64))),
        "top1_agreement": float(np.mean(agree)),
        "decisive_top1_agreement": float(np.mean(agree | ~decisive)),
        "cosine": float(np.mean(cosine)),
        "max_abs_logit": max_abs_logit,
        "tolerance": tol,
    }


def parity(
    session: ort.InferenceSession, model: nn.Module, images: torch.Tensor, batch_sizes: Sequence[int] = (1, 8)
) -> dict[str, dict[str, float]]:
    """Compare ONNX Runtime with PyTorch (``model`` in eval mode) on ``images``, per batch size.

    For an exact fp32 check run both on CPU: a CUDA session may use TF32 or other fast kernels.

    Returns:
        ``{"batch_<b>": compare_logits(...)}``: ``max_abs_diff``, ``top1_agreement``, ``cosine``, ...
    """
    result = {}
    for b in batch_sizes:
        ref = torch_logits(model, images, b)
        result[f"batch_{b}"] = compare_logits(ref, ort_logits(session, images, b))
    return result


def onnx_accuracy(
    session: ort.InferenceSession,
    images: torch.Tensor | np.ndarray | Iterable[tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
    labels: torch.Tensor | np.ndarray | None = None,
    *,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy in ONNX Runtime over normalised float images.

    Args:
        images: ``(N, C, H, W)`` images with ``labels`` ``(N,)`` (anything sliceable into float
            batches, such as :class:`~kdsearch.data.NormalizedImages`), or an iterable of
            ``(images, labels)`` batches with ``labels=None``.
    """
    if labels is not None:
        x = images  # sliced one batch at a time: no float copy of the whole set
        y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if len(x) != len(y):  # type: ignore[arg-type]
            raise UsageError(f"{len(x)} images but {len(y)} labels; pass one label per image")  # type: ignore[arg-type]
        batches: Iterable = ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size))
    else:
        batches = images  # type: ignore[assignment]
    correct = total = 0
    for xb, yb in batches:
        xb = xb.detach().cpu().numpy() if isinstance(xb, torch.Tensor) else np.asarray(xb)
        yb = yb.detach().cpu().numpy() if isinstance(yb, torch.Tensor) else np.asarray(yb)
        correct += int(np.sum(_run(session, xb).argmax(1) == yb))
        total += len(yb)
    if total == 0:
        raise UsageError("no images to measure accuracy on; pass a non-empty validation set")
    return correct / total


def _summary(times_ms: list[float]) -> dict[str, float]:
    t = np.asarray(times_ms)
    p50, p90 = np.percentile(t, [50, 90])
    return {"p50": float(p50), "p90": float(p90), "mean": float(t.mean()), "runs": len(t)}


def latency_ms(
    session: ort.InferenceSession, input_shape: tuple[int, ...], *, runs: int = 100, warmup: int = 10, seed: int = 0
) -> dict[str, float]:
    """Time ``session.run`` on one random input of ``input_shape``: ``{"p50", "p90", "mean", "runs"}`` in ms.

    ``session.run`` returns host arrays, so every timed call includes the device round trip.
    """
    x = np.random.default_rng(seed).standard_normal(input_shape, dtype=np.float32)
    for _ in range(warmup):
        _run(session, x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        _run(session, x)
        times.append((time.perf_counter() - t0) * 1e3)
    return _summary(times)


@torch.inference_mode()
def torch_latency_ms(
    model: nn.Module, input_shape: tuple[int, ...], *, runs: int = 100, warmup: int = 10, seed: int = 0
) -> dict[str, float]:
    """Eager PyTorch latency of ``model`` (eval mode, on its own device), synchronised on CUDA."""
    device = _model_device(model)
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed)).to(device)  # (B, C, H, W)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return _summary(times)
