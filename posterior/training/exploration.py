"""Exploration schedules: extra sampling variance that decays linearly to zero.

Two conventions name the same thing. Ours is continuous-time: ``explore`` is extra variance per
unit time, so a step of length dt gets ``explore * dt`` on top of the policy's ``sigma2 * dt``.
The public code of Sendera et al. (2024) names a per-step standard deviation ε on a uniform
T-step grid: every step gets extra variance ε², i.e. ``explore = ε² T`` (4.0 for ε = 0.2 and
T = 100), and its schedule reaches zero after 5000 iterations whatever the training budget.

The two conventions also differ in what decays linearly. Ours decays the extra *variance*
linearly; the public code decays the extra *standard deviation* ε·(1 − i/5000) linearly, so its
variance falls as (1 − i/5000)²: half of ours at mid-horizon, and on average over the horizon a
third of the initial variance instead of a half. ``LinearDecay(..., linear_in="std")`` is that
schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

#: iterations over which the public code's exploration decays to zero
PUBLIC_CODE_EXPLORE_HORIZON = 5000

#: what decays linearly: the extra variance (ours) or the extra standard deviation (public code)
EXPLORE_DECAYS: tuple[str, ...] = ("variance", "std")


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
    """Extra variance per unit time ``initial * u`` or ``initial * u**2``, ``u = max(0, 1 - iteration / horizon)``.

    Args:
        initial: extra variance at iteration 0 (>= 0); 0 disables exploration.
        horizon: iterations until it reaches 0 (> 0).
        linear_in: "variance" (``initial * u``) or "std" (the standard deviation ``sqrt(initial) * u``
            decays linearly, so the variance is ``initial * u**2``: the public code's schedule).
    """

    initial: float
    horizon: int
    linear_in: str = "variance"

    def __post_init__(self) -> None:
        if self.initial < 0:
            raise ValueError(f"explore must be >= 0, got {self.initial}")
        if self.horizon <= 0:
            raise ValueError(f"exploration horizon must be positive, got {self.horizon}")
        if self.linear_in not in EXPLORE_DECAYS:
            raise ValueError(f"explore decay must be one of {EXPLORE_DECAYS}, got {self.linear_in!r}")

    def __call__(self, iteration: int) -> float:
        remaining = max(0.0, 1.0 - iteration / self.horizon)
        return self.initial * (remaining if self.linear_in == "variance" else remaining * remaining)
