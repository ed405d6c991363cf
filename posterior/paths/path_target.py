"""Target path measures Q(tau) = R(x_1) * prod_k q_k(x_k | x_{k+1}).

For a density known up to a constant (a Boltzmann target, or prior density times
likelihood), the per-step terms are the reference backward kernels (Brownian bridge).
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from posterior.core.checks import check_no_nan, check_shape
from posterior.paths.reference import BrownianBridge


class TerminalDensity(Protocol):
    """What the sampler needs of a target: an unnormalized log-density and its gradient."""

    dim: int

    def log_reward(self, x: Tensor) -> Tensor:  # (B, d) -> (B,)
        ...

    def grad_log_reward(self, x: Tensor) -> Tensor:  # (B, d) -> (B, d)
        ...


class BoltzmannPath:
    """Path measure for a terminal density R known up to its normalizing constant.

    log Q(tau) = log R(x_1) + sum_k log p_B(x_k | x_{k+1}) with Brownian-bridge p_B.

    Args:
        target: object with ``dim``, ``log_reward`` (B, d) -> (B,) and ``grad_log_reward``.
        reference: the backward (noising) process.

    Attributes:
        evaluations: points at which the target's log-reward ("log_reward") and its gradient
            ("grad") were evaluated through this path (the cost measure of the benchmarks).
    """

    def __init__(self, target: TerminalDensity, reference: BrownianBridge) -> None:
        self.target = target
        self.reference = reference
        self.dim = int(target.dim)
        self.evaluations = {"log_reward": 0, "grad": 0}

    def log_reward(self, x: Tensor) -> Tensor:
        """x: (B, d) -> (B,), validated: NaN raises, -inf is a legal zero density."""
        self.evaluations["log_reward"] += int(x.shape[0])
        value = self.target.log_reward(x)
        check_shape(value, (x.shape[0],), "target.log_reward(x)")
        return check_no_nan(value, "target.log_reward")

    def score(self, x: Tensor) -> Tensor:
        """Gradient of log R. x: (B, d) -> (B, d); NaN raises."""
        self.evaluations["grad"] += int(x.shape[0])
        value = self.target.grad_log_reward(x)
        check_shape(value, tuple(x.shape), "target.grad_log_reward(x)")
        return check_no_nan(value, "target.grad_log_reward")

    def log_q_steps(self, states: Tensor, times: Tensor) -> Tensor:
        """states: (N + 1, B, d), times: (N + 1,) -> (N, B) backward-kernel log-densities."""
        return self.reference.log_prob_steps(states, times)

    def log_reward_all(self, states: Tensor) -> Tensor:
        """log R at every state. states: (M, B, d) -> (M, B)."""
        m, b, d = states.shape
        return self.log_reward(states.reshape(m * b, d)).reshape(m, b)
