"""Trajectory balance: (log Z + log p_F(tau) - log Q(tau))^2 with a learned log Z."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from posterior.core.trajectories import Trajectories
from posterior.objectives.base import Objective, floor_level
from posterior.objectives.log_partition import ConditionalLogZ, scalar_log_z


class TrajectoryBalance(Objective):
    """TB loss 0.5 * mean_b (log Z + log p_F - log Q)^2.

    At the optimum p_F(tau) = Q(tau) / Z for every tau, so the residual vanishes
    identically and log Z equals the true log-partition function. With
    ``conditional_log_z`` (conditional TB), log Z(y) is a function of the trajectory's
    condition context (``Trajectories.context``).

    ``separate_replay_log_z``: backward batches from a replay buffer get a learned scalar log Z
    of their own (:meth:`replay_loss`). With one shared log Z, which settles between the
    on-policy batches' mean residual (ELBO side) and the buffer batches' (EUBO side), the buffer
    batches keep a non-zero mean residual, and its gradient, E_buffer[grad log p_F] times that
    offset, fits p_F by maximum likelihood to the buffer's sampling distribution (rank-
    prioritized: the high-reward modes). Each batch kind then has zero mean residual at its own
    log Z, as in VarGrad, while both log Z still have the true log Z as their optimum.
    """

    def __init__(self, log_z_init: float = 0.0, min_log_reward: float = -1e4,
                 conditional_log_z: ConditionalLogZ | None = None, separate_replay_log_z: bool = False) -> None:
        super().__init__(min_log_reward)
        self.log_z_param = scalar_log_z(log_z_init)
        self.conditional_log_z = conditional_log_z
        if separate_replay_log_z and conditional_log_z is not None:
            raise ValueError("separate_replay_log_z is for a scalar log Z, not a conditional log Z(y)")
        self.replay_log_z_param = scalar_log_z(log_z_init) if separate_replay_log_z else None

    def log_z_of(self, traj: Trajectories) -> Tensor:
        """(B,) or scalar learned log Z of each trajectory's condition."""
        if self.conditional_log_z is not None:
            if traj.context is None:
                raise ValueError("conditional TB needs trajectories with a condition context")
            return self.conditional_log_z(traj.context) + self.log_z_param
        return self.log_z_param

    @torch.no_grad()
    def warm_start_log_z(self, traj: Trajectories, average: Callable[[Tensor], Tensor] | None = None) -> None:
        """log Z <- mean over the batch of log Q - log p_F (minus the conditional head, if any):
        the value that zeroes the batch's mean residual. Trajectories that end where the target
        vanishes (log R at or below the floor, e.g. -inf) are left out of the mean: their floored
        residual would drag log Z down by ~|min_log_reward| times their share. If every
        trajectory of the batch (on every process) is such, log Z is left unchanged."""
        offset = -self.residual(traj)
        if self.conditional_log_z is not None:
            offset = offset - self.log_z_of(traj) + self.log_z_param
        keep = traj.log_reward > floor_level(traj.log_reward, self.min_log_reward)
        total, count = offset[keep].sum(), keep.sum().to(offset.dtype)
        if average is not None:  # the mean of sums over the mean of counts is the pooled mean
            total, count = average(total), average(count)
        if count > 0:
            self.log_z_param.fill_(total / count)
            if self.replay_log_z_param is not None:
                self.replay_log_z_param.fill_(total / count)

    def loss(self, traj: Trajectories) -> Tensor:
        return self._squared_residual(self.log_z_of(traj), traj)

    def replay_loss(self, traj: Trajectories) -> Tensor:
        """TB loss on replayed (backward) trajectories, with the replay log Z when it is separate."""
        if self.replay_log_z_param is None:
            return self.loss(traj)
        return self._squared_residual(self.replay_log_z_param, traj)

    def _squared_residual(self, log_z: Tensor, traj: Trajectories) -> Tensor:
        residual = log_z + self.residual(traj)
        return 0.5 * (residual * residual).mean()

    def log_z(self) -> float | None:
        return None if self.conditional_log_z is not None else float(self.log_z_param.detach())

    def replay_log_z(self) -> float | None:
        return None if self.replay_log_z_param is None else float(self.replay_log_z_param.detach())
