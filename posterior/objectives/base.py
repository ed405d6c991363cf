"""Common interface of the training objectives."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from posterior.core.trajectories import Trajectories


class Objective(nn.Module):
    """A loss on a batch of trajectories, with its own learned parameters (log Z, flows).

    Attributes:
        differentiable: True if the loss needs gradients through the simulated states
            (simulation-based objectives such as PIS); False for off-policy objectives,
            which accept trajectories from any behaviour policy (exploration, replay).
        min_log_reward: the floor of the terminal log-reward inside the loss, relative to the batch:
            log-rewards more than ``-min_log_reward`` below the batch's highest finite one (including
            -inf, a legal zero density) are raised to that level, so a trajectory that ends where the
            target vanishes gets a large but finite residual, and a target offset by any constant trains
            exactly as the unshifted one (:func:`floor_level`). Metrics keep the true value.
    """

    differentiable: bool = False

    def __init__(self, min_log_reward: float = -1e4) -> None:
        super().__init__()
        if not (math.isfinite(min_log_reward) and min_log_reward < 0):
            raise ValueError(f"min_log_reward must be a finite negative number (the floor's distance below the "
                             f"batch's best log-reward), got {min_log_reward!r}")
        self.min_log_reward = float(min_log_reward)

    def floor(self, log_reward: Tensor) -> Tensor:
        """(B,) the log-rewards raised to :func:`floor_level` of the batch."""
        return torch.maximum(log_reward, floor_level(log_reward, self.min_log_reward))

    def log_q(self, traj: Trajectories) -> Tensor:
        """(B,) log Q with the terminal log-reward floored relative to the batch (:meth:`floor`)."""
        return traj.log_q_steps.sum(0) + self.floor(traj.log_reward)

    def residual(self, traj: Trajectories) -> Tensor:
        """(B,) log p_F - log Q (floored)."""
        return traj.log_pf - self.log_q(traj)

    def loss(self, traj: Trajectories) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def replay_loss(self, traj: Trajectories) -> Tensor:
        """Loss on backward trajectories from a replay buffer (off-policy batches); the same as
        :meth:`loss` unless an objective keeps separate parameters for such batches."""
        return self.loss(traj)

    def log_z(self) -> float | None:
        """The objective's own estimate of log Z (learned), if it has one."""
        return None

    def replay_log_z(self) -> float | None:
        """The learned log Z of replayed batches, if the objective keeps a separate one."""
        return None

    def warm_start_log_z(self, traj: Trajectories, average: Callable[[Tensor], Tensor] | None = None) -> None:
        """Set the learned log Z to the batch's estimate mean(log Q - log p_F) (objectives with one).

        ``average`` maps the local scalar estimate to its mean across data-parallel processes.
        """
        raise ValueError(f"{type(self).__name__} has no learned scalar log Z to warm-start")

    def flow_parameters(self) -> list[nn.Parameter]:
        """Parameters trained with the flow / log Z learning rate."""
        return list(self.parameters())



def floor_level(log_reward: Tensor, offset: float) -> Tensor:
    """The loss's floor of a batch's log-rewards: ``offset`` (< 0) below the highest finite one (detached), so
    that the floor moves with any constant added to the target; ``offset`` itself when no value is finite."""
    finite = log_reward.detach()[torch.isfinite(log_reward.detach())]
    level = finite.max() + offset if finite.numel() else log_reward.new_tensor(offset)
    return level.to(log_reward.dtype)
