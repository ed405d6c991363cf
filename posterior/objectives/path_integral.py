"""Path integral sampler (PIS): reverse KL between path measures, reparameterized."""

from __future__ import annotations

from torch import Tensor

from posterior.core.trajectories import Trajectories
from posterior.objectives.base import Objective


class PathIntegral(Objective):
    """PIS loss mean_b (log p_F - log Q) = KL(P_F || Q / Z) - log Z.

    Trajectories must be simulated with gradients through the states
    (``differentiable = True``); the reward enters with its gradient.
    """

    differentiable = True

    def loss(self, traj: Trajectories) -> Tensor:
        return self.residual(traj).mean()
