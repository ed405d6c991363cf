"""Exploration schedules: extra sampling variance that decays linearly to zero.

Two conventions name the same thing. Ours is continuous-time: ``explore`` is extra variance per
unit time, so a step of length dt gets ``explore * dt`` on top of the policy's ``sigma2 * dt``.
The public code of Sendera et al. (2024) names a per-step standard deviation ε on a uniform
T-step grid: every step gets extra variance ε², i.e. ``explore = ε² T`` (4.0 for ε = 0.2 and
T = 100), and its schedule reaches zero after 5000 iterations whatever the training budget.
"""

from __future__ import annotations

from dataclasses import dataclass

#: iterations over which the public code's exploration decays to zero
PUBLIC_CODE_EXPLORE_HORIZON = 5000


def explore_from_step_std(step_std: float, steps: int) -> float:
    """Per-unit-time extra variance equal to extra per-step std ``step_std`` on ``steps`` uniform steps.

    Args:
        step_std: ε >= 0, the extra standard deviation of every step's sampling noise.
        steps: T > 0, steps of the uniform grid (each of length 1 / T).
    Returns:
        ε² T.
    """
    if step_std < 0:
        raise ValueError(f"explore step std must be >= 0, got {step_std}")
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    return step_std * step_std * steps


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
