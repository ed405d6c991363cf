"""VarGrad (log-variance): variance of log p_F - log Q within groups sharing a condition."""

from __future__ import annotations

from torch import Tensor

from posterior.core.trajectories import Trajectories
from posterior.objectives.base import Objective


class VarGrad(Objective):
    """Log-variance loss 0.5 * mean_groups Var_k (log p_F - log Q).

    The batch is split into consecutive groups of ``group_size`` trajectories that share
    the same condition y (for an unconditional target, ``group_size=None`` uses the whole
    batch as one group). The group mean plays the role of -log Z(y), so no parameter is
    learned. Estimates are never pooled across groups.
    """

    def __init__(self, group_size: int | None = None, min_log_reward: float = -1e4) -> None:
        super().__init__(min_log_reward)
        if group_size is not None and group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a variance needs two samples), got {group_size}")
        self.group_size = group_size

    def grouped_residual(self, traj: Trajectories) -> Tensor:
        """(G, K) residuals log p_F - log Q."""
        residual = self.residual(traj)
        k = residual.shape[0] if self.group_size is None else self.group_size
        if residual.shape[0] % k:
            raise ValueError(f"batch size {residual.shape[0]} is not a multiple of group_size {k}")
        return residual.reshape(-1, k)

    def loss(self, traj: Trajectories) -> Tensor:
        grouped = self.grouped_residual(traj)
        centred = grouped - grouped.mean(dim=1, keepdim=True)
        return 0.5 * (centred * centred).mean()
