"""posterior: amortized samplers of p(x | y) ∝ p(x) r(x, y) with diffusion-structured policies."""

from .conditional_sampler import ConditionalSampler, build_conditional_sampler
from .cpu_allocator import retain_freed_memory
from .fit import fit
from .grids import random_grid, uniform_grid
from .buffer_training import ReplayConfig, ReplayTraining
from .networks import PISFlow, PISPolicy
from .objectives import PathIntegral, SubTrajectoryBalance, TrajectoryBalance, VarGrad
from .path_target import BoltzmannPath
from .reference import BrownianBridge, VPNoising
from .sampler import DiffusionSampler
from .training import Trainer, TrainingConfig
from .trajectories import Trajectories

__all__ = [
    "BoltzmannPath", "BrownianBridge", "ConditionalSampler", "DiffusionSampler", "PISFlow", "PISPolicy",
    "PathIntegral", "ReplayConfig", "ReplayTraining", "SubTrajectoryBalance", "Trainer", "TrainingConfig",
    "Trajectories", "TrajectoryBalance", "VPNoising", "VarGrad", "build_conditional_sampler", "fit",
    "random_grid", "retain_freed_memory", "uniform_grid",
]
