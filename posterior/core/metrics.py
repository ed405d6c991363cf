"""Estimators of log Z and sample quality from per-trajectory log-weights.

Every estimator takes log-weights log w = log Q(tau) - log p_F(tau) of K trajectories
that share one condition: estimates are per condition, never pooled across conditions.
A log-weight of -inf (trajectory ending where the target density is zero) is legal.
Weights are shifted by their maximum and summed in float64, so a large offset of the target (1e8 in float32)
does not change an estimate; the results are returned in the input's dtype. Degenerate cases say so: the
ESS and the standard error are NaN with one sample (K = 1) or when every weight is zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from posterior.core.optional import require


def _check_log_weights(log_w: Tensor) -> Tensor:
    if log_w.ndim < 1 or log_w.shape[-1] < 1:
        raise ValueError(f"log_w must have shape (..., K) with K >= 1, got {tuple(log_w.shape)}")
    if bool(torch.isnan(log_w).any()):
        raise ValueError("log_w contains NaN")
    return log_w


def log_z_elbo(log_w: Tensor) -> Tensor:
    """ELBO estimate mean_k log w_k (a lower bound on log Z in expectation). (..., K) -> (...)."""
    return _check_log_weights(log_w).mean(-1)


def log_z_importance(log_w: Tensor) -> Tensor:
    """Importance-weighted estimate log (1/K) sum_k w_k (biased low, consistent). (..., K) -> (...)."""
    log_w = _check_log_weights(log_w)
    return (torch.logsumexp(log_w.double(), -1) - math.log(log_w.shape[-1])).to(log_w.dtype)


def _log_inverse_ess(log_w: Tensor) -> Tensor:
    """log(1 / ESS) = log(K sum w^2 / (sum w)^2) >= 0 of checked log-weights, in float64 after shifting by the
    maximum (exactly invariant to an offset); NaN where K = 1 or every weight is zero. (..., K) -> (...)."""
    w = log_w.double()
    top = w.max(-1, keepdim=True).values
    shifted = torch.where(torch.isfinite(top), w - top, w)
    value = math.log(w.shape[-1]) + torch.logsumexp(2 * shifted, -1) - 2 * torch.logsumexp(shifted, -1)
    degenerate = ~torch.isfinite(top[..., 0]) if w.shape[-1] > 1 else torch.ones_like(value, dtype=torch.bool)
    return torch.where(degenerate, torch.full_like(value, math.nan), value.clamp_min(0.0))


def effective_sample_size(log_w: Tensor) -> Tensor:
    """Normalized ESS (sum w)^2 / (K sum w^2) in [1/K, 1]; NaN where K = 1 or every weight is zero.
    (..., K) -> (...)."""
    log_w = _check_log_weights(log_w)
    return torch.exp(-_log_inverse_ess(log_w)).to(log_w.dtype)


def log_z_importance_stderr(log_w: Tensor) -> Tensor:
    """Delta-method standard error of :func:`log_z_importance`: sqrt((1 / ESS - 1) / K).

    With normalized weights, Var(log mean w) ~ Var(w) / (K E[w]^2), and K sum w^2 / (sum w)^2 - 1
    estimates Var(w) / E[w]^2. It is itself estimated from the same weights, so it understates the
    error when the heavy weights that matter have not been drawn. (..., K) -> (...); NaN where K = 1 (no
    spread to measure) or every weight is zero (no estimate at all).
    """
    log_w = _check_log_weights(log_w)
    return torch.sqrt(torch.expm1(_log_inverse_ess(log_w)) / log_w.shape[-1]).to(log_w.dtype)


def eubo(log_w_exact: Tensor) -> Tensor:
    """EUBO mean_k log w_k over trajectories whose terminal states are exact target samples
    (drawn backward from them): an upper bound on log Z in expectation. (..., K) -> (...)."""
    return _check_log_weights(log_w_exact).mean(-1)


def wasserstein2(samples: Tensor, reference: Tensor) -> float:
    """Exact 2-Wasserstein distance between two empirical measures with uniform weights.

    Args:
        samples: (K, d); reference: (M, d).
    Returns:
        W2 = sqrt(min_pi sum pi_ij |x_i - y_j|^2), solved exactly with POT's network simplex.
    """
    if samples.ndim != 2 or reference.ndim != 2 or samples.shape[1] != reference.shape[1]:
        raise ValueError(f"samples and reference must be (K, d) and (M, d), got "
                         f"{tuple(samples.shape)} and {tuple(reference.shape)}")
    x = samples.detach().double().cpu().numpy()
    y = reference.detach().double().cpu().numpy()
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("wasserstein2 needs finite samples")
    ot = require("ot", "eval", "posterior.core.metrics.wasserstein2")

    cost = ot.dist(x, y, metric="sqeuclidean")
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    return float(math.sqrt(max(ot.emd2(a, b, cost, numItermax=10_000_000), 0.0)))
