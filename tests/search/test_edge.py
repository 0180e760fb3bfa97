"""Walking to the budget's edge: what ``--pick largest`` needs the first generation to hold."""
from __future__ import annotations

import random

from kdsearch.arch import Arch
from kdsearch.search.config import SearchConfig
from kdsearch.search.objective import CandidateShape, _meta_params, _moves, feasible_samples, grow_to_edge
from kdsearch.search.speed import SpeedModel
from kdsearch.spaces import load_space

SHAPE = CandidateShape(10, 1, (28, 28))


class _DepthTable:
    """Latency from total depth alone: widths are free, so the largest fitting arch is known."""

    path = None

    def __init__(self, ms_per_block: float) -> None:
        self.ms_per_block = ms_per_block

    def predict_ms(self, arch: Arch) -> float:
        return self.ms_per_block * sum(arch.genes["depths"])


def _speed() -> SpeedModel:
    return SpeedModel({1: 9.0, 32: 288.0}, {1: _DepthTable(1.0), 32: _DepthTable(32.0)}, teacher_module=None)


def test_under_a_speed_budget_the_first_generation_starts_with_the_largest_arch_that_fits():
    space = load_space("resnet_cifar")
    found, _ = feasible_samples(space, SHAPE, SearchConfig(speedup=2.0, seed=3), wanted=6, samples=40,
                                speed=_speed())
    top = found[0]
    # 9 ms teacher, 1 ms a block, 2x: at most 4 blocks; widths cost nothing, so all at the widest
    assert sum(top.genes["depths"]) == 4
    assert top.genes["widths"] == [128, 128, 128]
    assert _meta_params(space, top, SHAPE) == max(_meta_params(space, a, SHAPE) for a in found)


def test_an_edge_arch_under_a_params_budget_fits_and_no_move_adds_parameters_within_it():
    space = load_space("resnet_cifar")
    config = SearchConfig(max_params=40_000, seed=0)
    edge = grow_to_edge(space, SHAPE, config, None, random.Random(0))
    assert edge
    for arch in edge:
        params = _meta_params(space, arch, SHAPE)
        assert params <= 40_000
        assert all(_meta_params(space, m, SHAPE) <= params or _meta_params(space, m, SHAPE) > 40_000
                   for m in _moves(space, arch, SHAPE.image_size))
