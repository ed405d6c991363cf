"""Trajectory balance: (log Z + log p_F(tau) - log Q(tau))^2 with a learned log Z."""

from __future__ import annotations

from torch import Tensor

from ..trajectories import Trajectories
from .base import Objective, scalar_log_z


class TrajectoryBalance(Objective):
    """TB loss 0.5 * mean_b (log Z + log p_F - log Q)^2.

    At the optimum p_F(tau) = Q(tau) / Z for every tau, so the residual vanishes
    identically and log Z equals the true log-partition function.
    """

    def __init__(self, log_z_init: float = 0.0, min_log_reward: float = -1e4) -> None:
        super().__init__(min_log_reward)
        self.log_z_param = scalar_log_z(log_z_init)

    def loss(self, traj: Trajectories) -> Tensor:
        residual = self.log_z_param + self.residual(traj)
        return 0.5 * (residual * residual).mean()

    def log_z(self) -> float:
        return float(self.log_z_param.detach())
