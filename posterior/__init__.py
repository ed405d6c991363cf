"""posterior: amortized samplers of p(x | y) ∝ p(x) r(x, y) with diffusion-structured policies.

Sub-packages, in the direction of their dependencies::

    priors, constraints  ->  core  ->  paths  ->  samplers, diffusion  ->  objectives
    ->  evaluation, baselines  ->  training  ->  fit
"""

from posterior.core.grids import random_grid, uniform_grid
from posterior.core.trajectories import Trajectories
from posterior.fit import fit
from posterior.objectives import PathIntegral, SubTrajectoryBalance, TrajectoryBalance, VarGrad
from posterior.paths.path_target import BoltzmannPath
from posterior.paths.reference import BrownianBridge, VPNoising
from posterior.samplers.conditional_sampler import ConditionalSampler, build_conditional_sampler
from posterior.samplers.networks import PISFlow, PISPolicy
from posterior.samplers.sampler import DiffusionSampler
from posterior.training.cpu_allocator import retain_freed_memory
from posterior.training.engine import Trainer, TrainingConfig
from posterior.training.replay import ReplayConfig, ReplayTraining

__version__ = "0.2.0"

__all__ = [
    "BoltzmannPath", "BrownianBridge", "ConditionalSampler", "DiffusionSampler", "PISFlow", "PISPolicy",
    "PathIntegral", "ReplayConfig", "ReplayTraining", "SubTrajectoryBalance", "Trainer", "TrainingConfig",
    "Trajectories", "TrajectoryBalance", "VPNoising", "VarGrad", "build_conditional_sampler", "fit",
    "random_grid", "retain_freed_memory", "uniform_grid",
]
