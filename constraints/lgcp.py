"""Log-Gaussian Cox process posterior on the Finnish pines point pattern.

Follows the standard benchmark (Møller et al. 1998; Arbel et al. 2021,
``annealed_flow_transport``): the 126 pine locations, given in the unit square
``[0, 1]²``, are binned on a ``grid x grid`` lattice. Bin ``(r, c)`` with
``r = floor(grid · data_x)`` and ``c = floor(grid · data_y)`` (points on the
upper edge go to the last bin) is flattened row-major to index
``r · grid + c``. The latent log-intensity ``x ∈ R^{grid²}`` has prior
``N(μ, K)`` with ``K_ij = σ² exp(-‖b_i - b_j‖ / (grid · β))`` on the 2-D bin
indices ``b``, ``σ² = 1.91``, ``β = 1/33``, ``μ = log(N) - σ²/2`` (N = 126),
and the counts are Poisson with rate ``a · exp(x_i)``, ``a = 1/grid²``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch import Tensor

from posterior.constraints.target import BoltzmannTarget

SIGNAL_VARIANCE: float = 1.91
BETA: float = 1.0 / 33.0


def load_pines(pines_path: str | Path) -> Tensor:
    """Read the pines CSV (header ``"", "data_x", "data_y"``) as an (N, 2) float64 tensor.

    The coordinates must already lie in the unit square (as in the standard
    benchmark file); otherwise a ``ValueError`` is raised.
    """
    path = Path(pines_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pines_path={str(pines_path)!r} does not exist; pass the path of the pines CSV "
            "(columns data_x, data_y) or set POSTERIOR_PINES_PATH"
        )
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], [r for r in rows[1:] if r]
    try:
        ix, iy = header.index("data_x"), header.index("data_y")
    except ValueError:
        ix, iy = len(header) - 2, len(header) - 1
    pts = torch.tensor([[float(r[ix]), float(r[iy])] for r in body], dtype=torch.float64)
    if pts.numel() == 0 or bool((pts < 0).any() or (pts > 1).any()):
        raise ValueError(f"pines coordinates in {str(pines_path)!r} must lie in the unit square [0, 1]^2")
    return pts


def bin_counts(points: Tensor, grid: int) -> Tensor:
    """(N, 2) points in [0, 1]² -> (grid²,) float64 counts, row-major over (data_x bin, data_y bin)."""
    idx = torch.floor(points * grid).long().clamp_(0, grid - 1)  # (N, 2)
    flat = idx[:, 0] * grid + idx[:, 1]
    return torch.bincount(flat, minlength=grid * grid).to(torch.float64)


def pines_kernel(grid: int, signal_variance: float = SIGNAL_VARIANCE, beta: float = BETA) -> Tensor:
    """(grid², grid²) float64 exponential covariance on 2-D bin indices."""
    r = torch.arange(grid, dtype=torch.float64)
    bins = torch.cartesian_prod(r, r)  # (grid², 2), row-major
    dist = torch.cdist(bins, bins)
    return signal_variance * torch.exp(-dist / (grid * beta))


class LogGaussianCoxProcess(BoltzmannTarget):
    """Posterior of the latent log-intensity of the pines LGCP.

    ``log_reward(x) = log N(x; μ, K) + Σ_i (n_i x_i - a e^{x_i})``; the
    Poisson constants ``-Σ_i log(n_i!) + n_i log a`` are dropped, so
    ``log_z`` is unknown (``None``). The Gaussian normalizer is kept.

    Constants are computed in float64 and stored in ``dtype`` (default: the
    default dtype). Build with ``dtype=torch.float64`` when the prior term and
    the analytic gradient must agree to float64 precision: casting a float32
    instance with ``.to(torch.float64)`` keeps the float32 rounding of the
    Cholesky factor and of ``K^{-1}``, which differ at the level of
    ``cond(K) · 1e-7``.

    Args:
        pines_path: Path of the pines CSV.
        grid: Bins per side; ``dim = grid²``.
        dtype: Floating dtype of the stored constants.
    """

    def __init__(self, pines_path: str | Path, grid: int = 40, dtype: torch.dtype | None = None) -> None:
        if grid < 1:
            raise ValueError(f"grid must be a positive integer, got {grid}")
        points = load_pines(pines_path)
        super().__init__(dim=grid * grid, name="lgcp", reference_variance=1.0, log_z=None)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        self.grid = grid
        self.n_points = points.shape[0]
        self.bin_area = 1.0 / (grid * grid)
        mu = math.log(self.n_points) - SIGNAL_VARIANCE / 2.0

        kernel = pines_kernel(grid)
        chol = torch.linalg.cholesky(kernel)
        eye = torch.eye(self.dim, dtype=torch.float64)
        kinv = torch.cholesky_solve(eye, chol)
        kinv = 0.5 * (kinv + kinv.mT)
        self._log_norm = float(-0.5 * self.dim * math.log(2 * math.pi) - torch.log(torch.diagonal(chol)).sum())

        self.register_buffer("counts", bin_counts(points, grid).to(dtype))  # (dim,)
        self.register_buffer("mean", torch.full((self.dim,), mu, dtype=dtype))  # (dim,)
        self.register_buffer("scale_tril", chol.to(dtype))  # (dim, dim)
        self.register_buffer("precision", kinv.to(dtype))  # (dim, dim) = K^{-1}
        self._anchor = self._anchor.to(dtype)

    def log_prior(self, x: Tensor) -> Tensor:
        """(B, dim) -> (B,) ``log N(x; μ, K)`` via a batched triangular solve."""
        self.check_input(x)
        z = torch.linalg.solve_triangular(self.scale_tril.mT, x - self.mean, upper=True, left=False)
        return -0.5 * z.square().sum(-1) + self._log_norm

    def log_likelihood(self, x: Tensor) -> Tensor:
        """(B, dim) -> (B,) ``Σ_i n_i x_i - a e^{x_i}`` (constants dropped)."""
        self.check_input(x)
        return (self.counts * x - self.bin_area * torch.exp(x)).sum(-1)

    def log_reward(self, x: Tensor) -> Tensor:
        """(B, dim) -> (B,) unnormalized log posterior."""
        return self.log_prior(x) + self.log_likelihood(x)

    def grad_log_reward(self, x: Tensor) -> Tensor:
        """(B, dim) -> (B, dim): ``-K^{-1}(x - μ) + n - a e^x``."""
        self.check_input(x)
        return -(x - self.mean) @ self.precision + self.counts - self.bin_area * torch.exp(x)
