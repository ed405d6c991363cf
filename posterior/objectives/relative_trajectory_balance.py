"""Relative trajectory balance (RTB): TB between a fine-tuned posterior diffusion model and its
prior.

With log Q(tau) = log p_prior(tau) + beta log r(x_1, y) (a :class:`DiffusionPriorPath`), the
residual log Z(y) + log p_post(tau) - log p_prior(tau) - beta log r(x_1, y) vanishes for every
trajectory exactly when p_post(x_1) ∝ p_prior(x_1) r(x_1, y)^beta. An optional hinge drops
trajectories whose squared residual is already below a threshold (no update from them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from posterior.core.trajectories import Trajectories
from posterior.objectives.trajectory_balance import ConditionalLogZ, TrajectoryBalance


class RelativeTrajectoryBalance(TrajectoryBalance):
    """0.5 * mean over trajectories of r^2 * 1[r^2 >= hinge] (hinge = 0: plain RTB).

    Args:
        hinge: squared residuals below this give no update (the RTB paper's classifier guidance
            uses 0.1); 0 disables it.
        log_z_init, min_log_reward, conditional_log_z: as for :class:`TrajectoryBalance`.
    """

    def __init__(self, hinge: float = 0.0, log_z_init: float = 0.0, min_log_reward: float = -1e4,
                 conditional_log_z: ConditionalLogZ | None = None) -> None:
        super().__init__(log_z_init, min_log_reward, conditional_log_z)
        if hinge < 0:
            raise ValueError(f"hinge must be >= 0, got {hinge}")
        self.hinge = float(hinge)

    def loss(self, traj: Trajectories) -> Tensor:
        residual = self.log_z_of(traj) + self.residual(traj)
        squared = residual * residual
        if self.hinge > 0:
            squared = torch.where(squared.detach() >= self.hinge, squared, torch.zeros_like(squared))
        return 0.5 * squared.mean()
