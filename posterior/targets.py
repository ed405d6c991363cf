"""The target a sampler is trained on, from what the user passes to `fit`: a prior and a reward.

- no prior: the reward is the full (conditional) log-density, ``dim`` and ``log_reward(x[, y])``;
- a decoder / generator prior x = f(z), z ~ N(0, I) (a VAE decoder, a generator ``nn.Module`` with its
  ``latent_dim``, or a diffusion prior through its deterministic DDIM solve): the noise-space target
  log N(z; 0, I) + log r(f(z), y) (:class:`posterior.constraints.likelihoods.LatentPosteriorReward`).

:func:`describe` records what a prior or reward was, so that a saved posterior refuses to load with
another one.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from torch import Tensor, nn


class CallableLikelihood:
    """A plain callable (x, y) -> (B,) as a likelihood with ``log_likelihood(x, y)``."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn = fn

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        return self.fn(x, y)


def decoder_prior(prior: Any, latent_dim: int | None = None):
    """The prior as a :class:`posterior.priors.vae.VAEDecoderPrior` (z ~ N(0, I), x = decode(z)), or None
    when there is no prior. A diffusion prior decodes by its deterministic DDIM solve."""
    from posterior.priors.diffusion import DiffusionPrior
    from posterior.priors.vae import VAEDecoderPrior

    if prior is None or isinstance(prior, VAEDecoderPrior):
        return prior
    if isinstance(prior, DiffusionPrior):  # noise space: z is the initial noise, f the DDIM solve
        shape, solve = tuple(prior.event_shape), prior.ddim_solve
        return VAEDecoderPrior(lambda z: solve(z.reshape((z.shape[0],) + shape)), math.prod(shape))
    if not isinstance(prior, nn.Module) and not callable(prior):
        raise TypeError(f"prior must be a VAEDecoderPrior, a DiffusionPrior, an nn.Module decoder or a callable, "
                        f"got {type(prior).__name__}")
    if latent_dim is None:
        raise ValueError("latent_dim is required when prior is a plain decoder (the size of its input z)")
    return VAEDecoderPrior(prior, latent_dim)


def sampler_target(prior: Any, reward: Any, latent_dim: int | None = None) -> Any:
    """log p(z) + log r(decode(z), y) for a decoder prior; the reward itself without a prior."""
    from posterior.constraints.likelihoods import LatentPosteriorReward

    decoder = decoder_prior(prior, latent_dim)
    if decoder is None:
        if not hasattr(reward, "dim") or not callable(getattr(reward, "log_reward", None)):
            raise ValueError("without a prior, reward must have `dim` and `log_reward(x[, y])` (the full log-density)")
        return reward
    likelihood = reward if hasattr(reward, "log_likelihood") else CallableLikelihood(reward)
    if not callable(getattr(likelihood, "log_likelihood", None)):
        raise TypeError("reward must be a likelihood with log_likelihood(x, y) or a callable (x, y) -> (B,)")
    return LatentPosteriorReward(decoder, likelihood)


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
