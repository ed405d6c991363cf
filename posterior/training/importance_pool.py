"""A fixed pool of prior trajectories with log importance weights, drawn by resampling.

Sampling-importance-resampling over whole paths as a source of off-policy training data: P
trajectories tau_i of a diffusion prior, weighted by log w_i = beta log r(x_i) of their terminal
states, are resampled with probabilities softmax(log w). In the limit of a large pool a draw is a
trajectory of p_prior(tau) r(x)^beta / Z, the path measure that RTB fits, so the posterior can be
trained on such draws beside its own forward trajectories (any full-support trajectory
distribution leaves the RTB / VarGrad optimum unchanged).

Why whole paths and not terminal states noised forward: on a strided DDPM schedule the prior's
reverse kernels are much narrower than the data-noising conditionals near t = 0 (variance 1e-4 where
q(x_t1 | x_t2, x_0) differs by O(0.1)), so a terminal state noised forward gives a trajectory that the
prior itself essentially never draws (on the 2-D mixture check: log p_prior of -283 against -20 for
the prior's own paths), and the RTB residuals of such paths are dominated by that mismatch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from posterior.core.checks import check_no_nan, check_shape
from posterior.core.metrics import effective_sample_size, log_z_importance


class ImportancePool:
    """Trajectories (N + 1, P, *event_shape) and their log-weights (P,), resampled on draw.

    A log-weight of -inf is a legal zero weight (never drawn); NaN raises, and so does a pool
    whose weights are all zero.
    """

    def __init__(self, paths: Tensor, log_weights: Tensor) -> None:
        if paths.dim() < 3 or paths.shape[0] < 2 or paths.shape[1] < 1:
            raise ValueError("paths must have shape (N + 1, P, *event_shape) with N >= 1 and P >= 1, "
                             f"got {tuple(paths.shape)}")
        check_shape(log_weights, (paths.shape[1],), "log_weights")
        check_no_nan(log_weights, "log_weights")
        if not bool(torch.isfinite(log_weights).any()):
            raise ValueError("log_weights: every weight is zero (-inf); the pool has nothing to draw")
        if bool((log_weights == math.inf).any()):
            raise ValueError("log_weights must be < +inf")
        self.paths = paths.detach()
        self.log_weights = log_weights.detach().to(torch.float64)
        self._probabilities = torch.softmax(self.log_weights, 0)

    @classmethod
    @torch.no_grad()
    def from_prior(cls, prior, log_weight, size: int, *, chunk: int = 256,
                   generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> "ImportancePool":
        """``size`` trajectories of a :class:`posterior.priors.DiffusionPrior`, weighted by ``log_weight`` of their
        terminal states: x (B, *event_shape) -> (B,), e.g. beta * log r(x) (the RTB path's ``log_reward``)."""
        from posterior.baselines.guidance import prior_pool

        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        paths, log_w = prior_pool(prior, log_weight, size, chunk=chunk, generator=generator, dtype=dtype,
                                  keep_paths=True)
        return cls(paths, log_w)

    def __len__(self) -> int:
        return int(self.paths.shape[1])

    @property
    def terminal_states(self) -> Tensor:
        """(P, *event_shape) the paths' last states."""
        return self.paths[-1]

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """(N + 1, batch_size, *event_shape) paths drawn with replacement with probabilities softmax(log w)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        probabilities = self._probabilities
        if generator is not None and generator.device != probabilities.device:
            probabilities = probabilities.to(generator.device)
        idx = torch.multinomial(probabilities, batch_size, replacement=True, generator=generator)
        return self.paths[:, idx.to(self.paths.device)]

    def effective_sample_size(self) -> float:
        """Normalized ESS of the weights, in (0, 1]."""
        return float(effective_sample_size(self.log_weights))

    def log_mean_weight(self) -> float:
        """log of the pool's mean weight: for prior samples weighted by r^beta, the log of an unbiased
        estimate of Z = E_prior[r^beta]."""
        return float(log_z_importance(self.log_weights))

    def state_dict(self) -> dict:
        return {"paths": self.paths, "log_weights": self.log_weights}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ImportancePool":
        return cls(state["paths"], state["log_weights"])
