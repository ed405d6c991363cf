"""25-component Gaussian mixture on a 5x5 grid in 2-D."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from posterior.constraints.target import BoltzmannTarget


class GaussianMixture25(BoltzmannTarget):
    """Equal-weight mixture of 25 Gaussians ``N(μ_k, 0.3 I)`` in 2-D.

    Means lie on ``{-10, -5, 0, 5, 10}²``. ``log_reward`` is the normalized
    log density, so ``log_z = 0``.
    """

    LOCS: tuple[float, ...] = (-10.0, -5.0, 0.0, 5.0, 10.0)
    VARIANCE: float = 0.3

    def __init__(self) -> None:
        super().__init__(dim=2, name="gmm25", reference_variance=5.0, log_z=0.0)
        locs = torch.tensor(self.LOCS, dtype=torch.get_default_dtype())
        grid_x, grid_y = torch.meshgrid(locs, locs, indexing="ij")
        self.register_buffer("means", torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1))  # (25, 2)
        self.n_components = self.means.shape[0]
        # log(1/25) + log N normalizer in 2-D with variance 0.3.
        self._log_const = -math.log(self.n_components) - math.log(2 * math.pi * self.VARIANCE)

    def _component_logits(self, x: Tensor) -> Tensor:
        """(B, 2) -> (B, 25): ``-‖x - μ_k‖² / (2·0.3)``."""
        diff = x.unsqueeze(-2) - self.means  # (B, 25, 2)
        return -0.5 * diff.square().sum(-1) / self.VARIANCE

    def log_reward(self, x: Tensor) -> Tensor:
        """(B, 2) -> (B,) normalized log density."""
        self.check_input(x)
        return torch.logsumexp(self._component_logits(x), dim=-1) + self._log_const

    def grad_log_reward(self, x: Tensor) -> Tensor:
        """(B, 2) -> (B, 2): ``Σ_k r_k(x) (μ_k - x) / 0.3`` with softmax responsibilities r."""
        self.check_input(x)
        resp = torch.softmax(self._component_logits(x), dim=-1)  # (B, 25)
        return (resp @ self.means - x) / self.VARIANCE

    def mode_shares(self, x: Tensor) -> Tensor:
        """(B, 2) -> (25,) share of the samples whose most likely component is each mode."""
        self.check_input(x)
        nearest = self._component_logits(x).argmax(-1)
        return torch.bincount(nearest, minlength=self.n_components).to(x.dtype) / x.shape[0]

    @property
    def has_exact_samples(self) -> bool:
        return True

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, 2) exact samples: uniform component, then Gaussian noise."""
        idx = torch.randint(self.n_components, (n,), generator=generator, device=self.means.device)
        eps = torch.randn(n, 2, generator=generator, device=self.means.device, dtype=self.means.dtype)
        return self.means[idx] + math.sqrt(self.VARIANCE) * eps
