"""Per-image estimates of log p(y) from a VAE's own encoder (amortized baselines).

With q(z | y) = N(mu(y), exp(logvar(y))) from the encoder, the prior N(0, I) and
the likelihood r (e.g. the clamped Bernoulli of the MNIST task),

    ELBO(y)   = E_q [log N(z; 0, I) + log r(decode(z), y) − log q(z | y)]
    IWAE_K(y) = log (1/K) Σ_k exp(log N(z_k; 0, I) + log r(decode(z_k), y) − log q(z_k | y))

Both are lower bounds of log Z(y) = log ∫ N(z; 0, I) r(decode(z), y) dz, the same
quantity a latent-space sampler of p(z) · r estimates with its log Ẑ, so the numbers
are directly comparable. Every estimate is per image (never pooled across images).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from posterior.core.checks import check_no_nan, check_shape

_LOG_2PI = math.log(2.0 * math.pi)


class _Encoder(Protocol):
    latent_dim: int

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def decode_probs(self, z: Tensor) -> Tensor: ...


class _Likelihood(Protocol):
    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor: ...


@torch.no_grad()
def _log_weights(vae: _Encoder, likelihood: _Likelihood, y: Tensor, num_samples: int,
                 generator: torch.Generator | None, chunk: int) -> Tensor:
    """(K, B) float64 log importance weights log p(z) + log r − log q for z ~ q(z | y)."""
    check_shape(y, (None, None), "y")
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk}")
    mu, logvar = vae.encode(y)
    b, d = mu.shape
    std = torch.exp(0.5 * logvar)
    out = []
    for start in range(0, int(num_samples), int(chunk)):
        k = min(int(chunk), int(num_samples) - start)
        eps = torch.randn((k, b, d), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + std * eps  # (k, B, d)
        log_q = (-0.5 * eps.square() - 0.5 * logvar - 0.5 * _LOG_2PI).sum(-1)
        log_p = (-0.5 * z.square() - 0.5 * _LOG_2PI).sum(-1)
        probs = vae.decode_probs(z.reshape(k * b, d))
        log_r = likelihood.log_likelihood(probs, y.expand(k, *y.shape).reshape(k * b, -1)).reshape(k, b)
        out.append((log_p + log_r - log_q).to(torch.float64))
    lw = torch.cat(out, 0)
    return check_no_nan(lw.T, "encoder log-weights").T


def encoder_elbo(vae: _Encoder, likelihood: _Likelihood, y: Tensor, num_samples: int = 200,
                 generator: torch.Generator | None = None, chunk: int = 100) -> Tensor:
    """Monte-Carlo ELBO of each image under the VAE's encoder.

    Args:
        vae: Object with ``encode(y) -> (mu, logvar)`` and ``decode_probs(z)`` (an MLPVAE).
        likelihood: Object with ``log_likelihood(probs, y) -> (B,)``.
        y: (B, P) observed images in [0, 1].
        num_samples: K samples of q(z | y) per image.
        generator: RNG for the samples (on y's device).
        chunk: Samples processed at once (bounds memory at chunk · B decoded images).

    Returns:
        (B,) float64 ELBO estimates.
    """
    return _log_weights(vae, likelihood, y, num_samples, generator, chunk).mean(0)


def encoder_iwae(vae: _Encoder, likelihood: _Likelihood, y: Tensor, num_samples: int = 2000,
                 generator: torch.Generator | None = None, chunk: int = 100) -> Tensor:
    """Importance-weighted bound IWAE_K of each image with the encoder as proposal.

    Same arguments as :func:`encoder_elbo`. The log-mean-exp over the K samples is
    done in float64.

    Returns:
        (B,) float64 IWAE estimates (≥ the ELBO in expectation, → log Z(y) as K grows).
    """
    lw = _log_weights(vae, likelihood, y, num_samples, generator, chunk)
    return torch.logsumexp(lw, 0) - math.log(lw.shape[0])
