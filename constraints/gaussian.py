"""Multivariate Gaussian target with a known normalizing constant."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from posterior.constraints.target import BoltzmannTarget


class GaussianTarget(BoltzmannTarget):
    """``log_reward(x) = log N(x; mean, cov) + log_scale``, hence ``log_z = log_scale``.

    Exactly one of ``cov`` (d, d) or ``std`` (d,) must be given. The constants
    are built in float64 and stored in ``mean``'s floating dtype (or the default
    dtype when ``mean`` is not a floating tensor).

    Args:
        mean: (d,) mean vector.
        cov: (d, d) symmetric positive-definite covariance.
        std: (d,) positive per-coordinate standard deviations (diagonal cov).
        log_scale: Additive constant; equals the exact ``log_z``.
        reference_variance: Recommended reference variance σ².
    """

    def __init__(
        self,
        mean: Tensor,
        cov: Tensor | None = None,
        std: Tensor | None = None,
        log_scale: float = 0.0,
        reference_variance: float = 1.0,
    ) -> None:
        mean_t = torch.as_tensor(mean)
        if mean_t.ndim != 1 or mean_t.shape[0] < 1:
            raise ValueError(f"mean must have shape (d,) with d >= 1, got {tuple(mean_t.shape)}")
        if not bool(torch.isfinite(mean_t).all()):
            raise ValueError(f"mean must be finite, got {mean_t.tolist()}")
        if isinstance(log_scale, bool) or not isinstance(log_scale, (int, float)) or not math.isfinite(log_scale):
            raise ValueError(f"log_scale must be finite (it is the exact log_z), got {log_scale!r}")
        d = int(mean_t.shape[0])
        super().__init__(d, "gaussian", reference_variance, float(log_scale))
        dtype = mean_t.dtype if mean_t.is_floating_point() else torch.get_default_dtype()
        device = mean_t.device

        if (cov is None) == (std is None):
            raise ValueError("exactly one of cov (d, d) or std (d,) must be given")
        if cov is not None:
            cov64 = torch.as_tensor(cov, dtype=torch.float64, device=device)
            if cov64.shape != (d, d):
                raise ValueError(f"cov must have shape (d, d) = ({d}, {d}), got {tuple(cov64.shape)}")
            cov64 = 0.5 * (cov64 + cov64.mT)
            chol, info = torch.linalg.cholesky_ex(cov64)
            if int(info) != 0:
                raise ValueError("cov must be symmetric positive definite")
        else:
            std64 = torch.as_tensor(std, dtype=torch.float64, device=device)
            if std64.shape != (d,):
                raise ValueError(f"std must have shape (d,) = ({d},), got {tuple(std64.shape)}")
            if not bool((std64 > 0).all()):
                raise ValueError(f"std must be strictly positive, got {std64.tolist()}")
            if not bool(torch.isfinite(std64).all()):
                raise ValueError(f"std must be finite, got {std64.tolist()}")
            chol = torch.diag(std64)

        self.log_scale = float(log_scale)
        # Normalizing constant of N(mean, cov): -0.5 d log 2π - log det L.
        self._log_norm = float(-0.5 * d * math.log(2 * math.pi) - torch.log(torch.diagonal(chol)).sum())
        self.register_buffer("mean", mean_t.to(dtype=dtype).clone())
        self.register_buffer("scale_tril", chol.to(dtype))  # (d, d) lower Cholesky factor
        self._anchor = self._anchor.to(device=device, dtype=dtype)

    def _whiten(self, x: Tensor) -> Tensor:
        """(B, d) -> (B, d): rows ``L^{-1}(x - mean)``."""
        r = x - self.mean
        return torch.linalg.solve_triangular(self.scale_tril.mT, r, upper=True, left=False)

    def log_reward(self, x: Tensor) -> Tensor:
        """(B, d) -> (B,) ``log N(x; mean, cov) + log_scale``."""
        self.check_input(x)
        z = self._whiten(x)
        return -0.5 * z.square().sum(-1) + (self._log_norm + self.log_scale)

    def grad_log_reward(self, x: Tensor) -> Tensor:
        """(B, d) -> (B, d) ``-cov^{-1}(x - mean)``."""
        self.check_input(x)
        z = self._whiten(x)
        # Rows of -L^{-T} z.
        return -torch.linalg.solve_triangular(self.scale_tril, z, upper=False, left=False)

    @property
    def has_exact_samples(self) -> bool:
        return True

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, d) exact samples ``mean + L ε``."""
        eps = torch.randn(n, self.dim, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + eps @ self.scale_tril.mT
