"""Sub-trajectory balance with a learned state flow, optionally forward-looking (FL-SubTB).

For every pair of indices i < j of a trajectory with state flows log F_k:

    r_ij = log F_i + sum_{k=i}^{j-1} (log p_F,k - log q_k) - log F_j,

and the loss is sum_{i<j} w_ij r_ij^2 with w_ij proportional to lambda^(j - i), normalized
to sum to 1, averaged over the batch. log F_N = log R(x_1) is fixed, log F_0 plays the role
of log Z. The forward-looking flow is log F_k = NN(x_k, t_k) + (1 - t_k) log p_ref,t_k(x_k)
+ t_k log R(x_k) (p_ref,0 is evaluated at t_1, where the reference is not a point mass).
"""

from __future__ import annotations

import torch
from torch import Tensor

from posterior.samplers.networks import PISFlow
from posterior.paths.path_target import BoltzmannPath
from posterior.core.trajectories import Trajectories
from posterior.objectives.base import Objective, floor_level


def subtrajectory_weights(steps: int, lam: float, *, device=None, dtype=torch.float32) -> Tensor:
    """(N + 1, N + 1) upper-triangular weights lambda^(j - i) for i < j, summing to 1."""
    idx = torch.arange(steps + 1, device=device, dtype=torch.float64)
    gap = idx[None, :] - idx[:, None]
    log_w = torch.where(gap > 0, gap * torch.log(torch.tensor(lam, dtype=torch.float64)),
                        torch.tensor(float("-inf"), dtype=torch.float64))
    return torch.softmax(log_w.reshape(-1), 0).reshape_as(log_w).to(dtype)


class SubTrajectoryBalance(Objective):
    """SubTB / FL-SubTB loss.

    Args:
        flow: state-flow network log F(x, t) (see :class:`PISFlow`).
        path: target path measure; used for log R at intermediate states and the reference
            marginal (forward-looking only). None: use each batch's own ``Trajectories.path``
            (conditional problems, where the path binds the batch's conditions).
        lam: weight base lambda (> 0); > 1 favours long sub-trajectories.
        forward_looking: add (1 - t) log p_ref,t(x) + t log R(x) to the learned flow.
    """

    def __init__(self, flow: PISFlow, path: BoltzmannPath | None, lam: float = 2.0,
                 forward_looking: bool = False, min_log_reward: float = -1e4) -> None:
        super().__init__(min_log_reward)
        if lam <= 0:
            raise ValueError(f"lam must be positive, got {lam}")
        self.flow = flow
        self.path = path
        self.lam = float(lam)
        self.forward_looking = forward_looking
        self._weights: Tensor | None = None
        self._last_log_f0: float | None = None

    def _weight_matrix(self, steps: int, like: Tensor) -> Tensor:
        w = self._weights
        if w is None or w.shape[0] != steps + 1 or w.device != like.device or w.dtype != like.dtype:
            w = subtrajectory_weights(steps, self.lam, device=like.device, dtype=like.dtype)
            self._weights = w
        return w

    def log_flows(self, traj: Trajectories) -> Tensor:
        """(N + 1, B) log-flows at every state; the last row is the (floored) log-reward."""
        states, times = traj.states.detach(), traj.times
        inner = self.flow(states[:-1], times[:-1], traj.context)
        if self.forward_looking:
            ref_t = times[:-1].clone()
            ref_t[0] = times[1]
            path = self.path if self.path is not None else traj.path
            if path is None:
                raise ValueError("forward-looking SubTB needs a path measure (none given, none on the trajectories)")
            with torch.no_grad():
                level = floor_level(traj.log_reward, self.min_log_reward)  # the terminal batch's floor
                log_r = torch.maximum(path.log_reward_all(states[:-1]), level)
                log_ref = path.reference.log_marginal(states[:-1], ref_t[:, None])
            t = times[:-1, None]
            inner = inner + (1 - t) * log_ref + t * log_r
        terminal = self.floor(traj.log_reward.detach())
        return torch.cat([inner, terminal[None]], dim=0)

    def loss(self, traj: Trajectories) -> Tensor:
        log_f = self.log_flows(traj)
        self._last_log_f0 = float(log_f[0].detach().mean())
        step = traj.log_pf_steps - traj.log_q_steps
        cumulative = torch.cat([step.new_zeros(1, step.shape[1]), step.cumsum(0)], dim=0)
        a = log_f - cumulative  # r_ij = a_i - a_j
        w = self._weight_matrix(step.shape[0], a)
        row, col = w.sum(1), w.sum(0)
        quad = (row[:, None] * a * a).sum(0) + (col[:, None] * a * a).sum(0) - 2 * (a * (w @ a)).sum(0)
        return quad.mean()

    def log_z(self) -> float | None:
        """log F at the start state in the last batch (the flow's estimate of log Z)."""
        return self._last_log_f0
