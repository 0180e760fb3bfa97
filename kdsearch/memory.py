"""How much memory one step needs, measured on small batches, and how much there is.

A step's peak memory grows linearly with the batch: a fixed part (gradients, optimizer
state, workspaces) plus a part per image (the activations autograd saves, the transients of
the widest layer). :func:`estimate_step_memory` runs the real step at two small batches,
measures each peak and extrapolates that line; :func:`memory_budget` says how much may be used.

How much there is (:func:`available_memory`): the smaller of the host's ``MemAvailable`` and
what this process's memory cgroups still allow (:func:`cgroup_room`: a container's limit, v2
``memory.max`` or v1 ``memory.limit_in_bytes``, minus what the cgroup uses that the kernel
cannot drop, i.e. usage less inactive page cache). A container's limit is where the kernel's
OOM killer acts, whatever the host has free.

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
from pathlib import Path
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
    "available_memory",
    "cgroup_room",
    "estimate_step_memory",
    "format_bytes",
    "measure_peak",
    "memory_budget",
    "parse_memory",
    "resident_memory",
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
    """The bytes a stage may use, and where that number came from (for messages)."""

    nbytes: int
    source: str  # "--max-memory" or "70% of the available memory", and who shares it

    def less(self, nbytes: int, what: str) -> MemoryBudget:
        """What is left once ``nbytes`` are held by ``what`` (e.g. the teacher cache), never below 0."""
        return MemoryBudget(max(0, self.nbytes - nbytes), f"{self.source}, less {format_bytes(nbytes)} for {what}")


def memory_budget(max_memory: str | None, device: torch.device, processes: int = 1) -> MemoryBudget:
    """``--max-memory`` when given; else :data:`DEFAULT_SHARE` of the memory free on ``device`` now.

    ``processes``: how many processes of this run share it (``search --workers N``); each gets
    an equal part.
    """
    if max_memory is not None:
        nbytes, source = parse_memory(max_memory), "--max-memory"
    elif device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        nbytes, source = int(DEFAULT_SHARE * free), f"{DEFAULT_SHARE:.0%} of the free GPU memory"
    else:
        free, where = available_memory()
        nbytes, source = int(DEFAULT_SHARE * free), f"{DEFAULT_SHARE:.0%} of the {where}"
    if processes > 1:
        nbytes, source = nbytes // processes, f"{source}, shared by {processes} processes"
    return MemoryBudget(nbytes, source)


def available_memory() -> tuple[int, str]:
    """The host's ``MemAvailable`` or, when smaller, what the memory cgroups allow; with words for messages."""
    host = _mem_available()
    room = cgroup_room(_CGROUP_ROOT, _PROC_SELF_CGROUP)
    if room is not None and room < host:
        return room, "memory the cgroup limit leaves"
    return host, "available memory"


def resident_memory() -> int:
    """This process's resident set now (``VmRSS``): libraries, models and data it already holds; 0 without /proc."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    return 0


def _mem_available() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` (what can be allocated without swapping), else all memory."""
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def cgroup_room(root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_SELF_CGROUP) -> int | None:
    """Bytes this process may still allocate before a memory cgroup's limit; None when none is set.

    Every cgroup from this process's own up to ``root`` is read, v2 (``memory.max``,
    ``memory.current``, ``inactive_file`` of ``memory.stat``) and v1 (``memory.limit_in_bytes``,
    ``memory.usage_in_bytes``, ``total_inactive_file``); the tightest limit counts. Inactive page
    cache is left out of the usage: the kernel drops it before it kills. When the path in
    ``/proc/self/cgroup`` is not under ``root`` (a container with its own cgroup namespace
    mounted there), ``root`` itself is this process's cgroup.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    paths: dict[str, str] = {}  # "v2" or "v1" -> the cgroup's path inside its hierarchy
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            paths["v2"] = path
        elif "memory" in controllers.split(","):
            paths["v1"] = path
    rooms: list[int] = []
    hierarchies = [("v2", root, "memory.max", "memory.current", "inactive_file"),
                   ("v1", root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")]
    for version, mount, limit_file, usage_file, inactive_key in hierarchies:
        if version == "v2" and not (mount / "cgroup.controllers").is_file():
            continue
        if not mount.is_dir():
            continue
        for folder in _cgroup_chain(mount, paths.get(version, "/")):
            room = _cgroup_folder_room(folder, limit_file, usage_file, inactive_key)
            if room is not None:
                rooms.append(room)
    return min(rooms) if rooms else None


def _cgroup_chain(mount: Path, path: str) -> list[Path]:
    """The cgroup folders from the process's own up to ``mount``."""
    own = mount / path.strip("/") if path.strip("/") else mount
    if not own.is_dir():
        own = mount
    chain = [own]
    while chain[-1] != mount and mount in chain[-1].parents:
        chain.append(chain[-1].parent)
    return chain


def _cgroup_folder_room(folder: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    """``limit - (usage - inactive page cache)`` of one cgroup folder; None without a limit or its files."""
    try:
        limit_text = (folder / limit_file).read_text().strip()
        if limit_text == "max" or int(limit_text) >= _NO_LIMIT:
            return None
        usage = int((folder / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    inactive = 0
    with contextlib.suppress(OSError, ValueError):
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
                break
    return max(0, int(limit_text) - max(0, usage - inactive))


class _Peak:
    nbytes: int = 0  # the peak of live bytes above the start
    allocated: int = 0  # every byte allocated inside the block, freed or not


@contextlib.contextmanager
def measure_peak(device: torch.device) -> Iterator[_Peak]:
    """The peak of memory allocated inside the block above what was allocated at its start."""
    import torch

    peak = _Peak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        total = torch.cuda.memory_stats(device).get("allocated_bytes.all.allocated", 0)
        torch.cuda.reset_peak_memory_stats(device)
        yield peak
        torch.cuda.synchronize(device)
        peak.nbytes = torch.cuda.max_memory_allocated(device) - base
        peak.allocated = torch.cuda.memory_stats(device).get("allocated_bytes.all.allocated", 0) - total
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
    peak.allocated = sum(delta for _, delta in deltas if delta > 0)


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
    step: Callable[[int], None], device: torch.device, probes: tuple[int, int] = (2, 4), *, allocated: bool = False
) -> MemoryEstimate:
    """Run ``step(b)`` at the two ``probes`` batches and extrapolate its peak memory linearly.

    ``step`` must start from the same state each time (fresh gradients and optimizer state),
    so each peak includes what the step allocates once; it must not touch a run's state.
    ``allocated``: extrapolate every byte the step allocates, freed or not, instead of the
    peak: what a runtime that keeps each intermediate tensor of a pass alive holds (ONNX
    Runtime's calibration session, see :mod:`kdsearch.export.stage`).
    """
    small, large = probes
    peaks = []
    for batch in (small, large):
        with measure_peak(device) as peak:
            step(batch)
        peaks.append(peak.allocated if allocated else peak.nbytes)
    per_image = max(0.0, (peaks[1] - peaks[0]) / (large - small))
    fixed = max(0.0, peaks[0] - small * per_image)
    return MemoryEstimate(fixed, per_image, CUDA_SLACK if device.type == "cuda" else CPU_SLACK)
