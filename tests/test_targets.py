"""Tests for the benchmark targets in ``constraints``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from posterior.constraints import (
    TARGET_NAMES,
    BoltzmannTarget,
    Funnel,
    GaussianMixture25,
    GaussianTarget,
    LogGaussianCoxProcess,
    Manywell,
    make_target,
)
from posterior.constraints.manywell import BARRIER_HALF_WIDTH, double_well_log_density, proposal_log_density
from conftest import shared_pines_path

F64 = torch.float64
N_KS = 5000
P_ACCEPT = 1e-3  # a correct sampler must pass the KS test at this level
P_REJECT = 1e-6  # a wrong reference distribution must fail it at this level

PINES_PATH = shared_pines_path()
needs_pines = pytest.mark.skipif(not PINES_PATH.is_file(), reason=f"pines data not found at {PINES_PATH}")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_cov(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=gen(seed), dtype=F64)
    return a @ a.T / d + 0.5 * torch.eye(d, dtype=F64)


@pytest.fixture(scope="module")
def lgcp64() -> LogGaussianCoxProcess:
    if not PINES_PATH.is_file():
        pytest.skip(f"pines data not found at {PINES_PATH}")
    return LogGaussianCoxProcess(PINES_PATH, dtype=F64)


def small_targets() -> dict[str, BoltzmannTarget]:
    """Cheap targets (everything except the LGCP), default dtype."""
    return {
        "gaussian": GaussianTarget(torch.tensor([1.0, -2.0, 0.5]), cov=random_cov(3, 0).float(), log_scale=1.3),
        "gaussian_diag": GaussianTarget(torch.tensor([1.0, -2.0]), std=torch.tensor([0.5, 2.0])),
        "gmm25": GaussianMixture25(),
        "funnel": Funnel(10),
        "manywell": Manywell(8),
    }


SMALL_NAMES = list(small_targets())


def random_points(name: str, target: BoltzmannTarget, n: int, seed: int) -> torch.Tensor:
    """(n, dim) float64 test points in a region where the target is numerically sane."""
    g = gen(seed)
    if name == "gmm25":
        return 24.0 * torch.rand(n, 2, generator=g, dtype=F64) - 12.0
    if name == "funnel":
        x = torch.randn(n, target.dim, generator=g, dtype=F64)
        x[:, 0] = 4.0 * torch.rand(n, generator=g, dtype=F64) - 2.0
        return x
    return 2.0 * torch.randn(n, target.dim, generator=g, dtype=F64)


def autograd_grad(target: BoltzmannTarget, x: torch.Tensor) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(target.log_reward(xg).sum(), xg)
    return g


# --------------------------------------------------------------- Manywell log Z
def test_manywell_log_z_dim32() -> None:
    target = Manywell(32)
    assert target.log_z == pytest.approx(164.69567532, abs=1e-5)
    assert math.exp(target.log_z1) == pytest.approx(11784.50927, rel=1e-9)


def test_manywell_log_z_dim2_bruteforce() -> None:
    """2-D trapezoid over the target's own log_reward (independent of the 1-D quadrature)."""
    target = Manywell(2).to(F64)
    x1 = torch.linspace(-4.0, 4.0, 2001, dtype=F64)
    x2 = torch.linspace(-12.0, 12.0, 1201, dtype=F64)
    grid = torch.cartesian_prod(x1, x2)
    log_p = target.log_reward(grid).reshape(x1.numel(), x2.numel())
    shift = log_p.max()
    inner = torch.trapezoid(torch.exp(log_p - shift), x2, dim=1)
    log_z = float(torch.log(torch.trapezoid(inner, x1)) + shift)
    assert log_z == pytest.approx(target.log_z, abs=1e-8)
    assert Manywell(4).log_z == pytest.approx(2 * target.log_z, abs=1e-10)


@pytest.mark.parametrize("dim", [1, 3, 31, 0, -2])
def test_manywell_bad_dim(dim: int) -> None:
    with pytest.raises(ValueError, match="even"):
        Manywell(dim)


def test_manywell_envelope_valid() -> None:
    """exp(log f) <= M q on a fine grid, i.e. the rejection sampler is exact."""
    target = Manywell(2)
    grid = np.linspace(-10.0, 10.0, 400_001)
    log_ratio = double_well_log_density(grid) - proposal_log_density(grid)
    assert log_ratio.max() <= target.log_envelope
    # The margin is not absurdly loose (acceptance rate Z_1 / M stays reasonable).
    assert math.exp(target.log_z1 - target.log_envelope) > 0.2


# ------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", SMALL_NAMES)
def test_grad_matches_autograd(name: str) -> None:
    target = small_targets()[name].to(F64)
    x = random_points(name, target, 64, seed=1)
    g = target.grad_log_reward(x)
    assert g.shape == x.shape and g.dtype == F64
    torch.testing.assert_close(g, autograd_grad(target, x), rtol=1e-6, atol=1e-9)


def test_base_class_autograd_gradient() -> None:
    target = GaussianTarget(torch.zeros(4, dtype=F64), cov=random_cov(4, 3))
    x = torch.randn(16, 4, generator=gen(4), dtype=F64)
    torch.testing.assert_close(BoltzmannTarget.grad_log_reward(target, x), target.grad_log_reward(x))


def test_grad_lgcp(lgcp64: LogGaussianCoxProcess) -> None:
    x = lgcp64.mean + 0.7 * torch.randn(2, lgcp64.dim, generator=gen(5), dtype=F64)
    torch.testing.assert_close(lgcp64.grad_log_reward(x), autograd_grad(lgcp64, x), rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------- Gaussian target
def test_gaussian_log_reward_and_log_z() -> None:
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    cov = random_cov(3, 0)
    target = GaussianTarget(mean, cov=cov, log_scale=-0.7)
    assert target.log_z == -0.7
    x = torch.randn(10, 3, generator=gen(2), dtype=F64)
    ref = torch.distributions.MultivariateNormal(mean, cov).log_prob(x) - 0.7
    torch.testing.assert_close(target.log_reward(x), ref)


def test_gaussian_requires_exactly_one_scale() -> None:
    with pytest.raises(ValueError):
        GaussianTarget(torch.zeros(2))
    with pytest.raises(ValueError):
        GaussianTarget(torch.zeros(2), cov=torch.eye(2), std=torch.ones(2))


def test_gaussian_samples() -> None:
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    cov = random_cov(3, 0)
    target = GaussianTarget(mean, cov=cov)
    x = target.sample(N_KS, gen(6))
    u = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    proj = (x @ u).numpy()
    loc, scale = float(u @ mean), float(torch.sqrt(u @ cov @ u))
    assert stats.kstest(proj, stats.norm(loc, scale).cdf).pvalue > P_ACCEPT
    assert stats.kstest(proj, stats.norm(loc, 1.3 * scale).cdf).pvalue < P_REJECT


# ----------------------------------------------------------------------- GMM
def gmm_marginal_cdf(std: float):
    locs = np.array(GaussianMixture25.LOCS)
    return lambda t: stats.norm.cdf((np.asarray(t)[..., None] - locs) / std).mean(-1)


def test_gmm25_samples() -> None:
    target = GaussianMixture25().to(F64)
    x = target.sample(N_KS, gen(7)).numpy()
    good = gmm_marginal_cdf(math.sqrt(0.3))
    for j in range(2):
        assert stats.kstest(x[:, j], good).pvalue > P_ACCEPT
    assert stats.kstest(x[:, 0], gmm_marginal_cdf(1.5)).pvalue < P_REJECT
    # Offsets from the nearest grid mean are N(0, 0.3) per coordinate; a
    # sampler using 0.3 as the std instead of the variance must be rejected.
    resid = (x - 5.0 * np.round(x / 5.0)).ravel()
    assert stats.kstest(resid, stats.norm(0.0, math.sqrt(0.3)).cdf).pvalue > P_ACCEPT
    assert stats.kstest(resid, stats.norm(0.0, 0.3).cdf).pvalue < P_REJECT
    # Equal component weights: chi-square test on the 25 component counts.
    comp = np.round(x / 5.0).astype(int) + 2
    counts = np.bincount(comp[:, 0] * 5 + comp[:, 1], minlength=25)
    assert stats.chisquare(counts).pvalue > P_ACCEPT


def test_gmm25_normalization_quadrature() -> None:
    target = GaussianMixture25().to(F64)
    t = torch.linspace(-14.0, 14.0, 281, dtype=F64)
    log_p = target.log_reward(torch.cartesian_prod(t, t)).reshape(t.numel(), t.numel())
    z = torch.trapezoid(torch.trapezoid(torch.exp(log_p), t, dim=1), t)
    assert float(torch.log(z)) == pytest.approx(target.log_z, abs=1e-8)


def test_gmm25_normalization_importance_sampling() -> None:
    target = GaussianMixture25().to(F64)
    proposal = torch.distributions.Normal(torch.zeros(2, dtype=F64), 8.0)
    torch.manual_seed(8)
    x = proposal.sample((200_000,))
    log_w = target.log_reward(x) - proposal.log_prob(x).sum(-1)
    log_z = float(torch.logsumexp(log_w, 0) - math.log(x.shape[0]))
    assert abs(log_z - target.log_z) < 0.02


# -------------------------------------------------------------------- Funnel
def test_funnel_samples() -> None:
    target = Funnel(10).to(F64)
    x = target.sample(N_KS, gen(9))
    x0 = x[:, 0].numpy()
    assert stats.kstest(x0, stats.norm(0.0, 3.0).cdf).pvalue > P_ACCEPT
    assert stats.kstest(x0, stats.norm(0.0, 1.0).cdf).pvalue < P_REJECT
    # x_i | x_0 ~ N(0, e^{x_0}): standardized coordinates are N(0, 1).
    z = (x[:, 1:] * torch.exp(-0.5 * x[:, :1])).numpy()
    assert stats.kstest(z[:, 0], stats.norm().cdf).pvalue > P_ACCEPT
    assert stats.kstest(z[:, -1], stats.norm().cdf).pvalue > P_ACCEPT
    assert stats.kstest(x[:, 1:2].div(x[:, :1].exp()).numpy()[:, 0], stats.norm().cdf).pvalue < P_REJECT


@pytest.mark.parametrize("dim", [2, 3])
def test_funnel_normalization_quadrature(dim: int) -> None:
    """Trapezoid in (x_0, u) with x_i = e^{x_0/2} u_i (Jacobian e^{(d-1)x_0/2})."""
    target = Funnel(dim).to(F64)
    x0 = torch.linspace(-30.0, 30.0, 241, dtype=F64)
    u = torch.linspace(-9.0, 9.0, 37, dtype=F64)
    pts = torch.cartesian_prod(x0, *([u] * (dim - 1)))
    scale = torch.exp(0.5 * pts[:, :1])
    x = torch.cat([pts[:, :1], pts[:, 1:] * scale], dim=-1)
    log_integrand = target.log_reward(x) + 0.5 * (dim - 1) * pts[:, 0]
    vals = torch.exp(log_integrand).reshape(x0.numel(), *([u.numel()] * (dim - 1)))
    for _ in range(dim - 1):
        vals = torch.trapezoid(vals, u, dim=-1)
    log_z = float(torch.log(torch.trapezoid(vals, x0)))
    assert log_z == pytest.approx(target.log_z, abs=1e-7)


def test_funnel_bad_dim() -> None:
    with pytest.raises(ValueError):
        Funnel(1)


# ------------------------------------------------------------------ Manywell
def double_well_cdf(beta: float = 1.0):
    grid = np.linspace(-5.0, 5.0, 200_001)
    log_dens = beta * double_well_log_density(grid)
    dens = np.exp(log_dens - log_dens.max())
    cdf = integrate.cumulative_trapezoid(dens, grid, initial=0.0)
    cdf /= cdf[-1]
    return lambda t: np.interp(t, grid, cdf)


def test_manywell_samples() -> None:
    target = Manywell(32).to(F64)
    x = target.sample(N_KS, gen(10))
    assert x.shape == (N_KS, 32) and x.dtype == F64
    cdf = double_well_cdf()
    for j in (0, 30):  # first and last double-well coordinate
        assert stats.kstest(x[:, j].numpy(), cdf).pvalue > P_ACCEPT
    for j in (1, 31):  # Gaussian coordinates
        assert stats.kstest(x[:, j].numpy(), stats.norm().cdf).pvalue > P_ACCEPT
    # Power: the raw proposal (no rejection step) must be rejected.
    w, m, s = (0.2, 0.8), (-1.7, 1.7), 0.5
    proposal_cdf = lambda t: w[0] * stats.norm.cdf(t, m[0], s) + w[1] * stats.norm.cdf(t, m[1], s)  # noqa: E731
    assert stats.kstest(x[:, 0].numpy(), proposal_cdf).pvalue < P_REJECT


def test_manywell_shallow_well_mass_and_shares() -> None:
    target = Manywell(8).to(F64)
    assert target.shallow_mass == pytest.approx(double_well_cdf()(0.0), abs=1e-6)  # independent trapezoid CDF
    x = target.sample(N_KS, gen(16))
    shares = target.shallow_well_shares(x)
    assert shares.shape == (4,)
    binomial_std = math.sqrt(target.shallow_mass * (1 - target.shallow_mass) / N_KS)
    assert (shares - target.shallow_mass).abs().max() < 4 * binomial_std
    collapsed = x.clone()
    collapsed[:, 2] = collapsed[:, 2].abs()  # pair 1 loses its shallow well
    torch.testing.assert_close(target.shallow_well_shares(collapsed)[1], torch.zeros((), dtype=F64))
    with pytest.raises(ValueError, match="x"):
        target.shallow_well_shares(x[:0])


def test_manywell_well_spreads() -> None:
    """Exact stds by quadrature against an independent trapezoid on a grid; exact samples' spreads
    match them; a sampler too narrow in its Gaussian coordinates reads as such."""
    target = Manywell(8).to(F64)
    grid = np.linspace(-5.0, 5.0, 200_001)
    dens = np.exp(double_well_log_density(grid) - double_well_log_density(grid).max())
    for name, side in (("deep_well_std", grid >= 0), ("shallow_well_std", grid < 0)):
        w = dens * side
        mean = integrate.trapezoid(w * grid, grid) / integrate.trapezoid(w, grid)
        var = integrate.trapezoid(w * (grid - mean) ** 2, grid) / integrate.trapezoid(w, grid)
        assert target.exact_spreads[name] == pytest.approx(math.sqrt(var), rel=1e-5)
    assert 0.15 < target.exact_spreads["deep_well_std"] < 0.3  # a narrow well, not the whole coordinate
    between = np.abs(grid) < BARRIER_HALF_WIDTH
    barrier = integrate.trapezoid(dens * between, grid) / integrate.trapezoid(dens, grid)
    assert target.exact_spreads["barrier_share"] == pytest.approx(barrier, rel=1e-3)  # the mask's edge costs O(h)
    assert 1e-3 < barrier < 1e-2
    x = target.sample(N_KS, gen(17))
    spreads = target.well_spreads(x)
    barrier_share = spreads.pop("barrier_share")
    for name, value in spreads.items():
        assert value == pytest.approx(target.exact_spreads[name], rel=0.04), name
    n_values = N_KS * target.n_wells
    assert abs(barrier_share - barrier) < 4 * math.sqrt(barrier * (1 - barrier) / n_values)
    undecided = x.clone()
    undecided[: N_KS // 10, 0] = 0.1  # a tenth of pair 0's x1 stranded between the wells
    assert target.well_spreads(undecided)["barrier_share"] == pytest.approx(barrier_share + 0.1 / target.n_wells,
                                                                            abs=1e-3)
    narrow = x.clone()
    narrow[:, 1::2] *= 0.9
    assert target.well_spreads(narrow)["gaussian_std"] == pytest.approx(0.9 * spreads["gaussian_std"])
    assert target.well_spreads(x.abs())["shallow_well_std"] is None  # every shallow well lost
    with pytest.raises(ValueError, match="at least two samples"):
        target.well_spreads(x[:1])


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_manywell_tempered_samples(beta: float) -> None:
    target = Manywell(8).to(F64)
    x = target.sample_tempered(N_KS, beta, gen(12))
    assert x.shape == (N_KS, 8) and x.dtype == F64
    for j in (0, 6):  # double-well coordinates
        assert stats.kstest(x[:, j].numpy(), double_well_cdf(beta)).pvalue > P_ACCEPT
        assert stats.kstest(x[:, j].numpy(), double_well_cdf(1.0)).pvalue < P_REJECT  # power: β is applied
    for j in (1, 7):  # Gaussian coordinates, std β^(-1/2)
        assert stats.kstest(x[:, j].numpy(), stats.norm(0.0, beta**-0.5).cdf).pvalue > P_ACCEPT
        assert stats.kstest(x[:, j].numpy(), stats.norm().cdf).pvalue < P_REJECT


def test_manywell_tempered_at_beta_one_is_the_exact_sampler() -> None:
    target = Manywell(4)
    tempered, exact = target.sample_tempered(N_KS, 1.0, gen(13)), target.sample(N_KS, gen(14))
    for j in range(4):
        assert stats.ks_2samp(tempered[:, j].numpy(), exact[:, j].numpy()).pvalue > P_ACCEPT
    torch.testing.assert_close(target.sample_tempered(50, 1.5, gen(15)), target.sample_tempered(50, 1.5, gen(15)))


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf"), True])
def test_manywell_tempered_bad_beta(beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        Manywell(4).sample_tempered(10, beta)


def test_manywell_sampler_reproducible() -> None:
    target = Manywell(4)
    torch.testing.assert_close(target.sample(100, gen(11)), target.sample(100, gen(11)))


# ---------------------------------------------------------------------- LGCP
def test_lgcp_basic(lgcp64: LogGaussianCoxProcess) -> None:
    t = lgcp64
    assert t.dim == 1600 and t.log_z is None and not t.has_exact_samples
    assert float(t.counts.sum()) == 126.0
    # First pine (0.3006125, 0.89297642) lies in bin (12, 35) -> flat index 515.
    assert float(t.counts[12 * 40 + 35]) >= 1.0
    assert t.mean[0].item() == pytest.approx(math.log(126) - 1.91 / 2)
    x = torch.cat([t.mean[None], t.mean + torch.randn(3, t.dim, generator=gen(12), dtype=F64)])
    lr = t.log_reward(x)
    assert lr.shape == (4,) and bool(torch.isfinite(lr).all())
    with pytest.raises(NotImplementedError):
        t.sample(2)


def test_lgcp_prior_matches_dense_mvn(lgcp64: LogGaussianCoxProcess) -> None:
    t = lgcp64
    idx = torch.cartesian_prod(torch.arange(40.0, dtype=F64), torch.arange(40.0, dtype=F64))
    kernel = 1.91 * torch.exp(-torch.cdist(idx, idx) / (40.0 / 33.0))
    x = t.mean + torch.randn(2, t.dim, generator=gen(13), dtype=F64)
    ref = torch.distributions.MultivariateNormal(t.mean, covariance_matrix=kernel).log_prob(x)
    torch.testing.assert_close(t.log_prior(x), ref)


def test_lgcp_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pines_path"):
        LogGaussianCoxProcess(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="pines_path"):
        make_target("lgcp", pines_path=str(tmp_path / "nope.csv"))


# ------------------------------------------------------ validation and dtype
@pytest.mark.parametrize("name", SMALL_NAMES)
def test_shape_validation(name: str) -> None:
    target = small_targets()[name]
    d = target.dim
    for bad in (torch.zeros(d), torch.zeros(3, d + 1), torch.zeros(2, 3, d)):
        for fn in (target.log_reward, target.grad_log_reward):
            with pytest.raises(ValueError, match=rf"x.*\(B, dim\) = \(B, {d}\)"):
                fn(bad)


@pytest.mark.parametrize("name", SMALL_NAMES)
def test_dtype_conversion(name: str) -> None:
    target = small_targets()[name]
    x32 = random_points(name, target, 8, seed=14).float()
    assert target.log_reward(x32).dtype == torch.float32
    target = target.to(F64)
    assert target.dtype == F64
    x = x32.double()
    assert target.log_reward(x).dtype == F64
    assert target.grad_log_reward(x).dtype == F64
    assert target.has_exact_samples
    s = target.sample(16, gen(15))
    assert s.shape == (16, target.dim) and s.dtype == F64


def test_lgcp_dtype_conversion() -> None:
    if not PINES_PATH.is_file():
        pytest.skip(f"pines data not found at {PINES_PATH}")
    t = LogGaussianCoxProcess(PINES_PATH, grid=8)
    assert t.dim == 64 and float(t.counts.sum()) == 126.0
    t = t.to(F64)
    x = t.mean[None].repeat(2, 1)
    assert t.log_reward(x).dtype == F64 and t.grad_log_reward(x).dtype == F64


# -------------------------------------------------------------------- registry
def test_make_target_defaults() -> None:
    assert isinstance(make_target("gmm25"), GaussianMixture25)
    assert make_target("funnel").dim == 10
    assert make_target("manywell").dim == 32
    assert make_target("manywell", dim=4).dim == 4
    assert make_target("gmm25").reference_variance == 5.0
    with pytest.raises(ValueError) as err:
        make_target("banana")
    for name in TARGET_NAMES:
        assert name in str(err.value)


@needs_pines
def test_make_target_lgcp_path() -> None:
    t = make_target("lgcp", dim=64, pines_path=PINES_PATH)
    assert isinstance(t, LogGaussianCoxProcess) and t.grid == 8


def test_make_target_lgcp_needs_a_path() -> None:
    """The installed library has no default data location: the LGCP's pines CSV is always passed."""
    with pytest.raises(ValueError, match="pines_path"):
        make_target("lgcp", dim=64)


def test_gmm25_mode_shares_count_exact_samples_evenly():
    from posterior.constraints import GaussianMixture25
    target = GaussianMixture25()
    shares = target.mode_shares(target.sample(50_000, generator=torch.Generator().manual_seed(0)))
    assert shares.shape == (25,) and abs(float(shares.sum()) - 1) < 1e-6
    assert float((shares - 0.04).abs().max()) < 0.006
    one_mode = target.means[7] + 0.1 * torch.randn(100, 2, generator=torch.Generator().manual_seed(1))
    assert int((target.mode_shares(one_mode) >= 0.01).sum()) == 1
