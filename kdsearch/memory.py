"""How much memory one step needs, measured on small batches, and how much there is.

A step's peak memory grows linearly with the batch: a fixed part (gradients, optimizer
state, workspaces) plus a part per image (the activations autograd saves, the transients of
the widest layer). :func:`estimate_step_memory` runs the real step at two small batches,
measures each peak and extrapolates that line; :func:`memory_budget` says how much may be used.

How a peak is measured (:func:`measure_peak`):

- CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before the step; the
  caching allocator reserves somewhat more than it hands out (:data:`CUDA_SLACK`).
- CPU: every allocation and free of PyTorch's CPU allocator, as the profiler records them
  (``profile_memory=True``), summed in time order; the running maximum is the step's peak
  of live tensor bytes. Peak-RSS deltas (``getrusage``, ``VmHWM``) were rejected: at 2–4
  images the step reuses memory glibc kept from earlier steps, so the delta is mostly
  noise. The live bytes are exact (with ``MALLOC_MMAP_THRESHOLD_=131072`` the peak RSS of
  a ResNet-20 step at 64 images, 64 px, was 395 MB against 394 MB of live bytes), but
  glibc's default heap keeps freed blocks, so the kernel sees more: 1.30–1.60× the live
  bytes in the measurements behind :data:`CPU_SLACK`. The probe starts its own profiler, so
  it must not run inside another ``torch.profiler`` session (that session would stop early).

``benchmarks/memory_estimate.py`` compares the estimate with the peak RSS of a real run.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from kdsearch.errors import UsageError

if TYPE_CHECKING:  # torch is imported where used: TrainConfig checks --max-memory without it
    import torch

__all__ = [
    "CPU_SLACK",
    "CUDA_SLACK",
    "DEFAULT_SHARE",
    "MemoryBudget",
    "MemoryEstimate",
    "estimate_step_memory",
    "format_bytes",
    "measure_peak",
    "memory_budget",
    "parse_memory",
]

DEFAULT_SHARE = 0.7  # without --max-memory: this share of what is free now (other processes need the rest)
CPU_SLACK = 1.6  # peak RSS / live tensor bytes under glibc's default malloc (measured 1.30–1.60)
CUDA_SLACK = 1.15  # reserved / allocated of the caching allocator, plus the CUDA context's own growth

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_memory(text: str) -> int:
    """``"6GB"`` -> 6·10⁹ bytes, ``"512MiB"`` -> 512·2²⁰; a bare number is bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise UsageError(f"--max-memory {text!r} is not an amount of memory; write it like 6GB, 512MB or 1.5GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    """``31.2 GB``, ``512 MB``: decimal units, as :func:`parse_memory` reads them."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.3g} {unit}" if n < 100 * size else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class MemoryBudget:
    """The bytes a step may use, and where that number came from (for messages)."""

    nbytes: int
    source: str  # "--max-memory" or "70% of the available memory"


def memory_budget(max_memory: str | None, device: torch.device) -> MemoryBudget:
    """``--max-memory`` when given; else :data:`DEFAULT_SHARE` of the memory free on ``device`` now."""
    if max_memory is not None:
        return MemoryBudget(parse_memory(max_memory), "--max-memory")
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        where = "free GPU memory"
    else:
        free, where = _mem_available(), "available memory"
    return MemoryBudget(int(DEFAULT_SHARE * free), f"{DEFAULT_SHARE:.0%} of the {where}")


def _mem_available() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` (what can be allocated without swapping), else all memory."""
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class _Peak:
    nbytes: int = 0


@contextlib.contextmanager
def measure_peak(device: torch.device) -> Iterator[_Peak]:
    """The peak of memory allocated inside the block above what was allocated at its start."""
    import torch

    peak = _Peak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield peak
        torch.cuda.synchronize(device)
        peak.nbytes = torch.cuda.max_memory_allocated(device) - base
        return
    from torch.autograd.profiler import profile

    with _quiet_stderr(), profile(profile_memory=True) as prof:
        yield peak
    deltas = sorted((e.start_ns(), e.nbytes()) for e in prof.kineto_results.events() if e.name() == "[memory]")
    live = top = 0
    for _, delta in deltas:  # allocations positive, frees negative, in time order
        live += delta
        top = max(top, live)
    peak.nbytes = top


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The profiler's C++ side prints a line to file descriptor 2 when it starts and stops."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True)
class MemoryEstimate:
    """A step's peak memory as a line in the batch size, slack for the allocator included."""

    fixed: float  # bytes at batch 0: gradients, optimizer state, workspaces
    per_image: float  # bytes each image adds: saved activations, the widest layer's transients
    slack: float  # allocator overhead the measurement cannot see (CPU_SLACK or CUDA_SLACK)

    def at(self, batch: int) -> int:
        """Bytes one step at ``batch`` needs."""
        return int(self.slack * (self.fixed + batch * self.per_image))

    def largest_batch(self, budget: int) -> int:
        """The largest batch whose step fits in ``budget`` bytes (0: not even one image)."""
        room = budget / self.slack - self.fixed
        return max(0, math.floor(room / self.per_image)) if self.per_image > 0 else (1 << 30 if room >= 0 else 0)


def estimate_step_memory(
    step: Callable[[int], None], device: torch.device, probes: tuple[int, int] = (2, 4)
) -> MemoryEstimate:
    """Run ``step(b)`` at the two ``probes`` batches and extrapolate its peak memory linearly.

    ``step`` must start from the same state each time (fresh gradients and optimizer state),
    so each peak includes what the step allocates once; it must not touch a run's state.
    """
    small, large = probes
    peaks = []
    for batch in (small, large):
        with measure_peak(device) as peak:
            step(batch)
        peaks.append(peak.nbytes)
    per_image = max(0.0, (peaks[1] - peaks[0]) / (large - small))
    fixed = max(0.0, peaks[0] - small * per_image)
    return MemoryEstimate(fixed, per_image, CUDA_SLACK if device.type == "cuda" else CPU_SLACK)
