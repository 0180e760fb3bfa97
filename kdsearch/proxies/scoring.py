"""Score given archs against a teacher with any proxies: what ``kdsearch score`` runs."""
from __future__ import annotations

import random
from typing import Any, Sequence

import torch

from kdsearch.arch import Arch
from kdsearch.errors import UsageError
from kdsearch.progress import NULL_PROGRESS, Progress

__all__ = ["score_archs", "sample_archs"]


def sample_archs(space, n: int, seed: int, image_size: tuple[int, int] | None = None) -> list[Arch]:
    """``n`` distinct archs drawn uniformly from ``space`` (fewer if the space is smaller), in
    the form for ``image_size`` (None: the space's own or the CIFAR form)."""
    if n <= 0:
        raise UsageError(f"--sample must be positive (got {n})")
    rng = random.Random(seed)
    found: dict[str, Arch] = {}
    for _ in range(20 * n):
        arch = space.sample(rng, image_size)
        found.setdefault(arch.key, arch)
        if len(found) == n:
            break
    return list(found.values())


def score_archs(
    teacher: torch.nn.Module,
    dataset,
    space,
    archs: Sequence[Arch],
    proxy_names: Sequence[str],
    *,
    batch_size: int = 64,
    seed: int = 0,
    teacher_feature: str | None = None,
    teacher_classifier: str | None = None,
    progress: Progress = NULL_PROGRESS,
) -> list[dict[str, Any]]:
    """``[{"arch", "scores", "params", "flops"}]`` for every arch; teacher statistics once.

    Each arch is built with weights seeded from its key, so a score never depends on the
    order archs are given in.
    """
    from kdsearch.data import fixed_batch
    from kdsearch.models.features import locate_parts
    from kdsearch.proxies.base import create_proxy, score_candidate, teacher_stats
    from kdsearch.proxies.cost import count_flops, count_params
    from kdsearch.spaces.candidates import build_candidate

    if not proxy_names:
        raise UsageError("give at least one proxy with --proxy (see `kdsearch proxies`)")
    proxies = {name: create_proxy(name) for name in dict.fromkeys(proxy_names)}
    batch = fixed_batch(dataset, batch_size, seed)
    parts = locate_parts(teacher, batch[0], feature=teacher_feature, classifier=teacher_classifier)
    stats = teacher_stats(proxies, teacher, batch, parts)
    h, w = dataset.image_size
    results = []
    progress.start("score", "scoring", len(archs))
    for arch in archs:
        space.validate(arch)
        student = build_candidate(space, arch, dataset.num_classes, dataset.in_channels, seed)
        results.append(
            {
                "arch": arch.to_dict(),
                "scores": score_candidate(student, batch, proxies, stats, seed=seed),
                "params": count_params(student),
                "flops": count_flops(student, (dataset.in_channels, h, w)),
            }
        )
        progress.advance("score")
    progress.finish("score")
    return results
