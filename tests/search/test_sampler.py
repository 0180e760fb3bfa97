"""--sampler and the options that belong to one sampler only."""
from __future__ import annotations

import pytest

from kdsearch.errors import UsageError
from kdsearch.search.config import SAMPLERS, SearchConfig
from kdsearch.search.sampler import create_sampler


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_is_created_seeded(sampler):
    assert create_sampler(SearchConfig(sampler=sampler)) is not None


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "evolution"])
@pytest.mark.parametrize("option", ["mutation_prob", "crossover_prob"])
def test_nsga2_probabilities_are_refused_by_other_samplers(sampler, option):
    with pytest.raises(UsageError, match="--sampler evolution"):
        SearchConfig(sampler=sampler, **{option: 0.5})


def test_nsga2_probabilities_reach_the_sampler():
    children = create_sampler(SearchConfig(mutation_prob=0.3, crossover_prob=0.6))._child_generation_strategy
    assert children._crossover_prob == 0.6 and children._mutation_prob == 0.3
    assert SearchConfig().crossover_prob is None  # unset: Optuna's default, 0.9
    assert create_sampler(SearchConfig())._child_generation_strategy._crossover_prob == 0.9


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_probabilities_outside_zero_one_are_refused(value):
    with pytest.raises(UsageError, match="probability"):
        SearchConfig(crossover_prob=value)
