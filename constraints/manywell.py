"""Manywell: a product of independent 2-D double wells."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import integrate
from scipy.special import logsumexp as np_logsumexp
from torch import Tensor

from posterior.constraints.target import BoltzmannTarget

# Rejection proposal for the double-well coordinate:
# q = 0.2 N(-1.7, 0.5²) + 0.8 N(1.7, 0.5²).
_PROP_WEIGHTS: tuple[float, float] = (0.2, 0.8)
_PROP_MEANS: tuple[float, float] = (-1.7, 1.7)
_PROP_STD: float = 0.5
# Multiplicative safety margin on the numerically found envelope constant.
_ENVELOPE_MARGIN: float = 1.2
# The region between the two wells: |x1| < this (the wells sit at about ±1.7 with std about 0.22).
BARRIER_HALF_WIDTH: float = 1.0


def double_well_log_density(x1: Tensor | np.ndarray | float) -> Tensor | np.ndarray | float:
    """Unnormalized log density ``-x⁴ + 6x² + 0.5x`` of the double-well coordinate.

    Works elementwise on tensors or numpy arrays of any shape.
    """
    x2 = x1 * x1
    return -x2 * x2 + 6.0 * x2 + 0.5 * x1


def proposal_log_density(x1: np.ndarray | float) -> np.ndarray:
    """Normalized log density of the rejection proposal, elementwise (numpy)."""
    x1 = np.asarray(x1, dtype=np.float64)
    comps = [
        math.log(w) - 0.5 * ((x1 - m) / _PROP_STD) ** 2 - math.log(_PROP_STD * math.sqrt(2 * math.pi))
        for w, m in zip(_PROP_WEIGHTS, _PROP_MEANS)
    ]
    return np_logsumexp(np.stack(comps), axis=0)


def _double_well_moments(lower: float, upper: float, powers: tuple[int, ...] = (0,)) -> tuple[list[float], float]:
    """``∫_lower^upper x^k exp(-x⁴ + 6x² + 0.5x - shift) dx`` for each k in ``powers``, and ``shift``
    (the integrand's maximum, for numerical stability), by adaptive quadrature in float64."""
    grid = np.linspace(-4.0, 4.0, 8001)
    shift = float(double_well_log_density(grid).max())
    values = [integrate.quad(lambda t, k=k: t ** k * math.exp(double_well_log_density(t) - shift), lower, upper,
                             points=[p for p in _PROP_MEANS if lower < p < upper], epsabs=0.0, epsrel=1e-13,
                             limit=200)[0]
              for k in powers]
    return values, shift


def _double_well_log_integral(lower: float, upper: float) -> float:
    """``log ∫_lower^upper exp(-x⁴ + 6x² + 0.5x) dx``."""
    (mass,), shift = _double_well_moments(lower, upper)
    return math.log(mass) + shift


def double_well_log_z1() -> float:
    """``log ∫ exp(-x⁴ + 6x² + 0.5x) dx`` by adaptive quadrature in float64."""
    return _double_well_log_integral(-8.0, 8.0)  # integrand < exp(-3700) of its peak beyond |x| = 8


def double_well_shallow_mass() -> float:
    """Probability of the shallow well, ``P(x1 < 0)``, of the normalized double-well coordinate."""
    return double_well_mass(-8.0, 0.0)


def double_well_mass(lower: float, upper: float) -> float:
    """Probability of ``[lower, upper]`` under the normalized double-well coordinate."""
    return math.exp(_double_well_log_integral(lower, upper) - double_well_log_z1())


def double_well_std(lower: float, upper: float) -> float:
    """Standard deviation of the double-well coordinate restricted to ``[lower, upper]`` (a well:
    ``(0, 8)`` deep, ``(-8, 0)`` shallow)."""
    (m0, m1, m2), _ = _double_well_moments(lower, upper, (0, 1, 2))
    mean = m1 / m0
    return math.sqrt(m2 / m0 - mean * mean)


def envelope_log_m() -> float:
    """``log M`` with ``exp(f(x)) <= M q(x)`` for all x (grid max times a safety margin)."""
    grid = np.linspace(-8.0, 8.0, 160_001)
    log_ratio = double_well_log_density(grid) - proposal_log_density(grid)
    return float(log_ratio.max()) + math.log(_ENVELOPE_MARGIN)


class Manywell(BoltzmannTarget):
    """Product of ``dim/2`` double wells on interleaved coordinate pairs.

    For each pair ``(x[2i], x[2i+1]) = (x1, x2)``:
    ``log p(x1, x2) = -x1⁴ + 6x1² + 0.5x1 - 0.5x2²`` (unnormalized).
    ``log_z = (dim/2) (log Z_1 + 0.5 log 2π)`` with ``Z_1`` from quadrature.

    Args:
        dim: Even dimension ``>= 2``.
    """

    def __init__(self, dim: int = 32) -> None:
        if not isinstance(dim, int) or dim < 2 or dim % 2 != 0:
            raise ValueError(f"Manywell dim must be an even integer >= 2, got {dim!r}")
        self.log_z1 = double_well_log_z1()
        self.n_wells = dim // 2
        log_z = self.n_wells * (self.log_z1 + 0.5 * math.log(2 * math.pi))
        super().__init__(dim=dim, name="manywell", reference_variance=1.0, log_z=log_z)
        self.log_envelope = envelope_log_m()
        self.shallow_mass = double_well_shallow_mass()  # P(x1 < 0) in every pair
        # exact spreads (see well_spreads): x1 within each well, between the wells, and the Gaussian coordinates
        self.exact_spreads = {"deep_well_std": double_well_std(0.0, 8.0),
                              "shallow_well_std": double_well_std(-8.0, 0.0),
                              "barrier_share": double_well_mass(-BARRIER_HALF_WIDTH, BARRIER_HALF_WIDTH),
                              "gaussian_std": 1.0}

    def log_reward(self, x: Tensor) -> Tensor:
        """(B, dim) -> (B,) unnormalized log density."""
        self.check_input(x)
        x1, x2 = x[:, 0::2], x[:, 1::2]
        return (double_well_log_density(x1) - 0.5 * x2.square()).sum(-1)

    def grad_log_reward(self, x: Tensor) -> Tensor:
        """(B, dim) -> (B, dim) analytic gradient."""
        self.check_input(x)
        x1, x2 = x[:, 0::2], x[:, 1::2]
        g1 = -4.0 * x1**3 + 12.0 * x1 + 0.5
        return torch.stack([g1, -x2], dim=-1).reshape(x.shape)

    @property
    def has_exact_samples(self) -> bool:
        return True

    def _proposal_log_prob(self, x: Tensor) -> Tensor:
        """Elementwise log q(x) for a tensor of any shape."""
        comps = torch.stack(
            [
                math.log(w) - 0.5 * ((x - m) / _PROP_STD).square() - math.log(_PROP_STD * math.sqrt(2 * math.pi))
                for w, m in zip(_PROP_WEIGHTS, _PROP_MEANS)
            ]
        )
        return torch.logsumexp(comps, dim=0)

    def shallow_well_shares(self, x: Tensor) -> Tensor:
        """(B, dim) -> (dim/2,) share of the samples in each pair's shallow well (x1 < 0).

        The exact share is ``shallow_mass`` (about 0.156) in every pair; a pair
        near 0 has lost its shallow well (mode collapse), one far above it over-covers it.
        """
        self.check_input(x)
        if x.shape[0] == 0:
            raise ValueError("x: expected at least one sample, got shape (0, dim)")
        return (x[:, 0::2] < 0).to(x.dtype).mean(0)

    def well_spreads(self, x: Tensor) -> dict[str, float | None]:
        """(B, dim) -> the spread of the samples, pooled over pairs, against ``exact_spreads``.

        ``deep_well_std`` / ``shallow_well_std``: the std of x1 among the samples in that well
        (None with fewer than two there); ``barrier_share``: the share of x1 values between the
        wells, ``|x1| < BARRIER_HALF_WIDTH`` (exact about 0.004), where a sampler that has not
        decided between the wells leaves mass; ``gaussian_std``: the std of the Gaussian
        coordinates x2 (exact 1). A sampler that is right on the well shares can still be too
        wide or too narrow inside them, which these show and the shares do not.
        """
        self.check_input(x)
        if x.shape[0] < 2:
            raise ValueError(f"x: expected at least two samples, got shape {tuple(x.shape)}")
        x1 = x[:, 0::2]

        def std(values: Tensor) -> float | None:
            return float(values.std()) if values.numel() >= 2 else None

        return {"deep_well_std": std(x1[x1 >= 0]), "shallow_well_std": std(x1[x1 < 0]),
                "barrier_share": float((x1.abs() < BARRIER_HALF_WIDTH).to(x.dtype).mean()),
                "gaussian_std": float(x[:, 1::2].std())}

    def sample_double_well(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n,) exact samples of the 1-D density ``∝ exp(-x⁴ + 6x² + 0.5x)`` by rejection."""
        kw = {"device": self.device, "dtype": self.dtype}
        accept_rate = math.exp(self.log_z1 - self.log_envelope)
        chunks: list[Tensor] = []
        n_acc = 0
        while n_acc < n:
            m = max(int(1.2 * (n - n_acc) / accept_rate) + 16, 64)
            left = torch.rand(m, generator=generator, **kw) < _PROP_WEIGHTS[0]
            eps = torch.randn(m, generator=generator, **kw)
            loc = torch.where(left, eps.new_full((), _PROP_MEANS[0]), eps.new_full((), _PROP_MEANS[1]))
            prop = loc + _PROP_STD * eps
            log_u = torch.log(torch.rand(m, generator=generator, **kw))
            log_acc = double_well_log_density(prop) - self._proposal_log_prob(prop) - self.log_envelope
            acc = prop[log_u < log_acc]
            chunks.append(acc)
            n_acc += acc.shape[0]
        return torch.cat(chunks)[:n]

    def sample_tempered(self, n: int, beta: float, generator: torch.Generator | None = None) -> Tensor:
        """(n, dim) exact samples of the tempered density ``∝ p(x)^beta``.

        ``beta > 1`` sharpens the target (narrower wells, more weight on the deep side), ``beta < 1``
        flattens it. The double-well coordinates are drawn by inverting their CDF, tabulated in float64 on
        a 200,001-point grid wide enough that the mass left outside is below ``exp(-50)``; the Gaussian
        coordinates have std ``beta**-0.5``. Used to show what an under- or over-dispersed sampler scores
        on sample-based metrics such as W2 (``recipes/w2_floor.py``).
        """
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
            raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        # Beyond |x| = half_width the log density is > 50 nats below its peak (x⁴ dominates there).
        half_width = max(4.0, (60.0 / beta) ** 0.25 + 1.0)
        grid = torch.linspace(-half_width, half_width, 200_001, dtype=torch.float64, device=self.device)
        log_p = beta * double_well_log_density(grid)
        p = torch.exp(log_p - log_p.max())
        cdf = torch.cat([p.new_zeros(1), torch.cumsum(0.5 * (p[1:] + p[:-1]), 0)])
        cdf = cdf / cdf[-1]
        u = torch.rand(n * self.n_wells, generator=generator, dtype=torch.float64, device=self.device)
        hi = torch.searchsorted(cdf, u).clamp(1, grid.numel() - 1)
        lo = hi - 1
        frac = (u - cdf[lo]) / (cdf[hi] - cdf[lo]).clamp_min(torch.finfo(torch.float64).tiny)
        x1 = (grid[lo] + frac * (grid[hi] - grid[lo])).reshape(n, self.n_wells).to(self.dtype)
        x2 = torch.randn(n, self.n_wells, generator=generator, device=self.device, dtype=self.dtype) / math.sqrt(beta)
        return torch.stack([x1, x2], dim=-1).reshape(n, self.dim)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, dim) exact samples."""
        x1 = self.sample_double_well(n * self.n_wells, generator).reshape(n, self.n_wells)
        x2 = torch.randn(n, self.n_wells, generator=generator, device=self.device, dtype=self.dtype)
        return torch.stack([x1, x2], dim=-1).reshape(n, self.dim)
