"""Driven stochastic systems: potentials, drifts and their torchsde SDEs."""

from neqgen.systems.base import LangevinSDE, System
from neqgen.systems.harmonic import Harmonic
from neqgen.systems.prinz import Prinz
from neqgen.systems.rotating_wells import RotatingWells

__all__ = ["Harmonic", "LangevinSDE", "Prinz", "RotatingWells", "System"]
