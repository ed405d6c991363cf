"""Start where the user's amortized model already is: a Gaussian proposal q(z | y) = N(mean(y), std(y)²).

The sampler runs in the proposal's whitened coordinates u = (z - mean(y)) / std(y). The target there is

    log R_y(u) = log p(z(u)) + log r(f(z(u)), y) + Σ log std(y)        (the Jacobian of z(u)),

and the reference is the variance-preserving (OU) noising with stationary law N(0, I). With the drift
network's output layer at zero (the sampler's initialization), the sampler is that reference, whose
terminal law is N(0, I) in u: the untrained sampler *is* the proposal, its log Ẑ is the proposal's ELBO
and its log Ẑ_RW the proposal's importance-weighted bound (IWAE), and training learns the correction.
Scores (the Langevin parametrization) are std(y) times the score in z, by the chain rule.

A proposal is a callable y (B, *cond_shape) -> (mean (B, d), log_std (B, d)) (an ``nn.Module``, e.g. a
VAE's encoder: :meth:`posterior.priors.MLPVAE.proposal`), or a :class:`FixedGaussian` for a target
without conditions. It is evaluated without gradients: it is the user's model, never trained here.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from posterior.core.checks import check_shape

Proposal = Callable[[Tensor | None], tuple[Tensor, Tensor]]


class FixedGaussian(nn.Module):
    """The same Gaussian N(mean, diag(exp(log_std))²) for every condition (or for a target without one).

    Args:
        mean: (d,) the proposal's mean.
        log_std: (d,) or a scalar, the log of its standard deviations.
    """

    def __init__(self, mean: Tensor, log_std: Tensor | float = 0.0) -> None:
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32)
        if mean.ndim != 1 or not bool(torch.isfinite(mean).all()):
            raise ValueError(f"mean must be a finite vector (d,), got shape {tuple(mean.shape)}")
        log_std = torch.as_tensor(log_std, dtype=torch.float32).expand_as(mean).clone()
        if not bool(torch.isfinite(log_std).all()):
            raise ValueError("log_std must be finite")
        self.register_buffer("mean", mean)
        self.register_buffer("log_std", log_std)

    def forward(self, y: Tensor | None, count: int = 1) -> tuple[Tensor, Tensor]:
        rows = count if y is None else y.shape[0]
        return self.mean.expand(rows, -1), self.log_std.expand(rows, -1)


class WhitenedTarget:
    """A target over z seen in the proposal's whitened coordinates u = (z - mean(y)) / std(y).

    Args:
        target: ``dim`` and ``log_reward(z[, y]) -> (B,)`` (e.g. a
            :class:`posterior.targets.LatentPosteriorReward`, or a Boltzmann target).
        proposal: y -> (mean, log_std), each (B, dim).
    """

    def __init__(self, target: Any, proposal: Proposal) -> None:
        if not callable(proposal):
            raise TypeError(f"proposal must be a callable y -> (mean, log_std), got {type(proposal).__name__}")
        self.target, self.proposal = target, proposal
        self.dim = int(target.dim)
        # the last conditions seen (held, so that their memory is not reused), their version, rows -> moments
        self._cache: tuple[Tensor | None, int, int, tuple[Tensor, Tensor]] | None = None

    def moments(self, y: Tensor | None, rows: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std), each (rows, dim), of the proposal at the conditions y (validated, no gradient)."""
        cache = self._cache
        if cache is not None and cache[0] is y and cache[1] == (0 if y is None else y._version) and cache[2] == rows:
            mean, std = cache[3]
        else:
            with torch.no_grad():
                out = self.proposal(y) if y is not None else _unconditional(self.proposal, rows)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError("proposal(y) must return a tuple (mean, log_std), each of shape (B, dim)")
            mean, log_std = out
            check_shape(mean, (rows, self.dim), "proposal mean")
            check_shape(log_std, (rows, self.dim), "proposal log_std")
            if not bool(torch.isfinite(mean).all()) or not bool(torch.isfinite(log_std).all()):
                bad = "mean" if not bool(torch.isfinite(mean).all()) else "log_std"
                raise ValueError(f"proposal returned a non-finite {bad} (NaN or inf): its scale must be positive "
                                 "and finite for every condition")
            std = log_std.exp()
            mean, std = mean.detach(), std.detach()
            self._cache = (y, 0 if y is None else y._version, rows, (mean, std))
        return mean.to(like), std.to(like)

    def to_z(self, u: Tensor, y: Tensor | None = None) -> Tensor:
        """z = mean(y) + std(y) * u, for u (B, dim)."""
        mean, std = self.moments(y, u.shape[0], u)
        return mean + std * u

    def log_reward(self, u: Tensor, y: Tensor | None = None) -> Tensor:
        """(B,) log R_y(u) = log R(z(u), y) + Σ log std(y)."""
        mean, std = self.moments(y, u.shape[0], u)
        z = mean + std * u
        value = self.target.log_reward(z) if y is None else self.target.log_reward(z, y)
        return value + std.log().sum(-1)

    def grad_log_reward(self, u: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, dim) std(y) * ∇_z log R(z(u), y); zero where the density is zero."""
        with torch.enable_grad():
            ug = u.detach().requires_grad_(True)
            value = self.log_reward(ug, y)
            finite = torch.where(torch.isfinite(value), value, torch.zeros_like(value))
            (grad,) = torch.autograd.grad(finite.sum(), ug)
        return grad.detach()


def _unconditional(proposal: Proposal, rows: int) -> tuple[Tensor, Tensor]:
    if isinstance(proposal, FixedGaussian):
        return proposal(None, rows)
    mean, log_std = proposal(None)
    return mean.expand(rows, -1), log_std.expand(rows, -1)
