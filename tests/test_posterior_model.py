"""The one posterior type: every kind `fit` returns samples, estimates log Z and round-trips through
save_pretrained / from_pretrained with the user's own prior and reward."""

import json

import pytest
import torch

import posterior
from posterior.constraints import GaussianTarget
from posterior.samplers.config import SamplerConfig
from posterior.training.config import TrainConfig

diffusers = pytest.importorskip("diffusers")


def _ring_prior():
    from posterior.priors.diffusion import DiffusionPrior
    from posterior.priors.gaussian_mixture import MixtureDenoiser, ring_mixture

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    mixture = ring_mixture(4, radius=1.0, std=0.2)
    return DiffusionPrior(MixtureDenoiser(mixture, scheduler.alphas_cumprod).float(), scheduler, 5, (2,))


def _unet_prior(seed=0):
    from posterior.priors.ddpm_training import small_unet
    from posterior.priors.diffusion import DiffusionPrior

    torch.manual_seed(seed)
    unet = small_unet(8, widths=(8, 8))
    return DiffusionPrior(unet, diffusers.DDPMScheduler(num_train_timesteps=1000), 4, (1, 8, 8))


def _same_samples(a, b, y=None, n=5, **kwargs):
    first = a.sample(y, n, generator=torch.Generator().manual_seed(7), **kwargs)
    second = b.sample(y, n, generator=torch.Generator().manual_seed(7), **kwargs)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    return first


def test_a_boltzmann_posterior_round_trips(tmp_path):
    target = GaussianTarget(mean=torch.tensor([1.0, -1.0]), std=torch.tensor([0.5, 1.0]))
    trained = posterior.fit(reward=target, objective="tb", config=TrainConfig(iterations=3, batch_size=16, steps=4),
                            progress=False)
    assert trained.kind == "sampler" and not trained.conditional
    trained.save_pretrained(tmp_path)
    loaded = posterior.Posterior.from_pretrained(tmp_path, reward=target)
    samples = _same_samples(trained, loaded, steps=4)
    assert samples.shape == (5, 2)
    estimate = loaded.log_z(num_samples=32, steps=4)
    assert estimate["elbo"].shape == () and float(estimate["elbo"]) <= float(estimate["rw"]) + 1e-6
    with pytest.raises(ValueError, match="this posterior is unconditional: pass y=None"):
        loaded.sample(torch.zeros(2, 2), 3)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        loaded.sample(None, 0)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2"):
        loaded.log_z(None, 1)


def test_a_data_space_posterior_round_trips_and_refuses_another_prior(tmp_path):
    prior = _ring_prior()

    def reward(x):
        return -0.5 * ((x - 1.0) ** 2).sum(-1)

    trained = posterior.fit(prior, reward, space="data", objective="rtb",
                            config=TrainConfig(iterations=2, batch_size=4), sampler=SamplerConfig(learn_variance=True),
                            progress=False)
    trained.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["kind"] == "diffusion" and config["prior"]["num_steps"] == 5 and config["network"]["learn_variance"]
    loaded = posterior.Posterior.from_pretrained(tmp_path, prior=prior, reward=reward)
    assert _same_samples(trained, loaded).shape == (5, 2)
    estimate = loaded.log_z(num_samples=16, generator=torch.Generator().manual_seed(0))
    assert set(estimate) == {"elbo", "rw", "rw_stderr", "ess"} and 0 < float(estimate["ess"]) <= 1
    with pytest.raises(ValueError, match="trained with prior=a .*DiffusionPrior .*num_steps=5.*pass the same prior"):
        posterior.Posterior.from_pretrained(tmp_path, prior=None, reward=reward)


def test_a_data_space_unet_posterior_saves_a_denoiser_diffusers_loads(tmp_path):
    prior = _unet_prior()

    def reward(x):
        return -x.flatten(1).square().mean(-1)

    trained = posterior.fit(prior, reward, space="data", objective="vargrad",
                            config=TrainConfig(iterations=1, batch_size=2), progress=False)
    trained.save_pretrained(tmp_path)
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "denoiser")
    for (name, a), b in zip(trained.network.model.state_dict().items(), unet.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    loaded = posterior.Posterior.from_pretrained(tmp_path, prior=_unet_prior(), reward=reward)
    assert _same_samples(trained, loaded, n=2).shape == (2, 1, 8, 8)


def test_sampling_a_data_space_posterior_calls_neither_the_reward_nor_extra_prior_steps(monkeypatch):
    prior = _unet_prior()  # the posterior is a copy of the UNet: the prior's runs only on frozen final steps
    calls = []

    def reward(x):
        calls.append(x.shape[0])
        return -x.flatten(1).square().mean(-1)

    trained = posterior.fit(prior, reward, space="data", objective="rtb", config=TrainConfig(iterations=1, batch_size=4),
                            progress=False)
    calls.clear()
    prior_calls = []
    forward = prior.denoiser.forward
    monkeypatch.setattr(prior.denoiser, "forward", lambda *a, **k: prior_calls.append(1) or forward(*a, **k))
    trained.sample(None, 8)
    assert calls == [] and len(prior_calls) == trained.network.frozen_final_steps  # only its own frozen steps


def test_from_pretrained_names_a_broken_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        posterior.Posterior.from_pretrained(tmp_path, reward=None)
    (tmp_path / "config.json").write_text(json.dumps({"class": "Other"}))
    with pytest.raises(ValueError, match="was not written by Posterior.save_pretrained"):
        posterior.Posterior.from_pretrained(tmp_path, reward=None)


def test_proposals_resample_each_sample_to_its_labels_exact_gaussian_posterior():
    """Gaussian prior N(0, v I), Gaussian observation of TABLE[label] with variance s^2: the exact posterior is
    N(TABLE[label] v / (v + s^2), v s^2 / (v + s^2) I). An untrained posterior (the prior) resampled from 64
    proposals per sample lands on it for every label; its own samples (K = 1) are the prior's."""
    from test_conditional_data_space import NOISE_VAR, TABLE, _gaussian_prior, _label_likelihood

    prior, v = _gaussian_prior()
    labels = torch.arange(3)
    untrained = posterior.fit(prior, _label_likelihood, labels, space="data", objective="rtb", progress=False,
                              config=TrainConfig(iterations=1, batch_size=3, samples_per_condition=2, lr=1e-12))
    mean, var = TABLE * v / (v + NOISE_VAR), v * NOISE_VAR / (v + NOISE_VAR)
    plain = untrained.sample(labels, 2000, generator=torch.Generator().manual_seed(0))
    assert float((plain.mean(1) - mean).abs().max()) > 0.4  # the prior is far from the first label's posterior
    assert float((plain.var(1) - var).abs().min()) > 0.03  # and wider than every label's (0.12 against 0.08)
    resampled = untrained.sample(labels, 2000, proposals=64, generator=torch.Generator().manual_seed(1))
    assert resampled.shape == (3, 2000, 2)
    # seeds 1-5: mean within 0.025, variance within 0.007; with 4 proposals the mean is 0.2 off
    torch.testing.assert_close(resampled.mean(1), mean, atol=0.04, rtol=0)
    torch.testing.assert_close(resampled.var(1), torch.full((3, 2), var), atol=0.015, rtol=0)
    assert all(torch.unique(resampled[i], dim=0).shape[0] == 2000 for i in range(3))  # no sample is a copy
    again = untrained.sample(labels, 2000, proposals=64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, resampled, rtol=0, atol=0)


def test_proposals_resample_a_boltzmann_sampler_to_its_target():
    """An untrained sampler of a density (its reference process, N(0, I) at the end; ESS 14% against the target)
    resampled from 256 proposals per sample has the target's mean and standard deviations; its own samples do
    not (with 16 proposals the mean is still 0.27 off)."""
    target = GaussianTarget(mean=torch.tensor([1.0, -1.0]), std=torch.tensor([0.5, 1.0]))
    untrained = posterior.fit(reward=target, objective="tb", progress=False,
                              config=TrainConfig(iterations=1, batch_size=4, steps=8, lr=1e-12))
    plain = untrained.sample(None, 4000, steps=8, generator=torch.Generator().manual_seed(0))
    assert float((plain.mean(0) - target.mean).abs().max()) > 0.5
    resampled = untrained.sample(None, 2000, steps=8, proposals=256, generator=torch.Generator().manual_seed(1))
    assert resampled.shape == (2000, 2)
    torch.testing.assert_close(resampled.mean(0), target.mean, atol=0.07, rtol=0)
    torch.testing.assert_close(resampled.std(0), torch.tensor([0.5, 1.0]), atol=0.05, rtol=0)
    chunked = untrained.sample_latent(None, 10, steps=8, proposals=4, max_trajectories=8)  # 2 samples at a time
    assert chunked.shape == (10, 2) and torch.unique(chunked, dim=0).shape[0] == 10


def test_proposals_never_keep_a_zero_density_and_name_bad_input():
    prior = _ring_prior()

    def right_half(x):
        return torch.where(x[:, 0] > 0, 0.0, -torch.inf)

    trained = posterior.fit(prior, right_half, space="data", objective="rtb",
                            config=TrainConfig(iterations=1, batch_size=4, lr=1e-12), progress=False)
    assert bool((trained.sample(None, 400, generator=torch.Generator().manual_seed(0))[:, 0] <= 0).any())
    kept = trained.sample(None, 400, proposals=16, generator=torch.Generator().manual_seed(0))
    assert kept.shape == (400, 2) and bool((kept[:, 0] > 0).all())
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="proposals must be an integer >= 1"):
            trained.sample(None, 4, proposals=bad)
    nowhere = posterior.fit(prior, lambda x: torch.full(x.shape[:1], -torch.inf), space="data", objective="rtb",
                            config=TrainConfig(iterations=1, batch_size=4, lr=1e-12), progress=False)
    with pytest.raises(ValueError, match="zero weight .* on every one of their 4 proposals: raise proposals"):
        nowhere.sample(None, 3, proposals=4)
