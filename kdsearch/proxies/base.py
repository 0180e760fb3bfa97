"""The proxy extension point: teacher statistics once per search, one score per candidate."""
from __future__ import annotations

import contextlib
import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterator, Mapping

import torch
from torch import nn

from kdsearch.errors import ProxyError, UsageError
from kdsearch.models.features import ModelParts
from kdsearch.registry import Registry

__all__ = [
    "PROXIES",
    "Batch",
    "Proxy",
    "register_proxy",
    "create_proxy",
    "teacher_stats",
    "score_candidate",
    "device_of",
    "seeded",
    "untouched",
]

Batch = tuple[torch.Tensor, torch.Tensor]  # images (N, C, H, W), integer labels (N,)

PROXIES: Registry[type["Proxy"]] = Registry("proxy")


class Proxy(ABC):
    """A training-free score of a candidate network; higher is better, except cost proxies.

    The search calls :meth:`prepare` once with the teacher and the fixed batch, then
    :meth:`score` for every candidate with what :meth:`prepare` returned. Subclasses implement
    :meth:`_score`; :meth:`score` runs it seeded, on the student's device, and leaves the
    student as it found it (training flag, buffers, gradients).

    Cost proxies (``is_cost=True``) return the raw positive cost, which the search minimises;
    every other proxy returns a value where higher is better.
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = False
    is_cost: ClassVar[bool] = False

    def prepare(self, teacher: nn.Module | None, batch: Batch, parts: ModelParts | None = None) -> Any:
        """Compute the teacher's side once per search; proxies without a teacher return None."""
        return None

    def score(self, student: nn.Module, batch: Batch, stats: Any, *, seed: int = 0) -> float:
        """Score one candidate; deterministic for ``seed``, the global RNG is left as it was."""
        device = device_of(student)
        x, y = batch[0].to(device), batch[1].to(device)
        with untouched(student), seeded(seed, device):
            value = self._score(student, (x, y), stats)
        return float(value)

    @abstractmethod
    def _score(self, student: nn.Module, batch: Batch, stats: Any) -> float:
        """Score ``student`` (already in train mode) on ``batch`` (already on its device)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def register_proxy(cls: type[Proxy]) -> type[Proxy]:
    """Class decorator: register a :class:`Proxy` subclass under its ``name``."""
    return PROXIES.register(cls.name)(cls)


def create_proxy(name: str, **options: Any) -> Proxy:
    """Build the proxy called ``name``; options left as None take the proxy's defaults."""
    cls = PROXIES.get(name)
    options = {k: v for k, v in options.items() if v is not None}
    accepted = [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = ", ".join(accepted) or "none"
        raise UsageError(f"proxy {name!r} has no option {', '.join(unknown)}; its options: {known}")
    return cls(**options)


def teacher_stats(
    proxies: Mapping[str, Proxy],
    teacher: nn.Module | None,
    batch: Batch,
    parts: ModelParts | None = None,
) -> dict[str, Any]:
    """Run every proxy's :meth:`Proxy.prepare` once; the result goes to :func:`score_candidate`."""
    stats: dict[str, Any] = {}
    for name, proxy in proxies.items():
        if proxy.needs_teacher and teacher is None:
            raise ProxyError(
                f"proxy {name!r} compares candidates with a teacher but none was given; "
                "pass a teacher or drop the proxy"
            )
        stats[name] = proxy.prepare(teacher if proxy.needs_teacher else None, batch, parts)
    return stats


def score_candidate(
    student: nn.Module,
    batch: Batch,
    proxies: Mapping[str, Proxy],
    stats: Mapping[str, Any],
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Score one candidate with every proxy; a proxy that crashes raises :class:`ProxyError`."""
    scores: dict[str, float] = {}
    for name, proxy in proxies.items():
        try:
            scores[name] = proxy.score(student, batch, stats.get(name), seed=seed)
        except (RuntimeError, ValueError) as exc:
            raise ProxyError(
                f"proxy {name!r} failed on the candidate: {exc}; check that the candidate runs on "
                "the batch's shape, or drop the proxy"
            ) from exc
    return scores


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for the block only; the caller's RNG state is restored afterwards."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def untouched(model: nn.Module, train: bool = True) -> Iterator[None]:
    """Put ``model`` in train mode for the block, then restore its mode, buffers and grads.

    BatchNorm in train mode updates running statistics even under ``no_grad``; proxies must
    leave the candidate (and a teacher) exactly as they found it.
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grads = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]  # backward adds in place
    model.train(train)
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in grads:
            p.grad = g
        for m, mode in modes:
            m.training = mode
