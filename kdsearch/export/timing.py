"""Timing two or more ONNX Runtime models side by side, so their ratio means something.

Latencies taken minutes apart on a shared machine differ by more than the students being
compared. Every ratio kdsearch reports (``× faster``) is of two medians measured here: the
sessions run in one loop, each round in a rotated order, after every session has warmed up.
"""
from __future__ import annotations

import io
import time
import warnings
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch
from torch import nn

from kdsearch.errors import UsageError
from kdsearch.ratios import speed_text, speedup  # re-exported: worded where torch is not imported (the report)

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["interleaved_latency_ms", "probe_session", "session_options", "speedup", "speed_text", "time_models"]


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Quiet ONNX Runtime session options; ``threads`` pins intra-op threads (None: ORT's default, all cores)."""
    import onnxruntime as ort

    if threads is not None and threads < 1:
        raise UsageError(f"--latency-threads must be at least 1 (got {threads})")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def probe_session(model: nn.Module, input_chw: tuple[int, int, int], *, threads: int | None = 1,
                  providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> ort.InferenceSession:
    """A throwaway ONNX Runtime session of ``model`` (eval mode), exported in memory with a dynamic batch.

    The TorchScript exporter (``dynamo=False``) takes a fraction of a second where the dynamo
    exporter of :func:`kdsearch.export.export_onnx` takes several; fine for timing, not for
    shipping. A model it cannot trace (an ``ExportedProgram``'s module) goes through the dynamo
    exporter instead.
    """
    import onnxruntime as ort

    try:
        model = model.eval()
    except NotImplementedError:  # a .pt2 program's module: its mode was fixed when it was exported
        pass
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; fine for a probe
            torch.onnx.export(model, (torch.zeros(1, *input_chw),), buffer, dynamo=False,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        data = buffer.getvalue()
    except Exception:  # noqa: BLE001 - any tracing failure: the exporter that ships files handles more models
        import tempfile
        from pathlib import Path

        from kdsearch.export.onnx_export import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "probe.onnx"
            export_onnx(model, torch.zeros(2, *input_chw), path)
            data = path.read_bytes()
    return ort.InferenceSession(data, session_options(threads), providers=list(providers))


_CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def interleaved_latency_ms(sessions: Mapping[str, ort.InferenceSession],
                           input_shape: tuple[int, ...] | Mapping[str, tuple[int, ...]], *,
                           runs: int = 100, warmup: int = 10, seed: int = 0,
                           clock: str = "wall") -> dict[str, dict[str, float]]:
    """Median latency of each session on one random input of ``input_shape``, timed in one loop.

    ``input_shape`` may also map each session's name to its own shape (parts of a model, say).
    ``clock="thread"`` times the calling thread's CPU time instead of the wall clock: with one
    intra-op thread ONNX Runtime computes on the calling thread, so that is the latency the run
    would have on an idle core, whatever else the machine is running (on a loaded machine the
    wall clock of the same run swings by several times).

    Every session runs ``warmup`` times first; then each of ``runs`` rounds runs every session
    once, starting at a different session each round, so slow drifts of the machine (another
    process, frequency scaling) fall on all of them alike.

    Returns:
        ``{name: {"p50", "p90", "mean", "runs"}}`` in milliseconds.
    """
    if not sessions:
        raise ValueError("no sessions to time")
    if clock not in _CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; use one of {', '.join(_CLOCKS)}")
    now = _CLOCKS[clock]
    names = list(sessions)
    shapes = {n: tuple(input_shape[n]) for n in names} if isinstance(input_shape, Mapping) else \
        dict.fromkeys(names, tuple(input_shape))
    inputs = {s: np.random.default_rng(seed).standard_normal(s, dtype=np.float32) for s in set(shapes.values())}
    feeds = {n: {sessions[n].get_inputs()[0].name: inputs[shapes[n]]} for n in names}
    for _ in range(warmup):
        for n in names:
            sessions[n].run(None, feeds[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        for i in range(len(names)):
            n = names[(r + i) % len(names)]
            t0 = now()
            sessions[n].run(None, feeds[n])
            times[n].append((now() - t0) * 1e3)
    out = {}
    for n, ts in times.items():
        t = np.asarray(ts)
        p50, p90 = np.percentile(t, [50, 90])
        out[n] = {"p50": float(p50), "p90": float(p90), "mean": float(t.mean()), "runs": len(t)}
    return out


def time_models(models: Mapping[str, nn.Module], input_chw: tuple[int, int, int], *, batches: tuple[int, ...] = (1, 32),
                threads: int | None = 1, provider: str = "cpu", runs: int = 50, warmup: int = 10,
                seconds: float | None = None, seed: int = 0, clock: str = "wall") -> dict[str, dict[int, float]]:
    """Median ONNX Runtime latency (ms) of each model at each batch size, all models timed interleaved.

    Models are exported in memory (:func:`probe_session`); at each batch size every model runs
    in one loop (:func:`interleaved_latency_ms`), so ratios between them are fair. ``seconds``
    caps the timed rounds per batch size (at least 5 rounds and 2 warm-ups), for models
    that take long at a large batch. ``clock`` as in :func:`interleaved_latency_ms`: pass
    ``kdsearch.export.latency_model.clock_for(threads, provider)`` to compare with a
    :class:`~kdsearch.export.latency_model.LatencyModel`'s predictions, which are read on that clock.

    Returns:
        ``{name: {batch: p50_ms}}``.
    """
    from kdsearch.export.runtime import PROVIDERS
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise UsageError(f"unknown ONNX Runtime provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    if PROVIDERS[provider][0] not in ort.get_available_providers():
        raise UsageError(f"ONNX Runtime provider {provider!r} is not available here "
                         f"({', '.join(ort.get_available_providers())}); time on cpu or install its runtime")
    from kdsearch.export._capture import captured_output

    with captured_output():  # ORT prints its own warning when a provider cannot start
        sessions = {n: probe_session(m, input_chw, threads=threads, providers=tuple(PROVIDERS[provider]))
                    for n, m in models.items()}
    started = {s.get_providers()[0] for s in sessions.values()}
    if started != {PROVIDERS[provider][0]}:  # ONNX Runtime fell back silently (no GPU, or its libraries missing)
        raise UsageError(f"ONNX Runtime could not start provider {provider!r} here (it ran on "
                         f"{', '.join(sorted(started))}); time on cpu, or install the GPU and its CUDA/cuDNN libraries")
    out: dict[str, dict[int, float]] = {n: {} for n in models}
    for b in batches:
        n_runs, n_warmup = runs, warmup
        if seconds is not None:
            probe = interleaved_latency_ms(sessions, (b, *input_chw), runs=1, warmup=1, seed=seed, clock=clock)
            round_s = sum(t["p50"] for t in probe.values()) / 1e3
            n_runs = max(5, min(runs, int(seconds / max(round_s, 1e-9))))
            n_warmup = max(2, min(warmup, n_runs // 5))
        timed = interleaved_latency_ms(sessions, (b, *input_chw), runs=n_runs, warmup=n_warmup, seed=seed,
                                       clock=clock)
        for n, t in timed.items():
            out[n][b] = t["p50"]
    return out

