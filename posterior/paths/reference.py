"""Reference (noising) processes: the backward kernels p_B of the target path measure, and the
base kernel and start distribution of the sampler that goes with each.

Time runs from t = 0 (start of a sampling trajectory) to t = 1 (the samples). Every reference
has Gaussian backward kernels

    p_B(x_k | x_{k+1}) = N(x_k; scale_k * x_{k+1}, var_k I),

and gives the sampler a base forward kernel with the same noise structure,

    p_F(x_{k+1} | x_k) = N(x_{k+1}; m_k * x_k + c_k * u(x_k, t_k), sigma2 * c_k I),

so that the untrained (zero-drift) policy is the reference process itself.

- :class:`BrownianBridge`: Brownian motion with rate sigma2 pinned at x_0 = 0 (m = 1,
  c = dt); the last backward step to x_0 = 0 is deterministic (log-probability 0).
- :class:`VPNoising`: variance-preserving Ornstein-Uhlenbeck noising with stationary law
  N(0, sigma2 I) and a linear rate beta(s) on the noising time s = 1 - t; x_0 ~ N(0, sigma2 I).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LOG_2PI = math.log(2.0 * math.pi)


def _log_normal_isotropic(diff: Tensor, var: Tensor) -> Tensor:
    """log N(diff; 0, var I) summed over the last axis; var broadcasts to diff.shape[:-1]."""
    d = diff.shape[-1]
    return -0.5 * (diff * diff).sum(-1) / var - 0.5 * d * (LOG_2PI + torch.log(var))


class GaussianReference(nn.Module):
    """Common machinery of references with Gaussian backward kernels.

    Subclasses define :meth:`backward_coefficients`, :meth:`forward_kernel`, and whether the start
    is pinned at 0 (``pinned_start``) or drawn from N(0, sigma2 I).

    Args:
        sigma2: variance scale of the process (per unit time for Brownian motion, stationary
            variance for VP noising); the sampler's base variance.
    """

    pinned_start: bool = True

    def __init__(self, sigma2: float) -> None:
        super().__init__()
        if not sigma2 > 0:
            raise ValueError(f"sigma2 must be positive, got {sigma2}")
        self.sigma2 = float(sigma2)

    # -- per-grid coefficients (computed once per batch) ---------------------------------
    def backward_coefficients(self, times: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """scale (N,), var (N,) of every backward step (var[0] = 0 when the start is pinned)."""
        raise NotImplementedError

    def forward_kernel(self, times: Tensor) -> tuple[Tensor | None, Tensor]:  # pragma: no cover
        """m (N,) or None for m = 1, and c (N,): the sampler's base kernel coefficients."""
        raise NotImplementedError

    # -- start distribution ---------------------------------------------------------------
    def initial_state(self, batch_size: int, dim: int, like: Tensor,
                      generator: torch.Generator | None = None) -> Tensor:
        """(B, d) start states: zeros when pinned (no randomness used), else N(0, sigma2 I)."""
        if self.pinned_start:
            return like.new_zeros(batch_size, dim)
        noise = torch.randn((batch_size, dim), generator=generator, device=like.device, dtype=like.dtype)
        return noise * math.sqrt(self.sigma2)

    def initial_log_prob(self, x0: Tensor) -> Tensor | None:
        """(B,) log-density of the start states, or None when pinned (a point mass)."""
        if self.pinned_start:
            return None
        return _log_normal_isotropic(x0, x0.new_tensor(self.sigma2))

    # -- backward kernels -----------------------------------------------------------------
    def log_prob_steps(self, states: Tensor, times: Tensor) -> Tensor:
        """Per-step backward log-densities log p_B(x_k | x_{k+1}).

        Args:
            states: (N + 1, B, d) time-major trajectory.
            times: (N + 1,) grid.
        Returns:
            (N, B); with a pinned start, entry 0 is 0 (the deterministic step to the origin).
        """
        scale, var = self.backward_coefficients(times)
        first = 1 if self.pinned_start else 0
        scale_, var_ = scale[first:, None, None], var[first:, None]
        return self._with_pinned_row(_log_normal_isotropic(states[first:-1] - scale_ * states[first + 1:], var_))

    def _with_pinned_row(self, inner: Tensor) -> Tensor:
        """Prepend the zero row of the deterministic step to x_0 = 0 when the start is pinned."""
        if not self.pinned_start:
            return inner
        return torch.cat([inner.new_zeros(1, inner.shape[1]), inner], dim=0)

    def _backward_step(self, x: Tensor, k: int, times: Tensor, scale: Tensor, var: Tensor, noise: Tensor) -> Tensor:
        """One draw x_k ~ p_B(. | x_{k+1} = x) given standard normal ``noise``."""
        return torch.addcmul(scale[k] * x, noise, var[k].sqrt().expand_as(x))

    def sample_backward(self, x1: Tensor, times: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw trajectories backward from terminal states.

        Args:
            x1: (B, d) terminal states.
            times: (N + 1,) grid.
        Returns:
            states: (N + 1, B, d) time-major, states[-1] = x1 (states[0] = 0 when pinned).
        """
        scale, var = self.backward_coefficients(times)
        n = times.numel() - 1
        noise = torch.randn((n,) + tuple(x1.shape), generator=generator, device=x1.device, dtype=x1.dtype)
        states = x1.new_empty((n + 1,) + tuple(x1.shape))
        states[n] = x1
        x = x1
        last = 1 if self.pinned_start else 0
        for k in range(n - 1, last - 1, -1):
            x = self._backward_step(x, k, times, scale, var, noise[k])
            states[k] = x
        if self.pinned_start:
            states[0] = 0.0
        return states

    def log_marginal(self, x: Tensor, t: Tensor) -> Tensor:  # pragma: no cover
        """log-density of the reference marginal at time t. x: (..., d) -> (...)."""
        raise NotImplementedError


class BrownianBridge(GaussianReference):
    """Brownian reference with rate ``sigma2`` (variance per unit time), pinned at x_0 = 0.

    Forward: X_t ~ N(0, sigma2 t). Backward given X_1 (the bridge):
    p_B(x_k | x_{k+1}) = N(x_k; x_{k+1} t_k / t_{k+1}, sigma2 dt_k t_k / t_{k+1}).
    """

    pinned_start = True

    def backward_coefficients(self, times: Tensor) -> tuple[Tensor, Tensor]:
        dt = times[1:] - times[:-1]
        scale = times[:-1] / times[1:]
        return scale, self.sigma2 * dt * scale

    def forward_kernel(self, times: Tensor) -> tuple[Tensor | None, Tensor]:
        return None, times[1:] - times[:-1]

    def log_marginal(self, x: Tensor, t: Tensor) -> Tensor:
        """log N(x; 0, sigma2 t). x: (..., d); t broadcastable to x.shape[:-1], positive."""
        return _log_normal_isotropic(x, self.sigma2 * t)


class VPNoising(GaussianReference):
    """Variance-preserving (Ornstein-Uhlenbeck) noising with stationary law N(0, sigma2 I).

    On the noising time s = 1 - t: dX = -beta(s)/2 X ds + sqrt(sigma2 beta(s)) dW with
    beta(s) = beta_min + (beta_max - beta_min) s. Over a step the exact transition is

        p_B(x_k | x_{k+1}) = N(a_k x_{k+1}, sigma2 (1 - a_k^2)),  a_k = exp(-1/2 int beta ds),

    and, the OU process being reversible, the sampler's base kernel N(a_k x_k, sigma2 (1 - a_k^2))
    started from N(0, sigma2 I) is exactly the reference path measure (m = a, c = 1 - a^2).

    Args:
        sigma2: stationary variance.
        beta_min, beta_max: the linear noise rate at s = 0 (data) and s = 1 (start).
    """

    pinned_start = False

    def __init__(self, sigma2: float, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        super().__init__(sigma2)
        if not 0 < beta_min <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def integrated_rate(self, s: Tensor) -> Tensor:
        """int_0^s beta(u) du."""
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s * s

    def _alphas(self, times: Tensor) -> Tensor:
        s = 1.0 - times
        return torch.exp(-0.5 * (self.integrated_rate(s[:-1]) - self.integrated_rate(s[1:])))

    def backward_coefficients(self, times: Tensor) -> tuple[Tensor, Tensor]:
        a = self._alphas(times)
        return a, self.sigma2 * (1.0 - a * a)

    def forward_kernel(self, times: Tensor) -> tuple[Tensor | None, Tensor]:
        a = self._alphas(times)
        return a, 1.0 - a * a

    def log_marginal(self, x: Tensor, t: Tensor) -> Tensor:
        """The reference is stationary: log N(x; 0, sigma2 I) at every t."""
        return _log_normal_isotropic(x, x.new_tensor(self.sigma2) + 0 * t)
