"""Learning-rate schedules as a multiplier of the initial rate, a pure function of the iteration
(so a resumed run recomputes the same rate; nothing to checkpoint)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CosineDecay:
    """Multiplier ``final + (1 - final) * (1 + cos(pi * min(i / horizon, 1))) / 2``: 1 at iteration 0,
    ``final`` from ``horizon`` on. ``horizon`` 0 disables the decay (multiplier 1 throughout).

    Args:
        horizon: iterations over which the rate decays (>= 0); fixed independently of the training
            budget, so extending a run does not change the rates it already used.
        final: the multiplier at and after ``horizon``, in [0, 1].
    """

    horizon: int = 0
    final: float = 0.1

    def __post_init__(self) -> None:
        if self.horizon < 0:
            raise ValueError(f"lr decay horizon must be >= 0, got {self.horizon}")
        if not 0.0 <= self.final <= 1.0:
            raise ValueError(f"final lr multiplier must be in [0, 1], got {self.final}")

    def __call__(self, iteration: int) -> float:
        if self.horizon == 0:
            return 1.0
        progress = min(iteration / self.horizon, 1.0)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def set_rates(self, optimizer: torch.optim.Optimizer, base_lrs: list[float], iteration: int) -> None:
        """Set the first ``len(base_lrs)`` parameter groups of ``optimizer`` to their base rate
        times this iteration's multiplier; later groups (e.g. log Z) keep their rates."""
        multiplier = self(iteration)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * multiplier
