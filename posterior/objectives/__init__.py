"""Training objectives, each written against :class:`~posterior.core.trajectories.Trajectories`."""

from posterior.objectives.base import Objective
from posterior.objectives.path_integral import PathIntegral
from posterior.objectives.relative_trajectory_balance import RelativeTrajectoryBalance
from posterior.objectives.subtrajectory_balance import SubTrajectoryBalance, subtrajectory_weights
from posterior.objectives.trajectory_balance import TrajectoryBalance
from posterior.objectives.vargrad import VarGrad

__all__ = ["Objective", "PathIntegral", "RelativeTrajectoryBalance", "SubTrajectoryBalance", "TrajectoryBalance", "VarGrad",
           "subtrajectory_weights"]
