"""Closed-form facts for Gaussian targets under the Brownian reference started at 0."""

from __future__ import annotations

import math

import torch


def optimal_drift(x: torch.Tensor, t: float, mean: torch.Tensor, var: torch.Tensor, sigma2: float) -> torch.Tensor:
    """Drift of the optimal (Föllmer) sampler for target N(mean, diag(var)) and reference rate sigma2.

    u*(x, t) = sigma2 * grad log h(x, t), h(x, t) = E_ref[R(X_1) / N(X_1; 0, sigma2) | X_t = x],
    which for a Gaussian R is (b - a x) * sigma2 / (1 + a sigma2 (1 - t)), a = 1/var - 1/sigma2, b = mean/var.
    """
    a = 1.0 / var - 1.0 / sigma2
    b = mean / var
    return sigma2 * (b - a * x) / (1.0 + a * sigma2 * (1.0 - t))


def kl_gaussians(m0, v0, m1, v1) -> float:
    """KL(N(m0, diag v0) || N(m1, diag v1))."""
    return float(0.5 * (torch.log(v1 / v0) + (v0 + (m0 - m1) ** 2) / v1 - 1.0).sum())


def log_normal(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).sum(-1)
