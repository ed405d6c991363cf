"""A fixed pool of terminal states with log importance weights, drawn by resampling.

Sampling-importance-resampling as a source of off-policy training states: P prior samples x_i
with log-weights log w_i = beta log r(x_i) are resampled with probabilities softmax(log w), which
is a draw from p_prior(x) r(x)^beta / Z in the limit of a large pool. An RTB trainer can noise such
draws backward into trajectories (:meth:`posterior.diffusion_posterior.DiffusionPosterior.backward_trajectories`)
and train on them beside its own forward trajectories; any trajectory distribution with full
support leaves the RTB / VarGrad optimum unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import check_no_nan, check_shape
from .metrics import effective_sample_size, log_z_importance


class ImportancePool:
    """Terminal states (P, *event_shape) and their log-weights (P,), resampled on draw.

    A log-weight of -inf is a legal zero weight (never drawn); NaN raises, and so does a pool
    whose weights are all zero.
    """

    def __init__(self, states: Tensor, log_weights: Tensor) -> None:
        if states.dim() < 2 or states.shape[0] < 1:
            raise ValueError(f"states must have shape (P, *event_shape) with P >= 1, got {tuple(states.shape)}")
        check_shape(log_weights, (states.shape[0],), "log_weights")
        check_no_nan(log_weights, "log_weights")
        if not bool(torch.isfinite(log_weights).any()):
            raise ValueError("log_weights: every weight is zero (-inf); the pool has nothing to draw")
        if bool((log_weights == math.inf).any()):
            raise ValueError("log_weights must be < +inf")
        self.states = states.detach()
        self.log_weights = log_weights.detach().to(torch.float64)
        self._probabilities = torch.softmax(self.log_weights, 0)

    @classmethod
    @torch.no_grad()
    def from_prior(cls, prior, log_weight, size: int, *, chunk: int = 256,
                   generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> "ImportancePool":
        """``size`` samples of a :class:`priors.DiffusionPrior`, weighted by ``log_weight``: x (B, *event_shape)
        -> (B,), e.g. beta * log r(x) (the RTB path's ``log_reward``)."""
        from .guidance import prior_pool

        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        states, log_w = prior_pool(prior, log_weight, size, chunk=chunk, generator=generator, dtype=dtype)
        return cls(states, log_w)

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """(batch_size, *event_shape) states drawn with replacement with probabilities softmax(log w)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        probabilities = self._probabilities
        if generator is not None and generator.device != probabilities.device:
            probabilities = probabilities.to(generator.device)
        idx = torch.multinomial(probabilities, batch_size, replacement=True, generator=generator)
        return self.states[idx.to(self.states.device)]

    def effective_sample_size(self) -> float:
        """Normalized ESS of the weights, in (0, 1]."""
        return float(effective_sample_size(self.log_weights))

    def log_mean_weight(self) -> float:
        """log of the pool's mean weight: for prior samples weighted by r^beta, the log of an unbiased
        estimate of Z = E_prior[r^beta]."""
        return float(log_z_importance(self.log_weights))

    def state_dict(self) -> dict:
        return {"states": self.states, "log_weights": self.log_weights}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ImportancePool":
        return cls(state["states"], state["log_weights"])
