"""Training objectives, each written against :class:`~posterior.trajectories.Trajectories`."""

from .base import Objective
from .path_integral import PathIntegral
from .relative_trajectory_balance import RelativeTrajectoryBalance
from .subtrajectory_balance import SubTrajectoryBalance, subtrajectory_weights
from .trajectory_balance import TrajectoryBalance
from .vargrad import VarGrad

__all__ = ["Objective", "PathIntegral", "RelativeTrajectoryBalance", "SubTrajectoryBalance", "TrajectoryBalance", "VarGrad",
           "subtrajectory_weights"]
