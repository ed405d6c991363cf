"""Common interface of the training objectives."""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from posterior.core.trajectories import Trajectories


class Objective(nn.Module):
    """A loss on a batch of trajectories, with its own learned parameters (log Z, flows).

    Attributes:
        differentiable: True if the loss needs gradients through the simulated states
            (simulation-based objectives such as PIS); False for off-policy objectives,
            which accept trajectories from any behaviour policy (exploration, replay).
        min_log_reward: terminal log-rewards below this (including -inf, a legal zero
            density) are raised to it inside the loss, so a trajectory that ends where the
            target vanishes gets a large but finite residual. Metrics keep the true value.
    """

    differentiable: bool = False

    def __init__(self, min_log_reward: float = -1e4) -> None:
        super().__init__()
        self.min_log_reward = float(min_log_reward)

    def log_q(self, traj: Trajectories) -> Tensor:
        """(B,) log Q with the terminal log-reward floored at ``min_log_reward``."""
        return traj.log_q_steps.sum(0) + traj.log_reward.clamp(min=self.min_log_reward)

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

