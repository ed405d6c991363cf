"""The target a sampler is trained on, from what the user passes to `fit`: a prior and a reward.

- no prior: the reward is the full (conditional) log-density, ``dim`` and ``log_reward(x[, y])``;
- a decoder / generator prior x = f(z), z ~ N(0, I) (a VAE decoder, a generator ``nn.Module`` with its
  ``latent_dim``, or a diffusion prior through its deterministic DDIM solve): the noise-space
  ("outsourced") target log N(z; 0, I) + beta log r(f(z), y) (:class:`LatentPosteriorReward`), conditional
  or not; its pushforward through f is the posterior over x.

:func:`describe` records what a prior or reward was, so that a saved posterior refuses to load with
another one.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from posterior.core.checks import check_no_nan


class CallableLikelihood:
    """A plain callable (x, y) -> (B,) or x -> (B,) as a likelihood with ``log_likelihood``."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn = fn

    def log_likelihood(self, x: Tensor, *y: Tensor) -> Tensor:
        return self.fn(x, *y)


def decoder_prior(prior: Any, latent_dim: int | None = None):
    """The prior as a :class:`posterior.priors.vae.VAEDecoderPrior` (z ~ N(0, I), x = decode(z)), or None
    when there is no prior. A diffusion prior decodes by its deterministic DDIM solve."""
    from posterior.priors.diffusion import DiffusionPrior
    from posterior.priors.vae import VAEDecoderPrior

    if prior is None:
        if latent_dim is not None:
            raise ValueError(f"latent_dim={latent_dim!r} is the size of a decoder prior's z; without a prior the "
                             "reward's dim sets the size: leave latent_dim unset")
        return None
    if isinstance(prior, VAEDecoderPrior):
        if latent_dim is not None and latent_dim != prior.latent_dim:
            raise ValueError(f"latent_dim={latent_dim!r} disagrees with the prior's latent_dim={prior.latent_dim}: "
                             "leave latent_dim unset for a VAEDecoderPrior")
        return prior
    if isinstance(prior, DiffusionPrior):  # noise space: z is the initial noise, f the DDIM solve
        shape, solve = tuple(prior.event_shape), prior.ddim_solve
        if latent_dim is not None and latent_dim != math.prod(shape):
            raise ValueError(f"latent_dim={latent_dim!r} disagrees with the diffusion prior's noise size "
                             f"{math.prod(shape)} (event_shape {shape}): leave latent_dim unset")
        return VAEDecoderPrior(lambda z: solve(z.reshape((z.shape[0],) + shape)), math.prod(shape))
    if not isinstance(prior, nn.Module) and not callable(prior):
        raise TypeError(f"prior must be a VAEDecoderPrior, a DiffusionPrior, an nn.Module decoder or a callable, "
                        f"got {type(prior).__name__}")
    if latent_dim is None:
        raise ValueError("latent_dim is required when prior is a plain decoder (the size of its input z)")
    return VAEDecoderPrior(prior, latent_dim)


class LatentPosteriorReward(nn.Module):
    """Unnormalized noise-space posterior log N(z; 0, I) + beta * log r(decode(z)[, y]).

    Args:
        prior: a :class:`posterior.priors.vae.VAEDecoderPrior` (``latent_dim``, ``log_prob``, ``decode``); use
            :func:`decoder_prior` for a plain generator or a diffusion prior's DDIM solve.
        likelihood: ``log_likelihood(x, y) -> (B,)`` (conditional) or ``log_likelihood(x) -> (B,)``; -inf is a
            legal zero, NaN raises.
        beta: exponent of the likelihood (1: the posterior).

    Attributes:
        dim: the latent dimension (the sampler's state dimension).
    """

    def __init__(self, prior: nn.Module, likelihood: Any, beta: float = 1.0) -> None:
        super().__init__()
        for attr in ("latent_dim", "log_prob", "decode"):
            if not hasattr(prior, attr):
                raise TypeError(f"prior must provide {attr!r} (e.g. a VAEDecoderPrior), got {type(prior).__name__}")
        if not callable(getattr(likelihood, "log_likelihood", None)):
            raise TypeError(f"likelihood must provide log_likelihood(x[, y]), got {type(likelihood).__name__}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
        self.prior, self.likelihood, self.beta = prior, likelihood, float(beta)
        self.dim = int(prior.latent_dim)

    def log_reward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """z: (B, latent_dim), y: (B, *cond_shape) or None -> (B,)."""
        if hasattr(self.prior, "check_latent"):
            self.prior.check_latent(z)
        x = self.prior.decode(z)
        if y is None:
            ll = self.likelihood.log_likelihood(x)
        else:
            if not isinstance(y, Tensor) or y.ndim < 1 or y.shape[0] != z.shape[0]:
                raise ValueError(f"y must be a tensor of shape (B, *cond_shape) with B = z.shape[0] = {z.shape[0]}, "
                                 f"got {tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
            ll = self.likelihood.log_likelihood(x, y)
        if not isinstance(ll, Tensor) or ll.shape != (z.shape[0],):
            got = tuple(ll.shape) if isinstance(ll, Tensor) else type(ll).__name__
            raise ValueError(f"likelihood.log_likelihood must return shape (B,) = ({z.shape[0]},), got {got}")
        check_no_nan(ll, "likelihood.log_likelihood")
        return self.prior.log_prob(z) + self.beta * ll

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Alias of :meth:`log_reward`."""
        return self.log_reward(z, y)

    def grad_log_reward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, latent_dim) gradient of :meth:`log_reward` in z (detached); zero where the density is zero."""
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            value = self.log_reward(zg, y.detach() if isinstance(y, Tensor) else y)
            (grad,) = torch.autograd.grad(value.sum(), zg)
        return torch.where(torch.isfinite(value)[:, None], grad, torch.zeros_like(grad)).detach()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, beta={self.beta}"


def sampler_target(prior: Any, reward: Any, latent_dim: int | None = None, *, beta: float = 1.0) -> Any:
    """log p(z) + beta log r(decode(z)[, y]) for a decoder prior; the reward itself without a prior.
    ``reward``: a likelihood (``log_likelihood``) or a plain callable of (x, y) or x."""
    decoder = decoder_prior(prior, latent_dim)
    if decoder is None:
        if not hasattr(reward, "dim") or not callable(getattr(reward, "log_reward", None)):
            raise ValueError("without a prior, reward must have `dim` and `log_reward(x[, y])` (the full log-density)")
        return reward
    if not (callable(getattr(reward, "log_likelihood", None)) or (callable(reward) and not hasattr(reward, "log_likelihood"))):
        raise TypeError(f"reward must be a likelihood with log_likelihood(x[, y]) or a callable (x[, y]) -> (B,), "
                        f"got {type(reward).__name__}")
    likelihood = reward if hasattr(reward, "log_likelihood") else CallableLikelihood(reward)
    return LatentPosteriorReward(decoder, likelihood, beta)


def describe(obj: Any) -> dict[str, Any] | None:
    """What a prior or reward is, for a saved posterior's config: its class and the sizes it fixes."""
    if obj is None:
        return None
    out: dict[str, Any] = {"class": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    for name in ("latent_dim", "dim", "num_steps"):
        value = getattr(obj, name, None)
        if isinstance(value, int):
            out[name] = value
    shape = getattr(obj, "event_shape", None)
    if shape is not None:
        out["event_shape"] = [int(s) for s in shape]
    return out
