"""Generative models behind one sampling interface, in equilibrium and non-equilibrium families."""

from neqgen.models.base import GenerativeModel
from neqgen.models.equilibrium.energy import TimeConditionedEnergy
from neqgen.models.equilibrium.oracle import BoltzmannOracle
from neqgen.models.equilibrium.stationary import StationaryEnergy
from neqgen.models.nonequilibrium.bridge import FrameBridge
from neqgen.models.nonequilibrium.diffusion import TimeConditionedDiffusion
from neqgen.models.nonequilibrium.flow_matching import TimeConditionedFlowMatching
from neqgen.models.nonequilibrium.neural_sde import NeuralSDE
from neqgen.models.nonequilibrium.score_sde import TimeConditionedScoreSDE
from neqgen.models.nonequilibrium.trajectory import TrajectoryModel

__all__ = [
    "BoltzmannOracle",
    "FrameBridge",
    "GenerativeModel",
    "NeuralSDE",
    "StationaryEnergy",
    "TimeConditionedDiffusion",
    "TimeConditionedEnergy",
    "TimeConditionedFlowMatching",
    "TimeConditionedScoreSDE",
    "TrajectoryModel",
]
