"""A learned backward (noising) process: the reference's Gaussian kernels with a learned mean
shift and variance correction, trained jointly with the sampler through log Q.

    p_B(x_k | x_{k+1}) = N(x_k; scale_k x_{k+1} + (var_k / sigma2) * delta(x_{k+1}, t_{k+1}),
                           var_k * exp(range * tanh(rho(x_{k+1}, t_{k+1})))),

with (delta, rho) from a PIS-architecture network whose last layer is zero-initialized, so training
starts from the fixed reference. A pinned start keeps its deterministic last step to x_0 = 0. Any
normalized p_B gives a valid path measure (Q integrates to Z), so log Z bounds stay valid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from posterior.samplers.networks import PISPolicy
from posterior.paths.reference import LOG_2PI, GaussianReference


class LearnedBackward(GaussianReference):
    """Learned corrections on top of a fixed reference.

    Args:
        base: the fixed reference (its coefficients, start distribution and marginals).
        dim: event size d.
        hidden: network width.
        log_var_range: the variance correction lies in [exp(-range), exp(range)].
    """

    def __init__(self, base: GaussianReference, dim: int, *, hidden: int = 64, log_var_range: float = 1.0) -> None:
        super().__init__(base.sigma2)
        self.base = base
        self.pinned_start = base.pinned_start
        self.dim = int(dim)
        self.net = PISPolicy(dim, hidden=hidden, learn_variance=True)
        self.log_var_range = float(log_var_range)

    def backward_coefficients(self, times: Tensor) -> tuple[Tensor, Tensor]:
        return self.base.backward_coefficients(times)

    def forward_kernel(self, times: Tensor) -> tuple[Tensor | None, Tensor]:
        return self.base.forward_kernel(times)

    def log_marginal(self, x: Tensor, t: Tensor) -> Tensor:
        return self.base.log_marginal(x, t)

    def _kernels(self, later: Tensor, later_times: Tensor, scale: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (M, B, d) and log-variance (M, B, d) of x_k given x_{k+1} = later (M, B, d)."""
        out = self.net.batched(later, self.net.time_features(later_times))
        d = self.dim
        ratio = (var / self.sigma2)[:, None, None]
        mean = scale[:, None, None] * later + ratio * out[..., :d]
        log_var = var.clamp_min(torch.finfo(var.dtype).tiny).log()[:, None, None] \
            + self.log_var_range * torch.tanh(out[..., d:])
        return mean, log_var

    def log_prob_steps(self, states: Tensor, times: Tensor) -> Tensor:
        """(N, B) learned backward log-densities; entry 0 is 0 with a pinned start."""
        scale, var = self.backward_coefficients(times)
        first = 1 if self.pinned_start else 0
        mean, log_var = self._kernels(states[first + 1:], times[first + 1:], scale[first:], var[first:])
        diff = states[first:-1] - mean
        return self._with_pinned_row(-0.5 * (diff * diff * torch.exp(-log_var) + log_var + LOG_2PI).sum(-1))

    def _backward_step(self, x: Tensor, k: int, times: Tensor, scale: Tensor, var: Tensor, noise: Tensor) -> Tensor:
        """One draw from the learned kernel (the shared backward loop is the base class's)."""
        mean, log_var = self._kernels(x[None], times[k + 1:k + 2], scale[k:k + 1], var[k:k + 1])
        return mean[0] + torch.exp(0.5 * log_var[0]) * noise
