"""Learned step variances of a diffusion posterior: the prior samples and scores with
var_k * exp(s_k), a fresh wrapper is the prior, and bad arguments are refused. (The pathwise KL,
per-step accumulation and training to the exact Gaussian posterior with learned variances are in
test_pathwise_kl.py and test_diffusion_prior.py.)"""

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from posterior.diffusion.diffusion_posterior import DiffusionPosterior, DiffusionPriorPath  # noqa: E402
from posterior.diffusion.guided_denoiser import GuidedDenoiser  # noqa: E402
from posterior.diffusion.learned_variance import LearnedVarianceDenoiser  # noqa: E402
from posterior.priors.diffusion import DiffusionPrior  # noqa: E402
from test_diffusion_prior import TinyDenoiser  # noqa: E402


def _prior(steps=6):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    return DiffusionPrior(TinyDenoiser(), scheduler, steps, (3,)).double()


def _scaled(prior, per_dimension=True, seed=0):
    model = LearnedVarianceDenoiser(prior.posterior_copy(), prior, per_dimension=per_dimension).double()
    with torch.no_grad():
        model.log_scale.copy_(0.5 * torch.randn(model.log_scale.shape, generator=torch.Generator().manual_seed(seed)))
    return model


def test_a_fresh_wrapper_is_the_prior():
    prior = _prior()
    model = LearnedVarianceDenoiser(prior.posterior_copy(), prior).double()
    states = prior.sample(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(prior.log_prob_steps(states, model=model), prior.log_prob_steps(states),
                               rtol=0, atol=1e-12)
    again = prior.sample(32, generator=torch.Generator().manual_seed(0), model=model, dtype=torch.float64)
    torch.testing.assert_close(again, states, rtol=0, atol=1e-12)


@pytest.mark.parametrize("per_dimension", [True, False])
def test_log_densities_are_the_scaled_gaussians_and_sampling_draws_from_them(per_dimension):
    prior = _prior()
    model = _scaled(prior, per_dimension)
    assert model.log_scale.shape == ((6, 3) if per_dimension else (6, 1))
    states, log_probs = prior.sample(4000, generator=torch.Generator().manual_seed(1), model=model,
                                     dtype=torch.float64, return_log_probs=True)
    rows = prior.log_prob_steps(states, model=model)
    torch.testing.assert_close(rows, log_probs, rtol=1e-12, atol=1e-10)
    with torch.no_grad():
        for k in range(prior.num_steps):
            mean = prior.step_mean(states[k], k, model)
            variance = prior.step_var[k] * model.log_scale[k].exp().expand(3)
            direct = torch.distributions.Normal(mean, variance.sqrt()).log_prob(states[k + 1]).sum(-1)
            if k == 0:
                direct = direct + torch.distributions.Normal(0.0, 1.0).log_prob(states[0]).sum(-1)
            torch.testing.assert_close(rows[k], direct, rtol=1e-10, atol=1e-10)
            # the draws have that variance: standardized residuals are N(0, 1) per dimension
            z = (states[k + 1] - mean) / variance.sqrt()
            assert float((z.var(0) - 1).abs().max()) < 0.08 and float(z.mean(0).abs().max()) < 0.06


def test_exploration_adds_to_the_learned_variance_and_scores_under_the_unexplored_one():
    prior = _prior()
    model = _scaled(prior)
    states, log_probs = prior.sample(4000, generator=torch.Generator().manual_seed(2), model=model,
                                     dtype=torch.float64, explore=0.3, return_log_probs=True)
    torch.testing.assert_close(prior.log_prob_steps(states, model=model), log_probs, rtol=1e-12, atol=1e-10)
    with torch.no_grad():
        k = 2
        spread = (states[k + 1] - prior.step_mean(states[k], k, model)).var(0)
    expected = prior.step_var[k] * model.log_scale[k].detach().exp() + 0.3
    torch.testing.assert_close(spread, expected, rtol=0.08, atol=0)


def test_the_posterior_scores_its_learned_variances_and_frozen_steps_keep_the_priors():
    prior = _prior()
    model = _scaled(prior)
    posterior = DiffusionPosterior(prior, model, frozen_final_steps=2)
    path = DiffusionPriorPath(prior, lambda x: -x.square().sum(-1))
    traj = posterior.trajectories(2000, path, generator=torch.Generator().manual_seed(3), dtype=torch.float64,
                                  track_gradients=False)
    # frozen steps: the prior's means and variances, so they cancel in the log-ratio
    torch.testing.assert_close(traj.log_pf_steps[4:], traj.log_q_steps[4:], rtol=0, atol=0)
    z = (traj.states[5] - prior.step_mean(traj.states[4], 4)) / prior.step_var[4].sqrt()
    assert abs(float(z.var()) - 1) < 0.08
    # trained steps: the learned ones (the log-ratio at a shrunk/grown variance is not zero)
    assert float((traj.log_pf_steps[:4] - traj.log_q_steps[:4]).abs().mean()) > 0.05


def test_clamped_scales_and_refusals():
    prior = _prior()
    model = LearnedVarianceDenoiser(prior.posterior_copy(), prior, max_abs_log_scale=2.0).double()
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    torch.testing.assert_close(prior.step_variance(1, model), prior.step_var[1] * math.exp(2.0) * torch.ones(3, dtype=torch.float64))
    assert prior.step_variance(1, prior.denoiser) is None
    with pytest.raises(ValueError, match="GuidedDenoiser"):
        LearnedVarianceDenoiser(GuidedDenoiser(prior.posterior_copy(), prior, lambda x: -x.square().sum(-1)), prior)
    with pytest.raises(ValueError, match="max_abs_log_scale"):
        LearnedVarianceDenoiser(prior.posterior_copy(), prior, max_abs_log_scale=0.0)
