"""How the next candidate is proposed: the Optuna sampler named by ``--sampler``."""
from __future__ import annotations

from kdsearch.search.config import SearchConfig

__all__ = ["create_sampler"]


def create_sampler(config: SearchConfig):
    """The Optuna sampler named by ``--sampler``, seeded."""
    import optuna

    if config.sampler == "evolution":
        return optuna.samplers.NSGAIISampler(
            population_size=config.population,
            mutation_prob=config.mutation_prob,
            crossover_prob=0.9 if config.crossover_prob is None else config.crossover_prob,  # Optuna's default
            seed=config.seed,
        )
    if config.sampler == "nsga3":
        return optuna.samplers.NSGAIIISampler(population_size=config.population, seed=config.seed)
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=config.seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=config.seed)
