import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from posterior.diffusion.diffusion_posterior import DiffusionPosterior, DiffusionPriorPath  # noqa: E402
from posterior.evaluation.posterior_resampling import resample_posterior  # noqa: E402
from posterior.priors.diffusion import DiffusionPrior  # noqa: E402
from posterior.priors.gaussian_mixture import MixtureDenoiser, ring_mixture  # noqa: E402
from test_path_kl import ShiftedEpsilon  # noqa: E402


def _mixture_case(steps: int = 50):
    """A diffusion prior with the exact score of a 4-component ring mixture and a reward constant on
    each component's region: the posterior's component weights are w_j c_j^beta / sum_i w_i c_i^beta."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    mixture = ring_mixture(4, radius=1.0, std=0.15, weights=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    prior = DiffusionPrior(MixtureDenoiser(mixture, scheduler.alphas_cumprod), scheduler, steps, (2,)).double()
    reward = torch.tensor([2.0, 1.0, 1.0, 0.5], dtype=torch.float64)  # posterior weights 0.4 0.2 0.3 0.1
    path = DiffusionPriorPath(prior, lambda x: reward.log()[mixture.component_of(x)], beta=2.0)
    exact = mixture.weights.double() * reward**2
    return prior, mixture, path, exact


def _shares(mixture, x):
    return torch.bincount(mixture.component_of(x), minlength=4).double() / x.shape[0]


def test_resampling_a_biased_posterior_recovers_the_exact_component_weights_and_log_z():
    prior, mixture, path, exact = _mixture_case()
    # a proposal whose every step's mean is pushed off: its own component shares are far from exact
    proposal = DiffusionPosterior(prior, ShiftedEpsilon(prior.denoiser, torch.tensor([-0.1, 0.075], dtype=torch.float64)))
    own = proposal.trajectories(20_000, path, generator=torch.Generator().manual_seed(0), track_gradients=False)
    target = exact / exact.sum()
    assert float((_shares(mixture, own.samples) - target).abs().max()) > 0.1
    result = resample_posterior(proposal, path, 20_000, proposals=20_000, chunk=5000,
                                generator=torch.Generator().manual_seed(1))
    assert result.samples.shape == (20_000, 2) and result.proposals == 20_000
    assert 0.02 < result.ess_share < 0.9 and 1 < result.distinct <= 20_000
    torch.testing.assert_close(_shares(mixture, result.samples), target, atol=0.02, rtol=0)
    assert result.log_z == pytest.approx(math.log(float(exact.sum())), abs=0.05)


def test_resampling_the_prior_is_sir_on_rewards():
    prior, mixture, path, exact = _mixture_case()
    result = resample_posterior(DiffusionPosterior(prior), path, 5, proposals=4000, chunk=1000,
                                generator=torch.Generator().manual_seed(2))
    # with q = p the weights are r^beta: log Z is log mean r^beta and the ESS is that of the rewards
    reward = (exact / mixture.weights.double()).sqrt()
    expected_ess = float((mixture.weights.double() * reward**2).sum() ** 2
                         / (mixture.weights.double() * reward**4).sum())
    assert result.ess_share == pytest.approx(expected_ess, abs=0.03)
    assert result.log_z == pytest.approx(math.log(float(exact.sum())), abs=0.06)


def test_zero_rewards_are_never_drawn_and_bad_input_is_named():
    prior, mixture, _, _ = _mixture_case()
    only_first = DiffusionPriorPath(prior, lambda x: torch.where(mixture.component_of(x) == 0, 0.0, -math.inf).double())
    result = resample_posterior(DiffusionPosterior(prior), only_first, 500, proposals=2000, chunk=1000,
                                generator=torch.Generator().manual_seed(3))
    assert bool((mixture.component_of(result.samples) == 0).all())
    assert result.log_z == pytest.approx(math.log(0.1), abs=0.1)
    nothing = DiffusionPriorPath(prior, lambda x: torch.full(x.shape[:1], -math.inf, dtype=x.dtype))
    with pytest.raises(ValueError, match="zero weight"):
        resample_posterior(DiffusionPosterior(prior), nothing, 5, proposals=10)
    nan = DiffusionPriorPath(prior, lambda x: torch.full(x.shape[:1], math.nan, dtype=x.dtype))
    with pytest.raises(ValueError, match="NaN"):
        resample_posterior(DiffusionPosterior(prior), nan, 5, proposals=10)
    for name, kwargs in (("num_samples", {"num_samples": 0, "proposals": 4}),
                         ("proposals", {"num_samples": 2, "proposals": 0})):
        with pytest.raises(ValueError, match=name):
            resample_posterior(DiffusionPosterior(prior), only_first, **kwargs)
