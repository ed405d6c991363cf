"""Neal's funnel with ``x_0 ~ N(0, 3²)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from posterior.constraints.target import BoltzmannTarget


class Funnel(BoltzmannTarget):
    """``x_0 ~ N(0, 3²)``, ``x_{1:d} | x_0 ~ N(0, e^{x_0} I)``.

    ``log_reward`` is the normalized log density, so ``log_z = 0``.

    Args:
        dim: Total dimension ``d >= 2``.
    """

    X0_STD: float = 3.0

    def __init__(self, dim: int = 10) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ValueError(f"Funnel dim must be an integer >= 2, got {dim!r}")
        super().__init__(dim=dim, name="funnel", reference_variance=1.0, log_z=0.0)
        self._log_const = -0.5 * dim * math.log(2 * math.pi) - math.log(self.X0_STD)

    def log_reward(self, x: Tensor) -> Tensor:
        """(B, d) -> (B,) normalized log density."""
        self.check_input(x)
        x0, rest = x[:, 0], x[:, 1:]
        k = self.dim - 1
        return (
            -0.5 * (x0 / self.X0_STD).square()
            - 0.5 * k * x0
            - 0.5 * rest.square().sum(-1) * torch.exp(-x0)
            + self._log_const
        )

    def grad_log_reward(self, x: Tensor) -> Tensor:
        """(B, d) -> (B, d) analytic gradient."""
        self.check_input(x)
        x0, rest = x[:, :1], x[:, 1:]
        inv_var = torch.exp(-x0)  # (B, 1)
        k = self.dim - 1
        g0 = -x0 / self.X0_STD**2 - 0.5 * k + 0.5 * rest.square().sum(-1, keepdim=True) * inv_var
        return torch.cat([g0, -rest * inv_var], dim=-1)

    @property
    def has_exact_samples(self) -> bool:
        return True

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, d) exact samples."""
        eps = torch.randn(n, self.dim, generator=generator, device=self.device, dtype=self.dtype)
        x0 = self.X0_STD * eps[:, :1]
        return torch.cat([x0, eps[:, 1:] * torch.exp(0.5 * x0)], dim=-1)
