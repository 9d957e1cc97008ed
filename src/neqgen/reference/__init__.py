"""Exact references: the Fokker-Planck density of a system on a grid and its equilibrium."""

from neqgen.reference.boltzmann import (
    boltzmann_density,
    distance_from_equilibrium,
    log_boltzmann_masses,
    reduced_potential,
)
from neqgen.reference.fokker_planck import (
    FokkerPlanckSolution,
    bernoulli,
    entropy_production_rate,
    initial_density,
    solve_fokker_planck,
)
from neqgen.reference.grid import Grid

__all__ = [
    "FokkerPlanckSolution",
    "Grid",
    "bernoulli",
    "boltzmann_density",
    "distance_from_equilibrium",
    "entropy_production_rate",
    "initial_density",
    "log_boltzmann_masses",
    "reduced_potential",
    "solve_fokker_planck",
]
