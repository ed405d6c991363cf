"""posterior: amortized samplers of p(x | y) ∝ p(x) r(x, y) with diffusion-structured policies.

The user API is a few names: :func:`fit` trains and returns a :class:`Posterior` (``sample``,
``log_z``, ``save_pretrained`` / ``from_pretrained``); :class:`TrainConfig`, :class:`SamplerConfig`
and :class:`ReplayConfig` hold every setting. :class:`Trainer` is the one training engine beneath.

Sub-packages, in the direction of their dependencies::

    priors, constraints  ->  core  ->  paths  ->  samplers, diffusion  ->  objectives
    ->  evaluation, baselines  ->  training  ->  fit, Posterior
"""

__version__ = "0.2.0"

from posterior.core.grids import random_grid, uniform_grid  # noqa: E402
from posterior.core.trajectories import Trajectories  # noqa: E402
from posterior.fit import fit  # noqa: E402
from posterior.model import Posterior  # noqa: E402
from posterior.objectives import (PathIntegral, RelativeTrajectoryBalance, SubTrajectoryBalance,  # noqa: E402
                                  TrajectoryBalance, VarGrad)
from posterior.paths.path_target import BoltzmannPath  # noqa: E402
from posterior.paths.reference import BrownianBridge, VPNoising  # noqa: E402
from posterior.samplers.config import SamplerConfig  # noqa: E402
from posterior.samplers.sampler import DiffusionSampler  # noqa: E402
from posterior.training.config import TrainConfig  # noqa: E402
from posterior.training.cpu_allocator import retain_freed_memory  # noqa: E402
from posterior.training.engine import Trainer  # noqa: E402
from posterior.training.replay import ReplayConfig  # noqa: E402

__all__ = [
    "BoltzmannPath", "BrownianBridge", "DiffusionSampler", "PathIntegral", "Posterior", "RelativeTrajectoryBalance",
    "ReplayConfig", "SamplerConfig", "SubTrajectoryBalance", "TrainConfig", "Trainer", "Trajectories",
    "TrajectoryBalance", "VPNoising", "VarGrad", "fit", "random_grid", "retain_freed_memory", "uniform_grid",
]
