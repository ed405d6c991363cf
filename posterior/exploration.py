"""Exploration schedules: extra sampling variance that decays linearly to zero."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinearDecay:
    """Extra variance per unit time ``initial * max(0, 1 - iteration / horizon)``.

    Args:
        initial: extra variance at iteration 0 (>= 0); 0 disables exploration.
        horizon: iterations until it reaches 0 (> 0).
    """

    initial: float
    horizon: int

    def __post_init__(self) -> None:
        if self.initial < 0:
            raise ValueError(f"explore must be >= 0, got {self.initial}")
        if self.horizon <= 0:
            raise ValueError(f"exploration horizon must be positive, got {self.horizon}")

    def __call__(self, iteration: int) -> float:
        return self.initial * max(0.0, 1.0 - iteration / self.horizon)
