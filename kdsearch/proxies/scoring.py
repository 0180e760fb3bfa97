"""Score given archs against a teacher with any proxies: what ``kdsearch score`` runs; and the
proxy batch that fits in memory (:func:`proxy_batch_that_fits`), which the search uses too."""
from __future__ import annotations

import random
from typing import Any, Sequence

import torch

from kdsearch.arch import Arch
from kdsearch.errors import MemoryBudgetError, UsageError
from kdsearch.progress import NULL_PROGRESS, Progress

__all__ = ["score_archs", "sample_archs", "proxy_batch_that_fits", "largest_candidate"]


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
    if archs:
        largest = build_candidate(space, largest_candidate(space, archs, dataset), dataset.num_classes,
                                  dataset.in_channels, seed)
        batch_size = proxy_batch_that_fits([teacher, largest], dataset, batch_size, seed, progress=progress)
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


def largest_candidate(space, archs: Sequence[Arch], dataset) -> Arch:
    """The arch with the most parameters (counted on the meta device: nothing allocated)."""
    def params(arch: Arch) -> int:
        with torch.device("meta"):
            model = space.build(arch, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
        return sum(p.numel() for p in model.parameters())

    return max(archs, key=params)


def proxy_batch_that_fits(
    models: Sequence[torch.nn.Module],
    dataset,
    batch_size: int,
    seed: int,
    *,
    max_memory: str | None = None,
    processes: int = 1,
    progress: Progress = NULL_PROGRESS,
) -> int:
    """``batch_size`` when one forward and backward of each of ``models`` fits in memory, else the largest batch that does.

    The proxies score the teacher once and then one candidate at a time, never together, so
    the larger of the models' needs is compared with the budget (``max_memory``, default 70 %
    of the free memory). Each model's need is measured on batches of 2 and 4 and extrapolated
    (:func:`kdsearch.memory.estimate_step_memory`); a proxy that runs several passes per score
    may need more. ``processes``: how many search workers score at once on this machine; each
    gets an equal part of the budget. A lowered batch is said in one note.

    Raises:
        MemoryBudgetError: not even a batch of 8 (or ``batch_size``, when smaller) fits.
    """
    from kdsearch.data import fixed_batch
    from kdsearch.memory import estimate_step_memory, format_bytes, memory_budget
    from kdsearch.proxies.base import device_of, seeded, untouched

    def forward_backward(model: torch.nn.Module, device: torch.device):
        def step(batch: int) -> None:
            x = fixed_batch(dataset, batch, seed)[0].to(device)  # (b, C, H, W)
            model(x).float().sum().backward()
            model.zero_grad(set_to_none=True)

        return step

    device = device_of(models[0])
    budget = memory_budget(max_memory, device, processes=processes)
    needs = []
    for model in models:
        model_device = device_of(model)
        with untouched(model), seeded(seed, model_device):  # buffers, grads and RNG as they were
            needs.append(estimate_step_memory(forward_backward(model, model_device), model_device))
    need = max(e.at(batch_size) for e in needs)
    if need <= budget.nbytes:
        return batch_size
    fits = min([batch_size] + [e.largest_batch(budget.nbytes) for e in needs])
    smallest = min(batch_size, 8)
    if fits < smallest:
        raise MemoryBudgetError(
            f"scoring a proxy batch of {batch_size} needs ≈ {format_bytes(need)} but {format_bytes(budget.nbytes)} "
            f"is available ({budget.source}); even a batch of {smallest} does not fit: lower --image-size or "
            "use a smaller teacher"
        )
    progress.note(
        f"scoring a proxy batch of {batch_size} needs ≈ {format_bytes(need)} but {format_bytes(budget.nbytes)} is "
        f"available ({budget.source}): scoring on {fits} images instead (--proxy-batch {fits})"
    )
    return fits
