"""Bind a conditional reward log R(x, y) to the conditions of one batch of trajectories."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from posterior.core.checks import check_shape
from posterior.paths.path_target import BoltzmannPath
from posterior.paths.reference import BrownianBridge


class ConditionalReward(Protocol):
    """Unnormalized log-density of x given y: ``dim`` and ``log_reward(x, y) -> (B,)``.

    ``grad_log_reward(x, y)`` is optional (autograd is used otherwise).
    """

    dim: int

    def log_reward(self, x: Tensor, y: Tensor) -> Tensor:
        ...


class BoundReward:
    """``x -> log R(x, y_b)`` for a fixed batch of per-trajectory conditions.

    Args:
        reward: conditional reward.
        y: (B, *cond_shape) the condition of each trajectory. Inputs x with M * B rows
            (all states of a trajectory batch, time-major) use the conditions tiled M times.
    """

    def __init__(self, reward: ConditionalReward, y: Tensor) -> None:
        self.reward = reward
        self.y = y
        self.dim = int(reward.dim)

    def _conditions(self, x: Tensor) -> Tensor:
        b = self.y.shape[0]
        if x.shape[0] % b:
            raise ValueError(f"x has {x.shape[0]} rows, not a multiple of the {b} conditions")
        reps = x.shape[0] // b
        return self.y if reps == 1 else self.y.repeat(reps, *([1] * (self.y.ndim - 1)))

    def log_reward(self, x: Tensor) -> Tensor:
        check_shape(x, (None, self.dim), "x")
        return self.reward.log_reward(x, self._conditions(x))

    def grad_log_reward(self, x: Tensor) -> Tensor:
        y = self._conditions(x)
        grad = getattr(self.reward, "grad_log_reward", None)
        if grad is not None:
            return grad(x, y)
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            value = self.reward.log_reward(z, y)
            finite = torch.where(torch.isfinite(value), value, torch.zeros_like(value))
            return torch.autograd.grad(finite.sum(), z)[0]


def bind_conditions(reward: ConditionalReward, y: Tensor, reference: BrownianBridge) -> BoltzmannPath:
    """Path measure of p(x | y_b) for every trajectory b. y: (B, *cond_shape)."""
    return BoltzmannPath(BoundReward(reward, y), reference)
