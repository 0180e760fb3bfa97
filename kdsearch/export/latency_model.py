"""A cheap latency model of a search space's candidates: a per-block lookup table, cached on disk.

Timing a candidate for real (export, session, timed runs) takes about a second; a search scores
hundreds. In the manner of FBNet (Wu et al., CVPR 2019) and ProxylessNAS (Cai et al., ICLR 2019),
a candidate is cut into the parts its forward runs one after another: the stem, every residual /
inverted-residual / NAS-Bench-201 block (each with its own input shape), and the head (the last
feature module, average pool and classifier). Each distinct part is exported alone, in eval mode
the way whole models are (so ONNX Runtime fuses its conv+BN+ReLU the same way), and timed once at
the model's batch size; the table keys parts by their structure and input shape, so two candidates
that share a block share its entry.

A standalone part pays one ``session.run`` call's overhead ``o`` that the whole model pays once, so
the prediction is ``scale * (o + sum(max(part_ms - o, 0)))``: ``o`` is the latency of a session that
computes next to nothing (a part timed under it adds nothing, so a deeper arch never predicts faster),
and ``scale`` the median ratio of measured to summed latency over a
few whole candidates timed when the table is made (what the sum misses: a whole model's weights
do not all stay in cache from one run to the next as one block's do).
Parts are timed lazily: :meth:`LatencyModel.predict_ms` times the parts of a candidate the table
does not hold yet (a fraction of a second) and adds them to the file, so a search pays only for the
blocks its candidates use.

Families whose forward is not a chain of blocks (``vit``: the position embedding sits between the
patch embedding and the blocks) are timed whole instead: the first prediction of each arch exports
and times it (about a second), and the table keeps the figure.

With one intra-op thread on the CPU provider (the default), latencies are read on the calling
thread's CPU clock (:func:`clock_for`): ORT computes on that thread, so the figure is the latency
on an idle core and does not swing with other processes' load, as the wall clock of a shared
machine does (by 3x on two busy cores). Other settings use the wall clock.

The table is JSON (never unpickled), written atomically, and keyed by the machine, the ONNX Runtime
version, provider, threads, input shape, batch, number of classes and the space's definition.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from kdsearch.arch import Arch
from kdsearch.errors import UsageError
from kdsearch.export.timing import interleaved_latency_ms, probe_session

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["LatencyModel", "clock_for", "cpu_model", "default_cache_dir"]

_FORMAT = 2  # bump when the table's meaning changes: older files are then re-measured
_CALIBRATION_ARCHS = 5  # whole candidates timed for real to fit the scale of the parts' sum
_SESSION_BUDGET_S = 0.1  # the timed runs of one part aim at about this long...
_MIN_RUNS, _MAX_RUNS = 5, 100  # ...within these many runs


def default_cache_dir() -> Path:
    """``latency/`` in kdsearch's cache: ``$KDSEARCH_CACHE``, else ``$XDG_CACHE_HOME/kdsearch``, else ``~/.cache/kdsearch``."""
    from kdsearch.data._image_cache import cache_root

    return cache_root() / "latency"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), as latency tables and benchmarks record the machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _Head(nn.Module):
    """The tail of :class:`~kdsearch.models.base.ImageClassifier`: last feature module, pool, classifier."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features, self.classifier = features, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # (B, C, H, W)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1))  # (B, K)


class _Nothing(nn.Module):
    """A model that computes next to nothing: its latency is one ``session.run`` call's overhead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1, :1, :1].flatten(1) + 1.0  # (B, 1)


@dataclass(frozen=True)
class _Part:
    """One piece of a candidate's forward: where it is and what it looks like to the table."""

    path: str  # module path in the model; "" for the head
    input_chw: tuple[int, ...]  # without the batch axis
    signature: str  # structure + input shape, hashed


@contextlib.contextmanager
def _meta_build() -> Iterator[None]:
    """Build on the meta device, with ``torch.nn.init`` off: on meta tensors an init computes
    nothing yet costs ~8 ms a call through ``torch._refs``, most of a candidate's build."""
    saved = {n: f for n, f in vars(nn.init).items() if n.endswith("_") and not n.startswith("_") and callable(f)}
    try:
        for name in saved:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        with torch.device("meta"):
            yield
    finally:
        for name, f in saved.items():
            setattr(nn.init, name, f)


def _block_paths(model: nn.Module) -> list[str] | None:
    """The modules a chain-shaped classifier runs in order (stem, then every block), or None."""
    from kdsearch.models.mbconv import MBConvNet
    from kdsearch.models.nb201 import NB201Net
    from kdsearch.models.resnet_cifar import ResNetCifar

    if not isinstance(model, (ResNetCifar, MBConvNet, NB201Net)):
        return None
    paths = ["stem"]
    for stage in model.stage_paths:
        module = model.get_submodule(stage)
        if isinstance(module, nn.Sequential):
            paths += [f"{stage}.{name}" for name, _ in module.named_children()]
        else:
            paths.append(stage)
    return paths


def _head_of(model: nn.Module) -> _Head:
    """The head part: the feature module unless it is the last stage, then pool and classifier."""
    features = model.get_submodule(model.feature_path)
    if model.feature_path in model.stage_paths:
        features = nn.Identity()
    return _Head(features, model.classifier)


def _signature(text: str, input_chw: tuple[int, ...]) -> str:
    return hashlib.sha1(f"{text}|{tuple(input_chw)}".encode()).hexdigest()[:20]


_OUTPUT_SHAPES: dict[tuple[str, tuple[int, ...]], tuple[int, ...]] = {}  # per process: (structure, input) -> output


def _decompose(model: nn.Module, input_chw: tuple[int, int, int]) -> list[_Part] | None:
    """Cut ``model`` into its parts, each with its input shape, chaining the parts' output shapes.

    A part's structure is its ``repr`` (every layer with its channels, kernel, stride, groups and
    flags); its output shape comes from one forward of that part alone on meta tensors, once per
    process for each structure and input shape (a whole model's meta forward costs a quarter second).
    """
    paths = _block_paths(model)
    if paths is None:
        return None
    device = next(model.parameters()).device
    parts, shape = [], tuple(input_chw)
    for path in paths:
        module = model.get_submodule(path)
        text = repr(module)
        if (text, shape) not in _OUTPUT_SHAPES:
            with torch.no_grad():
                out = module(torch.empty(1, *shape, device=device))
            _OUTPUT_SHAPES[text, shape] = tuple(out.shape[1:])
        parts.append(_Part(path, shape, _signature(text, shape)))
        shape = _OUTPUT_SHAPES[text, shape]
    parts.append(_Part("", shape, _signature(repr(_head_of(model)), shape)))
    return parts


def _part_module(model: nn.Module, part: _Part) -> nn.Module:
    return _head_of(model) if part.path == "" else model.get_submodule(part.path)


class LatencyModel:
    """Predicts ORT latency (ms) of a space's archs at one (machine, provider, threads, input C×H×W, batch).

    Make one with :meth:`for_space`; it loads the table from disk or starts it (timing a few whole
    candidates to fit the per-call overhead, well under a minute on two cores) and writes it back
    atomically whenever :meth:`predict_ms` times a part it had not seen.
    """

    def __init__(self, space, key: Mapping[str, Any], *, num_classes: int, in_channels: int,
                 image_size: tuple[int, int], batch: int, threads: int | None, provider: str,
                 path: Path | None, table: Mapping[str, Any] | None = None) -> None:
        self.space, self.key = space, dict(key)
        self.num_classes, self.in_channels = num_classes, in_channels
        self.image_size, self.batch, self.threads, self.provider = tuple(image_size), batch, threads, provider
        self._path = path
        table = table or {}
        self.parts: dict[str, float] = dict(table.get("parts", {}))  # signature -> ms, standalone
        self.whole: dict[str, float] = dict(table.get("whole", {}))  # arch key -> ms, timed whole
        self.calibration: dict[str, Any] = dict(table.get("calibration", {}))
        self.measure_s = float(table.get("measure_s", 0.0))  # time spent timing, over the table's life
        self._predicted: dict[str, float] = {}

    # -- construction ------------------------------------------------------------------

    @classmethod
    def for_space(cls, space, *, num_classes: int, in_channels: int, image_size: tuple[int, int], batch: int,
                  threads: int | None = 1, provider: str = "cpu", cache_dir: Path | None = None,
                  progress: Callable[[int, int], None] | None = None) -> "LatencyModel":
        """The latency model of ``space`` for this input and runtime, from the cache or measured now.

        Args:
            space: a :class:`~kdsearch.spaces.SearchSpace`.
            num_classes, in_channels, image_size: what candidates are built for.
            batch: the batch size predictions are for.
            threads: ONNX Runtime intra-op threads (None: ORT's default, all cores).
            provider: ``cpu``, ``cuda`` or ``tensorrt``.
            cache_dir: where tables live (default :func:`default_cache_dir`).
            progress: called with (done, total) while the table is started.
        """
        _check_provider(provider)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise UsageError(f"the latency batch must be a positive integer (got {batch!r})")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise UsageError(f"--latency-threads must be a positive integer (got {threads!r})")
        image_size = (int(image_size[0]), int(image_size[1]))
        key = _table_key(space, num_classes, in_channels, image_size, batch, threads, provider)
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{space.name}-{digest}.json"
        table = _read_table(path, key)
        model = cls(space, key, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                    batch=batch, threads=threads, provider=provider, path=path, table=table)
        if table is None:
            model._calibrate(progress)
        return model

    @property
    def path(self) -> Path | None:
        """Where the table lives."""
        return self._path

    # -- prediction --------------------------------------------------------------------

    def predict_ms(self, arch: Arch) -> float:
        """Predicted median latency of ``arch`` in ms (times and records any part not in the table yet)."""
        if arch.key in self._predicted:
            return self._predicted[arch.key]
        if arch.key in self.whole:
            return self.whole[arch.key]
        if not self.space.timed_by_parts:  # not a chain of known blocks (a pruned teacher): timed whole
            self._measure_whole([arch])
            return self.whole[arch.key]
        with _meta_build():  # shapes and structure without allocating or initialising weights
            meta = self.space.build(arch, num_classes=self.num_classes, in_channels=self.in_channels)
        parts = _decompose(meta, self._chw)
        if parts is None:
            self._measure_whole([arch])
            return self.whole[arch.key]
        missing = [p for p in parts if p.signature not in self.parts]
        if missing:
            self._measure_parts(arch, missing)
        value = self._combine(parts)
        self._predicted[arch.key] = value
        return value

    def _combine(self, parts: list[_Part]) -> float:
        return self._combine_signatures([p.signature for p in parts])

    def _combine_signatures(self, signatures: list[str]) -> float:
        """One call's overhead plus each part's time beyond its own call, scaled. A part timed at less
        than an empty call adds nothing, so a deeper arch is never predicted faster."""
        a = self.calibration.get("intercept_ms", 0.0)
        o = self.calibration.get("per_part_ms", 0.0)
        work = sum(max(self.parts[s] - o, 0.0) for s in signatures)
        return max(self.calibration.get("scale", 1.0) * (work + a), 1e-3)

    # -- measurement -------------------------------------------------------------------

    @property
    def clock(self) -> str:
        """``thread`` (the calling thread's CPU time) with one thread on the CPU, else ``wall``."""
        return clock_for(self.threads, self.provider)

    @property
    def _chw(self) -> tuple[int, int, int]:
        return (self.in_channels, *self.image_size)

    def _providers(self) -> tuple[str, ...]:
        from kdsearch.export.runtime import PROVIDERS

        return tuple(PROVIDERS[self.provider])

    def _build(self, arch: Arch) -> nn.Module:
        return self.space.build(arch, num_classes=self.num_classes, in_channels=self.in_channels).eval()

    def _part_sessions(self, arch: Arch, parts: list[_Part]) -> dict[str, tuple[ort.InferenceSession, tuple]]:
        model = self._build(arch)
        out = {}
        for p in parts:
            if p.signature not in out:
                session = probe_session(_part_module(model, p), p.input_chw, threads=self.threads,
                                        providers=self._providers())
                out[p.signature] = (session, (self.batch, *p.input_chw))
        return out

    def _measure_parts(self, arch: Arch, parts: list[_Part]) -> None:
        t0 = time.perf_counter()
        sessions = self._part_sessions(arch, parts)
        self.parts.update(_time_sessions(sessions, self.clock))
        self.measure_s += time.perf_counter() - t0
        self._save()

    def _measure_whole(self, archs: list[Arch]) -> None:
        t0 = time.perf_counter()
        sessions = {a.key: (probe_session(self._build(a), self._chw, threads=self.threads,
                                          providers=self._providers()), (self.batch, *self._chw)) for a in archs}
        self.whole.update(_time_sessions(sessions, self.clock))
        self.measure_s += time.perf_counter() - t0
        self._save()

    def _calibrate(self, progress: Callable[[int, int], None] | None) -> None:
        """Time the per-call overhead (a session that computes next to nothing) and a few whole
        candidates with their parts, all in one loop; record the overhead and how well the parts add up."""
        t0 = time.perf_counter()
        archs = _calibration_archs(self.space, self.image_size, self.num_classes, self.in_channels)
        if not archs:  # a family timed whole: nothing to fit
            self._save()
            return
        sessions: dict[str, tuple] = {
            "call": (probe_session(_Nothing(), self._chw, threads=self.threads, providers=self._providers()),
                     (self.batch, *self._chw))}
        counts: dict[str, list[str]] = {}
        for i, arch in enumerate(archs):
            if progress:
                progress(i, len(archs) + 1)
            model = self._build(arch)
            parts = _decompose(model, self._chw)
            assert parts is not None
            counts[arch.key] = [p.signature for p in parts]
            sessions[f"whole:{arch.key}"] = (probe_session(model, self._chw, threads=self.threads,
                                                           providers=self._providers()), (self.batch, *self._chw))
            for p in parts:
                if p.signature not in sessions:
                    sessions[p.signature] = (probe_session(_part_module(model, p), p.input_chw, threads=self.threads,
                                                           providers=self._providers()), (self.batch, *p.input_chw))
        timed = _time_sessions(sessions, self.clock)
        self.parts.update({k: v for k, v in timed.items() if k != "call" and not k.startswith("whole:")})
        o = timed["call"]
        self.calibration = {"intercept_ms": o, "per_part_ms": o, "scale": 1.0}
        raw = [self._combine_signatures(counts[a.key]) for a in archs]
        measured = [timed[f"whole:{a.key}"] for a in archs]
        # what the parts' sum misses (cache misses across blocks, the whole graph's layout changes) is
        # roughly proportional; the median ratio, so that one odd figure does not move it
        self.calibration.update({"scale": float(np.median(np.divide(measured, raw))), "archs": [a.key for a in archs],
                                 "measured_ms": measured, "sum_of_parts_ms": raw})
        self.measure_s += time.perf_counter() - t0
        if progress:
            progress(len(archs) + 1, len(archs) + 1)
        self._save()

    # -- storage -----------------------------------------------------------------------

    def _save(self) -> None:
        if self._path is None:
            return
        # another process may have added parts since we read the file: keep them
        on_disk = _read_table(self._path, self.key) or {}
        parts = {**on_disk.get("parts", {}), **self.parts}
        whole = {**on_disk.get("whole", {}), **self.whole}
        doc = {"format": _FORMAT, "key": self.key, "calibration": self.calibration or on_disk.get("calibration", {}),
               "measure_s": self.measure_s, "parts": parts, "whole": whole}
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, self._path)


def clock_for(threads: int | None, provider: str) -> str:
    """The clock latencies are read on: with one intra-op thread on the CPU provider ONNX Runtime
    computes on the calling thread, whose CPU time is the latency on an idle core and does not
    swing with other processes' load; otherwise the wall clock."""
    return "thread" if threads == 1 and provider == "cpu" else "wall"


def _check_provider(provider: str) -> None:
    from kdsearch.export.runtime import PROVIDERS
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise UsageError(f"unknown ONNX Runtime provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    if PROVIDERS[provider][0] not in ort.get_available_providers():
        raise UsageError(f"ONNX Runtime provider {provider!r} is not available here "
                         f"({', '.join(ort.get_available_providers())}); time on cpu or install its runtime")


def _table_key(space, num_classes: int, in_channels: int, image_size: tuple[int, int], batch: int,
               threads: int | None, provider: str) -> dict[str, Any]:
    import onnxruntime as ort

    form = space.form_for(image_size)
    genes = space.genes_for(form)
    return {
        "format": _FORMAT,
        "machine": {"node": platform.node(), "cpu": cpu_model(), "cpus": os.cpu_count()},
        "onnxruntime": ort.__version__, "torch": torch.__version__.split("+")[0],
        "provider": provider, "threads": threads, "input_chw": [in_channels, *image_size], "batch": batch,
        "num_classes": num_classes,
        "space": {"name": space.name, "family": space.family, "form": form,
                  "genes": {n: {"choices": list(g.choices) if g.choices is not None else None,
                                "length": g.length, "value": g.value} for n, g in genes.items()},
                  # what else makes the family's networks (a pruned space: the teacher they are cut from)
                  **{k: space.definition[k] for k in space.family_keys}},
    }


def _read_table(path: Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The table at ``path`` if it is well-formed JSON made for ``key``; None otherwise (re-measure)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("key") != json.loads(json.dumps(key)):
        return None
    parts, whole, calibration = doc.get("parts"), doc.get("whole"), doc.get("calibration")
    if not isinstance(parts, dict) or not isinstance(whole, dict) or not isinstance(calibration, dict):
        return None
    for table in (parts, whole):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                   for v in table.values()):
            return None
    for name in ("intercept_ms", "per_part_ms", "scale"):
        v = calibration.get(name, 0.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return None
    return doc


def _calibration_archs(space, image_size: tuple[int, int], num_classes: int, in_channels: int) -> list[Arch]:
    """A few archs of the space spanning its range of part counts (seeded, so the same every time)."""
    if not space.timed_by_parts:
        return []
    rng = random.Random(0)
    by_parts: dict[int, Arch] = {}
    for _ in range(100):
        arch = space.sample(rng, image_size)
        with _meta_build():
            meta = space.build(arch, num_classes=num_classes, in_channels=in_channels)
        paths = _block_paths(meta)
        if paths is None:
            return []
        by_parts.setdefault(len(paths), arch)
    counts = sorted(by_parts)
    if len(counts) <= _CALIBRATION_ARCHS:
        return [by_parts[n] for n in counts]
    picks = {counts[round(i * (len(counts) - 1) / (_CALIBRATION_ARCHS - 1))] for i in range(_CALIBRATION_ARCHS)}
    return [by_parts[n] for n in sorted(picks)]


def _time_sessions(sessions: Mapping[str, tuple[ort.InferenceSession, tuple[int, ...]]], clock: str) -> dict[str, float]:
    """Median ms of each session on its own input shape, each timed back to back on ``clock``.

    Back to back, not interleaved: a part runs with its weights in cache, as it does inside the
    whole model run after run; rotating through dozens of sessions would time every one of them
    cold (a session that computes nothing then takes 50 µs instead of 7). The thread clock keeps
    other processes' load out of the figures that interleaving would otherwise be needed for.
    The number of runs adapts to the session's speed: about ``_SESSION_BUDGET_S`` of timed runs,
    within ``_MIN_RUNS`` .. ``_MAX_RUNS``.
    """
    rng = np.random.default_rng(0)
    out = {}
    for name, (session, shape) in sessions.items():
        feed = {session.get_inputs()[0].name: rng.standard_normal(shape, dtype=np.float32)}
        t0 = time.perf_counter()
        session.run(None, feed)  # first run: allocations, and a speed estimate
        first = time.perf_counter() - t0
        runs = int(min(_MAX_RUNS, max(_MIN_RUNS, _SESSION_BUDGET_S / max(first, 1e-6))))
        timed = interleaved_latency_ms({name: session}, shape, runs=runs, warmup=min(3, runs), clock=clock)
        out[name] = timed[name]["p50"]
    return out
