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


class PoolTraining:
    """An importance pool as a batch source of the training engine.

    Without ``forward_kl`` odd iterations train on paths resampled from the pool (beside the forward
    batches of even iterations). With ``forward_kl`` = lambda > 0 every iteration instead adds a
    mass-covering term lambda * mean(-log q(tau)) over a batch of pool paths, a Monte Carlo gradient of
    lambda KL(target || q) up to the pool's resampling error; the reverse KL of RTB, VarGrad and the
    pathwise KL is mode-seeking, the forward term penalizes target paths the posterior under-covers.
    Both vanish at q = target, so the optimum is unchanged. lambda can decay on a cosine
    (``forward_kl_decay_horizon`` iterations to ``forward_kl_decay_final`` times its value).

    Args:
        pool: the :class:`ImportancePool` of prior paths weighted by r^beta.
        forward_kl, forward_kl_decay_horizon, forward_kl_decay_final: the forward-KL weight and its decay.
    """

    def __init__(self, pool: ImportancePool, *, forward_kl: float = 0.0, forward_kl_decay_horizon: int = 0,
                 forward_kl_decay_final: float = 0.0) -> None:
        if not isinstance(pool, ImportancePool):
            raise TypeError(f"pool must be an ImportancePool, got {type(pool).__name__}")
        if not (isinstance(forward_kl, (int, float)) and math.isfinite(forward_kl) and forward_kl >= 0.0):
            raise ValueError(f"forward_kl must be a finite number >= 0 (0: off), got {forward_kl!r}")
        if isinstance(forward_kl_decay_horizon, bool) or not isinstance(forward_kl_decay_horizon, int) \
                or forward_kl_decay_horizon < 0:
            raise ValueError(f"forward_kl_decay_horizon must be an integer >= 0 (0: constant), got "
                             f"{forward_kl_decay_horizon!r}")
        if not 0.0 <= forward_kl_decay_final <= 1.0:
            raise ValueError(f"forward_kl_decay_final must be in [0, 1], got {forward_kl_decay_final}")
        if forward_kl_decay_horizon and not forward_kl:
            raise ValueError(f"forward_kl_decay_horizon={forward_kl_decay_horizon} decays the forward_kl weight, "
                             "which is 0 (off)")
        self.pool = pool
        self.forward_kl = float(forward_kl)
        self.forward_kl_decay_horizon = int(forward_kl_decay_horizon)
        self.forward_kl_decay_final = float(forward_kl_decay_final)

    @property
    def trains_odd_iterations(self) -> bool:
        """Whether odd iterations train on pool paths (no forward-KL term)."""
        return not self.forward_kl

    def forward_kl_weight(self, iteration: int) -> float:
        """The forward-KL weight lambda at ``iteration`` (after its cosine decay)."""
        from posterior.training.lr_schedule import CosineDecay

        return self.forward_kl * CosineDecay(self.forward_kl_decay_horizon, self.forward_kl_decay_final)(iteration)

    def settings(self) -> dict:
        return {"forward_kl": self.forward_kl, "forward_kl_decay_horizon": self.forward_kl_decay_horizon,
                "forward_kl_decay_final": self.forward_kl_decay_final}
