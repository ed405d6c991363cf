"""Base class for unnormalized Boltzmann targets ``p(x) ∝ exp(log_reward(x))``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class BoltzmannTarget(nn.Module):
    """Abstract unnormalized target density on ``R^dim``.

    Subclasses hold all constants as buffers so that ``.to(device, dtype)``
    moves them, and must implement :meth:`log_reward`. They may override
    :meth:`grad_log_reward` with an analytic gradient and :meth:`sample` with
    an exact sampler.

    Attributes:
        dim: Dimension of the state space.
        name: Short identifier of the target.
        reference_variance: Recommended variance σ² of the sampler's Brownian
            reference process for this target.
        log_z: Exact log normalizing constant ``log ∫ exp(log_reward(x)) dx``,
            or ``None`` if unknown.
    """

    dim: int
    name: str
    reference_variance: float
    log_z: float | None

    def __init__(
        self,
        dim: int,
        name: str,
        reference_variance: float = 1.0,
        log_z: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if isinstance(reference_variance, bool) or not isinstance(reference_variance, (int, float)) \
                or not (math.isfinite(reference_variance) and reference_variance > 0):
            raise ValueError(f"reference_variance must be a finite number > 0, got {reference_variance!r}")
        self.dim = int(dim)
        self.name = name
        self.reference_variance = float(reference_variance)
        self.log_z = log_z
        # Zero-size buffer that tracks the module's device and dtype.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    # ------------------------------------------------------------------ utils
    @property
    def device(self) -> torch.device:
        """Device of the module's buffers."""
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the module's buffers."""
        return self._anchor.dtype

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` has shape ``(B, dim)``."""
        if not isinstance(x, Tensor):
            raise ValueError(
                f"x must be a torch.Tensor of shape (B, dim) = (B, {self.dim}), "
                f"got {type(x).__name__}"
            )
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"x must have shape (B, dim) = (B, {self.dim}), "
                f"got {tuple(x.shape)}"
            )

    # -------------------------------------------------------------- interface
    def log_reward(self, x: Tensor) -> Tensor:
        """Unnormalized log density.

        Args:
            x: (B, dim) points.

        Returns:
            (B,) values of ``log_reward``; ``-inf`` marks zero density.
        """
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Alias of :meth:`log_reward`: (B, dim) -> (B,)."""
        return self.log_reward(x)

    def grad_log_reward(self, x: Tensor) -> Tensor:
        """Gradient of :meth:`log_reward` w.r.t. ``x`` via autograd.

        Args:
            x: (B, dim) points.

        Returns:
            (B, dim) gradients (detached).
        """
        self.check_input(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lr = self.log_reward(xg)
            (grad,) = torch.autograd.grad(lr.sum(), xg)
        return grad.detach()

    @property
    def has_exact_samples(self) -> bool:
        """Whether :meth:`sample` draws exact samples from the target."""
        return False

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples from the normalized target.

        Args:
            n: Number of samples.
            generator: Optional RNG (must live on the module's device).

        Returns:
            (n, dim) samples on the module's device and dtype.
        """
        raise NotImplementedError(f"target {self.name!r} has no exact sampler")

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, dim={self.dim}, "
            f"reference_variance={self.reference_variance}, log_z={self.log_z}"
        )
