"""posterior: amortized samplers of p(x | y) ∝ p(x) r(x, y) with diffusion-structured policies."""

from .conditional_sampler import ConditionalSampler, build_conditional_sampler
from .fit import fit
from .grids import random_grid, uniform_grid
from .networks import PISFlow, PISPolicy
from .objectives import PathIntegral, SubTrajectoryBalance, TrajectoryBalance, VarGrad
from .path_target import BoltzmannPath
from .reference import BrownianBridge
from .sampler import DiffusionSampler
from .training import Trainer, TrainingConfig
from .trajectories import Trajectories

__all__ = [
    "BoltzmannPath", "BrownianBridge", "ConditionalSampler", "build_conditional_sampler", "fit", "DiffusionSampler", "PISFlow", "PISPolicy", "PathIntegral",
    "SubTrajectoryBalance", "Trainer", "TrainingConfig", "Trajectories", "TrajectoryBalance", "VarGrad",
    "random_grid", "uniform_grid",
]
