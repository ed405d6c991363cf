"""Gaussian mixtures with everything analytic: density, exact samples, the exact denoiser of
their noised marginals (a diffusion prior that needs no training), and the exact posterior
under a linear-Gaussian observation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class GaussianMixture:
    """sum_k w_k N(mu_k, Sigma_k) in R^d.

    Attributes:
        weights: (K,) summing to 1; means: (K, d); covariances: (K, d, d).
    """

    weights: Tensor
    means: Tensor
    covariances: Tensor

    def __post_init__(self) -> None:
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.covariances.shape != (k, d, d):
            raise ValueError(f"need weights (K,), means (K, d), covariances (K, d, d); got "
                             f"{tuple(self.weights.shape)}, {tuple(self.means.shape)}, {tuple(self.covariances.shape)}")
        if abs(float(self.weights.sum()) - 1) > 1e-5 or bool((self.weights < 0).any()):
            raise ValueError("weights must be non-negative and sum to 1")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _components(self, scale: float = 1.0, extra_var: float = 0.0) -> torch.distributions.MultivariateNormal:
        eye = torch.eye(self.dim, dtype=self.means.dtype, device=self.means.device)
        return torch.distributions.MultivariateNormal(scale * self.means,
                                                      scale * scale * self.covariances + extra_var * eye)

    def log_prob(self, x: Tensor, scale: float = 1.0, extra_var: float = 0.0) -> Tensor:
        """(B,) log-density of the mixture of N(scale mu_k, scale^2 Sigma_k + extra_var I) at x (B, d)."""
        comp = self._components(scale, extra_var).log_prob(x[:, None, :])  # (B, K)
        return torch.logsumexp(comp + self.weights.log(), dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, d) exact samples."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covariances)[idx]
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype, device=self.means.device)
        return self.means[idx] + (chol @ eps[..., None])[..., 0]

    def component_of(self, x: Tensor) -> Tensor:
        """(B,) index of the most responsible component for each point."""
        comp = self._components().log_prob(x[:, None, :]) + self.weights.log()
        return comp.argmax(-1)

    def posterior(self, operator: Tensor, y: Tensor, noise_var: float) -> "GaussianMixture":
        """The exact posterior given y = A x + N(0, noise_var I), A = ``operator`` (m, d), y (m,)."""
        a = operator.to(self.means)
        prec_prior = torch.linalg.inv(self.covariances)
        prec = prec_prior + (a.T @ a / noise_var)[None]
        cov = torch.linalg.inv(prec)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        rhs = (prec_prior @ self.means[..., None])[..., 0] + (a.T @ y.to(self.means)) / noise_var
        means = (cov @ rhs[..., None])[..., 0]
        eye = torch.eye(a.shape[0], dtype=self.means.dtype, device=self.means.device)
        evidence = torch.distributions.MultivariateNormal(self.means @ a.T, a @ self.covariances @ a.T + noise_var * eye)
        log_w = self.weights.log() + evidence.log_prob(y.to(self.means))
        return GaussianMixture(torch.softmax(log_w, 0), means, cov)


class MixtureDenoiser(nn.Module):
    """The exact epsilon-prediction of a mixture's noised marginals under a DDPM schedule.

    x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps has density sum_k w_k N(sqrt(a_t) mu_k,
    a_t Sigma_k + (1 - a_t) I), and the optimal epsilon-prediction is -sqrt(1 - a_t) grad log p_t.
    Called as ``denoiser(x, t)`` with x (B, d) and integer timesteps t (B,), like a UNet.
    """

    def __init__(self, mixture: GaussianMixture, alphas_cumprod: Tensor) -> None:
        super().__init__()
        self.mixture = mixture
        self.register_buffer("alphas_cumprod", alphas_cumprod.double().clone())

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        a = self.alphas_cumprod[t.long()].to(x.dtype)[:, None]  # (B, 1)
        mix = self.mixture
        means = mix.means.to(x.dtype)
        cov = mix.covariances.to(x.dtype)
        eye = torch.eye(mix.dim, dtype=x.dtype, device=x.device)
        # per-sample covariances C_k(t) = a Sigma_k + (1 - a) I: (B, K, d, d)
        c = a[:, :, None, None] * cov[None] + (1 - a)[:, :, None, None] * eye
        diff = x[:, None, :] - a.sqrt()[:, :, None] * means[None]  # (B, K, d)
        sol = torch.linalg.solve(c, diff[..., None])[..., 0]  # C^{-1} (x - m)
        log_det = torch.linalg.slogdet(c)[1]
        logits = mix.weights.to(x.dtype).log() - 0.5 * (diff * sol).sum(-1) - 0.5 * log_det
        resp = torch.softmax(logits, dim=-1)  # (B, K)
        score = -(resp[..., None] * sol).sum(1)
        return -(1 - a).sqrt() * score


def ring_mixture(components: int = 8, radius: float = 1.0, std: float = 0.1, dtype: torch.dtype = torch.float64,
                 weights: Tensor | None = None) -> GaussianMixture:
    """Equal-variance components on a circle (2-D)."""
    angles = torch.arange(components, dtype=dtype) * (2 * math.pi / components)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=-1)
    covs = (std ** 2) * torch.eye(2, dtype=dtype).expand(components, 2, 2).clone()
    w = torch.full((components,), 1.0 / components, dtype=dtype) if weights is None else weights.to(dtype)
    return GaussianMixture(w / w.sum(), means, covs)
