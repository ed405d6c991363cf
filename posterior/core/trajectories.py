"""The per-trajectory quantities every objective and metric is written against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class Trajectories:
    """A batch of B trajectories on a shared grid of N steps (time-major).

    Attributes:
        times: (N + 1,) grid, times[0] = 0, times[-1] = 1.
        states: (N + 1, B, d); states[0] is the fixed start, states[-1] the samples.
        log_pf_steps: (N, B) log-densities of each step under the sampler (forward policy).
        log_q_steps: (N, B) per-step terms of the target path measure (backward kernels
            log p_B(x_k | x_{k+1}), or a diffusion prior's transitions).
        log_reward: (B,) terminal log-density log R(x_1 | y) of the target (may be -inf).
        scores: (N, B, d) clipped target scores used by a Langevin policy, else None.
        context: (B, hidden) condition features used by the policy, else None.
        path: the target path measure the trajectories were scored under (with the batch's
            conditions bound), for objectives that need log R at intermediate states.
    """

    times: Tensor
    states: Tensor
    log_pf_steps: Tensor
    log_q_steps: Tensor
    log_reward: Tensor
    scores: Tensor | None = None
    context: Tensor | None = None
    path: Any = None

    @property
    def samples(self) -> Tensor:
        """(B, d) terminal states x_1."""
        return self.states[-1]

    @property
    def log_pf(self) -> Tensor:
        """(B,) log p_F(tau)."""
        return self.log_pf_steps.sum(0)

    @property
    def log_q(self) -> Tensor:
        """(B,) unnormalized target path log-density log Q(tau)."""
        return self.log_q_steps.sum(0) + self.log_reward

    @property
    def log_weight(self) -> Tensor:
        """(B,) importance log-weight log Q - log p_F; its mean is the ELBO of log Z."""
        return self.log_q - self.log_pf
