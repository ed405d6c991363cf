"""Time grids 0 = t_0 < t_1 < ... < t_N = 1 on which trajectories are discretized."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def uniform_grid(steps: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform grid with ``steps`` intervals.

    Returns:
        times: (steps + 1,) increasing, times[0] = 0, times[-1] = 1.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return torch.linspace(0.0, 1.0, steps + 1, device=device, dtype=dtype)


def power_grid(steps: int, power: float = 1.0, *, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """Grid t_k = 1 - (1 - k / steps) ** power with ``steps`` intervals.

    ``power`` 1 is the uniform grid; ``power`` > 1 shortens the steps toward t = 1, where a sampler's
    drift changes fastest (the last interval is steps ** -power long, the first about power / steps);
    0 < ``power`` < 1 shortens them toward t = 0.

    Returns:
        times: (steps + 1,) increasing, times[0] = 0, times[-1] = 1 exactly.
    """
    if not (isinstance(power, (int, float)) and math.isfinite(power) and power > 0):
        raise ValueError(f"power must be a finite number > 0, got {power!r}")
    if power == 1:
        return uniform_grid(steps, device=device, dtype=dtype)
    times = 1.0 - (1.0 - uniform_grid(steps, dtype=torch.float64)) ** power  # uniform_grid validates steps
    times[0], times[-1] = 0.0, 1.0
    return times.to(device=device, dtype=dtype)


def random_grid(steps: int, *, low: float = 1.0, high: float = 10.0,
                generator: torch.Generator | None = None,
                device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Random coarse grid: ``steps`` increments drawn from U[low, high], normalized to sum to 1.

    Returns:
        times: (steps + 1,) increasing, times[0] = 0, times[-1] = 1 exactly.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not 0.0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
    draw_device = generator.device if generator is not None else "cpu"
    increments = torch.rand(steps, generator=generator, dtype=torch.float64, device=draw_device)
    increments = low + (high - low) * increments
    times = torch.cat([increments.new_zeros(1), increments.cumsum(0) / increments.sum()])
    times[-1] = 1.0
    return times.to(device=device, dtype=dtype)


def check_grid(times: Tensor) -> None:
    """Raise ValueError unless ``times`` is a strictly increasing (N+1,) grid from 0 to 1."""
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"times must have shape (N + 1,) with N >= 1, got {tuple(times.shape)}")
    if not bool((times[1:] > times[:-1]).all()):
        raise ValueError("times must be strictly increasing")
    if abs(float(times[0])) > 1e-6 or abs(float(times[-1]) - 1.0) > 1e-6:
        raise ValueError(f"times must start at 0 and end at 1, got {float(times[0])}..{float(times[-1])}")
