"""Reference (noising) processes: the fixed backward kernels p_B of the target path measure.

The sampler starts every trajectory at x_0 = 0. The reference forward process is
Brownian motion with rate sigma2, dX = sqrt(sigma2) dW, so X_t ~ N(0, sigma2 * t).
Its time reversal given X_1 is the Brownian bridge pinned at 0:

    p_B(x_k | x_{k+1}) = N(x_k; x_{k+1} * t_k / t_{k+1}, sigma2 * dt_k * t_k / t_{k+1}),

and the last backward step to x_0 = 0 is deterministic (log-probability 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


class BrownianBridge:
    """Brownian reference with rate ``sigma2`` (variance per unit time), pinned at x_0 = 0."""

    def __init__(self, sigma2: float) -> None:
        if not sigma2 > 0:
            raise ValueError(f"sigma2 must be positive, got {sigma2}")
        self.sigma2 = float(sigma2)

    def backward_coefficients(self, times: Tensor) -> tuple[Tensor, Tensor]:
        """Mean scale and variance of every backward step, computed once per grid.

        Args:
            times: (N + 1,) grid.
        Returns:
            scale: (N,) with mean of x_k given x_{k+1} = scale[k] * x_{k+1}.
            var: (N,) variance of x_k given x_{k+1}; var[0] = 0 (deterministic step to x_0).
        """
        dt = times[1:] - times[:-1]
        scale = times[:-1] / times[1:]
        return scale, self.sigma2 * dt * scale

    def log_prob_steps(self, states: Tensor, times: Tensor) -> Tensor:
        """Per-step backward log-densities log p_B(x_k | x_{k+1}).

        Args:
            states: (N + 1, B, d) time-major trajectory, states[0] = 0.
            times: (N + 1,) grid.
        Returns:
            (N, B); entry 0 is 0 (the deterministic step to the origin).
        """
        scale, var = self.backward_coefficients(times)
        scale, var = scale[1:, None, None], var[1:, None, None]
        diff = states[1:-1] - scale * states[2:]
        d = states.shape[-1]
        inner = -0.5 * ((diff * diff) / var).sum(-1) - 0.5 * d * (LOG_2PI + var.squeeze(-1).log())
        return torch.cat([inner.new_zeros(1, inner.shape[1]), inner], dim=0)

    def sample_backward(self, x1: Tensor, times: Tensor,
                        generator: torch.Generator | None = None) -> Tensor:
        """Draw trajectories backward from terminal states with the bridge kernels.

        Args:
            x1: (B, d) terminal states.
            times: (N + 1,) grid.
        Returns:
            states: (N + 1, B, d) time-major, states[-1] = x1, states[0] = 0.
        """
        scale, var = self.backward_coefficients(times)
        std = var.sqrt()
        n = times.numel() - 1
        noise = torch.randn((n,) + tuple(x1.shape), generator=generator,
                            device=x1.device, dtype=x1.dtype)
        states = x1.new_empty((n + 1,) + tuple(x1.shape))
        states[n] = x1
        x = x1
        for k in range(n - 1, 0, -1):
            x = torch.addcmul(scale[k] * x, noise[k], std[k].expand_as(x))
            states[k] = x
        states[0] = 0.0
        return states

    def log_marginal(self, x: Tensor, t: Tensor) -> Tensor:
        """log N(x; 0, sigma2 * t) of the reference marginal.

        Args:
            x: (..., d); t: broadcastable to x.shape[:-1], positive.
        Returns:
            (...,)
        """
        var = self.sigma2 * t
        d = x.shape[-1]
        return -0.5 * (x * x).sum(-1) / var - 0.5 * d * (LOG_2PI + torch.log(var))
