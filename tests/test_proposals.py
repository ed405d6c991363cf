"""Proposal-based samplers on a linear-Gaussian model, where p(z | y) and log p(y) are exact."""

import math

import pytest
import torch
from torch import nn

import posterior
from posterior.constraints.likelihoods import GaussianObservation, Identity
from posterior.priors.vae import MLPVAE, VAEDecoderPrior
from posterior.proposals import FixedGaussian, WhitenedTarget

NOISE = 0.5


def _problem(num_conditions=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    decoder = nn.Linear(2, 3)
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.6, -1.0]]))
        decoder.bias.copy_(torch.tensor([0.2, -0.1, 0.3]))
    decoder.requires_grad_(False)
    y = decoder(torch.randn(num_conditions, 2, generator=g)) + NOISE * torch.randn(num_conditions, 3, generator=g)
    return decoder, y


def _exact(decoder, y):
    """Posterior mean (N, 2), covariance (2, 2) and log p(y) (N,) in float64."""
    w, b = decoder.weight.double(), decoder.bias.double()
    cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w.t() @ w / NOISE ** 2)
    mean = (cov @ w.t() @ (y.double() - b).t() / NOISE ** 2).t()
    marginal = torch.distributions.MultivariateNormal(b, w @ w.t() + NOISE ** 2 * torch.eye(3, dtype=torch.float64))
    return mean, cov, marginal.log_prob(y.double())


class LinearGaussianProposal(nn.Module):
    """q(z | y) = N(M y + c, diag(s)^2): the exact posterior's mean map and marginal std, optionally off."""

    def __init__(self, decoder, mean_shift=0.0, std_scale=1.0):
        super().__init__()
        w, b = decoder.weight.double(), decoder.bias.double()
        cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w.t() @ w / NOISE ** 2)
        self.gain = (cov @ w.t() / NOISE ** 2).float()
        self.offset = (-(cov @ w.t() @ b) / NOISE ** 2).float() + mean_shift
        self.log_std = (0.5 * torch.diagonal(cov).log() + math.log(std_scale)).float()
        self.cov = cov

    def forward(self, y):
        return y @ self.gain.t() + self.offset, self.log_std.expand(y.shape[0], -1)


def _fit(decoder, y, proposal, iterations, **config):
    settings = dict(iterations=iterations, batch_size=4, samples_per_condition=16, steps=10, seed=0)
    settings.update(config)
    return posterior.fit(VAEDecoderPrior(decoder, 2), GaussianObservation(Identity(), NOISE), y, proposal=proposal,
                         config=posterior.TrainConfig(**settings),
                         sampler=posterior.SamplerConfig(encoder="mlp"), progress=False)


def test_the_untrained_sampler_is_the_proposal_and_an_exact_proposal_gives_log_p_y():
    decoder, y = _problem()
    _, cov, log_py = _exact(decoder, y)
    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=0.2)  # (the proposal is diagonal)
    # a diagonal proposal is exact when the posterior covariance is diagonal: make it so with an orthogonal decoder
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.8], [0.0, 0.0]]))
    y = decoder(torch.zeros(4, 2)) + torch.tensor([[0.3, -0.2, 0.1], [1.0, 0.5, -0.4], [-0.7, 0.2, 0.9], [0.0, 0.0, 0.0]])
    mean, cov, log_py = _exact(decoder, y)
    exact = LinearGaussianProposal(decoder)
    model = _fit(decoder, y, exact, iterations=1, lr=1e-12, lr_flow=1e-12)  # one step of size ~1e-12: untrained
    est = model.log_z(y, num_samples=256, steps=10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(est["elbo"].double(), log_py, atol=2e-4, rtol=0)  # every weight is p(y) exactly
    torch.testing.assert_close(est["rw"].double(), log_py, atol=2e-4, rtol=0)
    assert bool((est["ess"] > 0.999).all())
    z = model.sample_latent(y, 4000, steps=10, generator=torch.Generator().manual_seed(2)).double()
    for i in range(4):  # samples are reported in z, not in the whitened u
        torch.testing.assert_close(z[i].mean(0), mean[i], atol=0.05, rtol=0)
        torch.testing.assert_close(z[i].var(0), torch.diagonal(cov), atol=0.04, rtol=0)
    assert model.sample(y[:2], 3).shape == (2, 3, 3)  # decoded x


@pytest.mark.parametrize("objective", ["vargrad", "tb"])
def test_training_closes_the_gap_of_a_wrong_proposal(objective):
    decoder, y = _problem()
    _, _, log_py = _exact(decoder, y)
    wrong = LinearGaussianProposal(decoder, mean_shift=0.6, std_scale=1.6)
    untrained = _fit(decoder, y, wrong, iterations=1, lr=1e-12, lr_flow=1e-12)
    gap0 = log_py - untrained.log_z(y, 2000, steps=10, generator=torch.Generator().manual_seed(1))["elbo"].double()
    assert bool((gap0 > 0.2).all())  # the proposal's ELBO is well below log p(y)
    # a learned step variance removes the O(dt) bias a fixed-variance policy keeps on 10 steps (~0.08 here)
    model = posterior.fit(VAEDecoderPrior(decoder, 2), GaussianObservation(Identity(), NOISE), y, proposal=wrong,
                          objective=objective, progress=False,
                          sampler=posterior.SamplerConfig(encoder="mlp", learn_variance=True),
                          config=posterior.TrainConfig(iterations=400, batch_size=4, samples_per_condition=16, steps=10,
                                                       seed=0, lr=3e-3))
    est = model.log_z(y, 2000, steps=10, generator=torch.Generator().manual_seed(1))
    gap = log_py - est["elbo"].double()
    assert bool((gap.abs() < 0.05).all()), (gap0, gap)  # measured 0.017-0.028 (vargrad)
    assert bool(((log_py - est["rw"].double()).abs() < 4 * est["rw_stderr"].double() + 0.01).all())


def test_proposals_are_checked_and_must_run_on_the_vp_reference():
    decoder, y = _problem()
    likelihood = GaussianObservation(Identity(), NOISE)

    def fit(proposal, **sampler):
        return posterior.fit(VAEDecoderPrior(decoder, 2), likelihood, y, proposal=proposal, progress=False,
                             sampler=posterior.SamplerConfig(**sampler),
                             config=posterior.TrainConfig(iterations=1, batch_size=2, samples_per_condition=2, steps=2))

    with pytest.raises(ValueError, match="proposal returned a non-finite log_std"):
        fit(lambda c: (torch.zeros(c.shape[0], 2), torch.full((c.shape[0], 2), -math.inf)))
    with pytest.raises(ValueError, match="proposal returned a non-finite mean"):
        fit(lambda c: (torch.full((c.shape[0], 2), math.nan), torch.zeros(c.shape[0], 2)))
    with pytest.raises(ValueError, match=r"proposal mean must have shape \(2, 2\)"):
        fit(lambda c: (torch.zeros(c.shape[0], 3), torch.zeros(c.shape[0], 3)))
    with pytest.raises(ValueError, match="must return a tuple \\(mean, log_std\\)"):
        fit(lambda c: torch.zeros(c.shape[0], 2))
    with pytest.raises(ValueError, match="a proposal needs the VP reference"):
        fit(LinearGaussianProposal(decoder), noising="brownian")


def test_a_vae_encoder_proposal_saves_and_loads_with_its_posterior(tmp_path):
    vae = MLPVAE(input_dim=16, hidden_dim=8, latent_dim=3)
    images = torch.rand(5, 16, generator=torch.Generator().manual_seed(0))
    from posterior.constraints import BernoulliImageLikelihood

    prior, likelihood = VAEDecoderPrior(vae), BernoulliImageLikelihood()
    model = posterior.fit(prior, likelihood, images, proposal=vae.proposal(), progress=False,
                          config=posterior.TrainConfig(iterations=2, batch_size=2, samples_per_condition=2, steps=3))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trained with proposal=a .*EncoderProposal \\(latent_dim=3\\).*pass the same proposal"):
        posterior.Posterior.from_pretrained(tmp_path, prior=prior, reward=likelihood)
    loaded = posterior.Posterior.from_pretrained(tmp_path, prior=prior, reward=likelihood, proposal=vae.proposal())
    a = model.sample_latent(images[:2], 4, steps=3, generator=torch.Generator().manual_seed(3))
    b = loaded.sample_latent(images[:2], 4, steps=3, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_fixed_gaussian_proposal_for_a_target_without_conditions():
    target = posterior.constraints.GaussianTarget(mean=torch.tensor([2.0, -1.0]), std=torch.tensor([0.5, 2.0]))
    exact = FixedGaussian(torch.tensor([2.0, -1.0]), torch.tensor([0.5, 2.0]).log())
    model = posterior.fit(reward=target, proposal=exact, objective="tb", progress=False,
                          config=posterior.TrainConfig(iterations=1, batch_size=8, steps=5, lr=1e-12, lr_flow=1e-12))
    est = model.log_z(num_samples=64, steps=5)
    assert abs(float(est["elbo"]) - target.log_z) < 1e-4 and abs(float(est["rw"]) - target.log_z) < 1e-4
    whitened = WhitenedTarget(target, exact)
    u = torch.randn(6, 2)
    z = whitened.to_z(u)
    grad_z = target.grad_log_reward(z) if hasattr(target, "grad_log_reward") else None
    if grad_z is not None:  # the score in u is std times the score in z
        torch.testing.assert_close(whitened.grad_log_reward(u), grad_z * torch.tensor([0.5, 2.0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("objective", ["subtb", "fl-subtb", "pis"])
def test_every_objective_trains_from_a_proposal(objective):
    decoder, y = _problem()
    wrong = LinearGaussianProposal(decoder, mean_shift=0.3)
    model = posterior.fit(VAEDecoderPrior(decoder, 2), GaussianObservation(Identity(), NOISE), y, proposal=wrong,
                          objective=objective, progress=False,
                          sampler=posterior.SamplerConfig(encoder="mlp", langevin=objective == "fl-subtb"),
                          config=posterior.TrainConfig(iterations=3, batch_size=2, samples_per_condition=4, steps=5))
    assert all(math.isfinite(v) for v in model.training_history.loss)
    assert torch.isfinite(model.log_z(y[:2], 16, steps=5)["rw"]).all()


def test_resampling_a_wrong_proposal_gives_each_conditions_exact_posterior_in_z():
    """An untrained sampler whose proposal is off (mean +0.6, std x1.6) samples the proposal; kept from 64
    proposals per sample by importance weight, its samples of z have each condition's exact posterior mean and
    covariance (sample_latent reports z, not the whitened state the sampler runs in)."""
    decoder, y = _problem()
    mean, cov, _ = _exact(decoder, y)
    wrong = LinearGaussianProposal(decoder, mean_shift=0.6, std_scale=1.6)
    model = _fit(decoder, y, wrong, iterations=1, lr=1e-12, lr_flow=1e-12)
    plain = model.sample_latent(y, 2000, steps=10, generator=torch.Generator().manual_seed(1)).double()
    assert bool(((plain.mean(1) - mean).abs() > 0.45).all())
    z = model.sample_latent(y, 2000, steps=10, proposals=64, generator=torch.Generator().manual_seed(2)).double()
    assert z.shape == (4, 2000, 2)
    for i in range(4):
        torch.testing.assert_close(z[i].mean(0), mean[i], atol=0.05, rtol=0)
        torch.testing.assert_close(torch.cov(z[i].T), cov, atol=0.02, rtol=0)  # seeds 2-5: within 0.032 and 0.009
    assert model.sample(y[:2], 3, proposals=4).shape == (2, 3, 3)  # decoded x
