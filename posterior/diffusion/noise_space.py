"""Noise-space ("outsourced") posteriors: for a deterministic generator x = f(z), z ~ N(0, I),
the posterior over x is the pushforward of the noise-space target

    p(z | y) ∝ N(z; 0, I) * r(f(z), y)^beta,

which any sampler of this library can learn (a VAE decoder, a GAN-like generator, or a diffusion
prior through its deterministic DDIM solve)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from posterior.core.checks import check_no_nan, check_shape


class NoiseSpaceTarget:
    """Unnormalized log-density over z (B, d) = log N(z; 0, I) + beta * log r(f(z)).

    Args:
        generator: z (B, d) -> x (B, *event_shape), differentiable for the gradient.
        log_likelihood: x -> (B,) log r(x) (-inf allowed, NaN raises).
        dim: d, the noise dimension (flattened).
        beta: exponent of the likelihood.
        noise_shape: shape of one z as the generator expects it (default (d,)).
    """

    def __init__(self, generator: Callable[[Tensor], Tensor], log_likelihood: Callable[[Tensor], Tensor], dim: int, *,
                 beta: float = 1.0, noise_shape: tuple[int, ...] | None = None) -> None:
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.generator, self.log_likelihood, self.dim, self.beta = generator, log_likelihood, int(dim), float(beta)
        self.noise_shape = tuple(noise_shape) if noise_shape is not None else (self.dim,)
        if math.prod(self.noise_shape) != self.dim:
            raise ValueError(f"noise_shape {self.noise_shape} does not have {self.dim} entries")

    def decode(self, z: Tensor) -> Tensor:
        """x = f(z) for z (B, d)."""
        return self.generator(z.reshape((z.shape[0],) + self.noise_shape))

    def log_reward(self, z: Tensor) -> Tensor:
        check_shape(z, (None, self.dim), "z")
        log_r = self.log_likelihood(self.decode(z))
        check_shape(log_r, (z.shape[0],), "log_likelihood(f(z))")
        check_no_nan(log_r, "log_likelihood")
        return -0.5 * (z * z).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi) + self.beta * log_r

    def grad_log_reward(self, z: Tensor) -> Tensor:
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            value = self.log_reward(zg)
            (grad,) = torch.autograd.grad(value.sum(), zg)
        return torch.where(torch.isfinite(value)[:, None], grad, torch.zeros_like(grad))
