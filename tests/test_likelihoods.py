"""Bernoulli and Gaussian observation likelihoods and the latent posterior reward."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from posterior.constraints.likelihoods import (BernoulliImageLikelihood, Downsample, GaussianObservation, Identity,
                                     Mask)
from posterior.priors.vae import MLPVAE, VAEDecoderPrior
from posterior.targets import LatentPosteriorReward


def test_bernoulli_matches_direct_formula():
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(4, 784, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    y = torch.rand(4, 784, generator=gen, dtype=torch.float64)
    lik = BernoulliImageLikelihood()
    expected = (y * p.log() + (1 - y) * (1 - p).log()).sum(-1)
    assert lik.log_likelihood(p, y).shape == (4,)
    assert torch.allclose(lik.log_likelihood(p, y), expected, rtol=1e-12, atol=1e-10)
    logits = torch.logit(p)
    assert torch.allclose(lik.log_likelihood_logits(logits, y), expected, rtol=1e-10, atol=1e-8)


def test_bernoulli_clamps_extreme_probabilities():
    lik = BernoulliImageLikelihood()
    p = torch.tensor([[0.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    value = lik.log_likelihood(p, y)
    assert bool(torch.isfinite(value).all())
    eps = 1e-5
    expected = 2 * math.log(eps) + 2 * math.log(1 - eps)
    assert float(value) == pytest.approx(expected, rel=1e-12)
    logits = torch.tensor([[-1e4, 1e4, -1e4, 1e4]], dtype=torch.float64)
    assert float(lik.log_likelihood_logits(logits, y)) == pytest.approx(expected, rel=1e-9)
    # float32 saturation also stays finite.
    assert bool(torch.isfinite(lik.log_likelihood(p.float(), y.float())).all())


def test_bernoulli_shape_errors_name_argument():
    lik = BernoulliImageLikelihood()
    with pytest.raises(ValueError, match="y must have the shape of probs"):
        lik.log_likelihood(torch.rand(2, 784), torch.rand(2, 783))
    with pytest.raises(ValueError, match=r"probs must have shape \(B, P\)"):
        lik.log_likelihood(torch.rand(784), torch.rand(784))


def _normal_sum(mean, y, std, keep=None):
    lp = Normal(mean, std).log_prob(y)
    if keep is not None:
        lp = lp * keep
    return lp.reshape(lp.shape[0], -1).sum(-1)


def test_gaussian_identity():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    obs = GaussianObservation(Identity(), noise_std=0.3)
    assert torch.allclose(obs.log_likelihood(x, y), _normal_sum(x, y, 0.3), rtol=1e-12)


def test_gaussian_mask_sums_only_observed():
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(1, 6, 6, generator=gen) > 0.5
    x = torch.randn(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    obs = GaussianObservation(Mask(mask), noise_std=0.5)
    expected = _normal_sum(x, y, 0.5, mask.double())
    assert torch.allclose(obs.log_likelihood(x, y), expected, rtol=1e-12)
    # Unobserved entries of y are ignored, even when non-finite.
    y2 = y.clone()
    y2[:, ~mask] = float("inf")
    assert torch.allclose(obs.log_likelihood(x, y2), expected, rtol=1e-12)
    # A 0/1 float mask is accepted.
    assert torch.allclose(GaussianObservation(Mask(mask.double()), 0.5).log_likelihood(x, y), expected)
    with pytest.raises(ValueError, match=r"x must have shape \(B, \*mask.shape\) = \(B, 1, 6, 6\)"):
        obs.log_likelihood(x.reshape(4, 36), y.reshape(4, 36))


def test_gaussian_downsample_images_and_flattened():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.rand(2, 1, 7, 7, generator=gen, dtype=torch.float64)
    pooled = x.reshape(2, 1, 7, 4, 7, 4).mean(dim=(3, 5))
    obs = GaussianObservation(Downsample(4), noise_std=0.1)
    expected = _normal_sum(pooled, y, 0.1)
    assert torch.allclose(obs.log_likelihood(x, y), expected, rtol=1e-12)
    flat = GaussianObservation(Downsample(4, image_shape=(1, 28, 28)), noise_std=0.1)
    assert flat.operator(x.reshape(2, 784)).shape == (2, 49)
    assert torch.allclose(flat.log_likelihood(x.reshape(2, 784), y.reshape(2, 49)), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="y must have the shape of A"):
        obs.log_likelihood(x, y.reshape(2, 49))
    with pytest.raises(ValueError, match="not divisible by factor 3"):
        obs_3 = GaussianObservation(Downsample(3), 0.1)
        obs_3.log_likelihood(x, y)
    with pytest.raises(ValueError, match=r"x must have shape \(B, prod\(image_shape\)\) = \(B, 784\)"):
        flat.log_likelihood(x.reshape(2, 784)[:, :700], y)


def test_gaussian_sample_observation_and_validation():
    obs = GaussianObservation(Identity(), noise_std=0.2)
    x = torch.zeros(1000, 3)
    y = obs.sample_observation(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and abs(float(y.std()) - 0.2) < 0.02
    with pytest.raises(ValueError, match="noise_std"):
        GaussianObservation(Identity(), noise_std=0.0)


def _reward(dtype=torch.float64):
    torch.manual_seed(0)
    vae = MLPVAE(input_dim=16, hidden_dim=8, latent_dim=3).to(dtype)
    return LatentPosteriorReward(VAEDecoderPrior(vae), BernoulliImageLikelihood())


def test_latent_reward_value_and_gradient():
    reward = _reward()
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = torch.rand(5, 16, generator=gen, dtype=torch.float64)
    value = reward.log_reward(z, y)
    probs = reward.prior.decode(z)
    expected = Normal(0.0, 1.0).log_prob(z).sum(-1) + BernoulliImageLikelihood().log_likelihood(probs, y)
    assert reward.dim == 3 and value.shape == (5,)
    assert torch.allclose(value, expected, rtol=1e-12)
    grad = reward.grad_log_reward(z, y)
    zg = z.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(reward.log_reward(zg, y).sum(), zg)
    assert not grad.requires_grad and grad.shape == z.shape
    assert torch.allclose(grad, auto, rtol=1e-12, atol=1e-12)
    # Finite differences agree with the gradient.
    h = 1e-6
    fd = torch.stack([(reward.log_reward(z + h * e, y) - reward.log_reward(z - h * e, y)) / (2 * h)
                      for e in torch.eye(3, dtype=torch.float64)], -1)
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-6)
    # Works under no_grad too (grad_log_reward enables grad itself).
    with torch.no_grad():
        assert torch.allclose(reward.grad_log_reward(z, y), grad)


def test_latent_reward_validates_condition():
    reward = _reward()
    z = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"y must be a tensor of shape \(B, \*cond_shape\) with B = z.shape\[0\] = 4"):
        reward.log_reward(z, torch.rand(3, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="z must have shape"):
        reward.log_reward(torch.zeros(4, 2, dtype=torch.float64), torch.rand(4, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="y must have the shape of probs"):
        reward.log_reward(z, torch.rand(4, 15, dtype=torch.float64))


def test_latent_reward_with_gaussian_inpainting():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(2, 9), nn.Tanh()).double()
    prior = VAEDecoderPrior(decoder, latent_dim=2)
    mask = torch.zeros(9, dtype=torch.bool)
    mask[:4] = True
    reward = LatentPosteriorReward(prior, GaussianObservation(Mask(mask), noise_std=0.1))
    z = torch.randn(3, 2, dtype=torch.float64)
    y = torch.randn(3, 9, dtype=torch.float64)
    x = decoder(z)
    expected = Normal(0.0, 1.0).log_prob(z).sum(-1) + Normal(x[:, :4], 0.1).log_prob(y[:, :4]).sum(-1)
    assert torch.allclose(reward.log_reward(z, y), expected, rtol=1e-12)
