"""Learned log Z: a scalar, or a function of the condition for conditional TB."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConditionalLogZ(nn.Module):
    """log Z(y) = MLP(context(y)) + bias, from the (detached) policy context (B, hidden), or any (B, in_features)
    features of y.

    The last layer is zero-initialized, so log Z starts at ``initial`` for every y.
    """

    def __init__(self, hidden: int = 64, initial: float = 0.0, *, in_features: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features or hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, float(initial))

    def forward(self, context: Tensor) -> Tensor:
        """context: (B, hidden) -> (B,)."""
        return self.net(context.detach()).squeeze(-1)


def scalar_log_z(initial: float = 0.0) -> nn.Parameter:
    """A learned scalar log Z."""
    return nn.Parameter(torch.tensor(float(initial)))
