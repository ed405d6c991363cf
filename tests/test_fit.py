"""posterior.fit on a linear-Gaussian decoder, where the posterior and log p(y) are exact."""

import importlib
import math

import pytest
import torch

import posterior
from posterior.constraints.likelihoods import GaussianObservation, Identity
from posterior.priors.vae import VAEDecoderPrior
from fit_settings import fit_args


def fit(*args, **settings):
    return posterior.fit(*args, **fit_args(**settings))

NOISE = 0.5


def _linear_problem(num_conditions=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    decoder = torch.nn.Linear(2, 3)
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.6, -1.0]]))
        decoder.bias.copy_(torch.tensor([0.2, -0.1, 0.3]))
    decoder.requires_grad_(False)
    z = torch.randn(num_conditions, 2, generator=g)
    y = decoder(z) + NOISE * torch.randn(num_conditions, 3, generator=g)
    return decoder, y


def _exact(decoder, y):
    w, b = decoder.weight.double(), decoder.bias.double()
    precision = torch.eye(2, dtype=torch.float64) + w.t() @ w / NOISE ** 2
    cov = torch.linalg.inv(precision)
    mean = (cov @ w.t() @ (y.double() - b).t() / NOISE ** 2).t()
    marginal = torch.distributions.MultivariateNormal(b, w @ w.t() + NOISE ** 2 * torch.eye(3, dtype=torch.float64))
    return mean, cov, marginal.log_prob(y.double())


@pytest.fixture(scope="module")
def trained():
    decoder, y = _linear_problem()
    model = fit(prior=VAEDecoderPrior(decoder, 2), reward=GaussianObservation(Identity(), NOISE),
                          conditions=y, objective="vargrad", iterations=600, batch_size=6, samples_per_condition=16,
                          steps=20, encoder="mlp", seed=0, progress=False, learn_variance=True)
    return model, decoder, y


def test_fit_recovers_linear_gaussian_posteriors(trained):
    model, decoder, y = trained
    mean, cov, log_py = _exact(decoder, y)
    samples = model.sample_latent(y, 4000, steps=20, generator=torch.Generator().manual_seed(1)).double()
    assert samples.shape == (6, 4000, 2)
    decoded = model.sample(y[:2], 3, steps=20, generator=torch.Generator().manual_seed(1))
    assert decoded.shape == (2, 3, 3)  # samples in the user's space: the decoder's outputs
    # fixed-variance policies carry an O(dt) bias on 20 steps; the learned variance removes it
    for i in range(6):
        torch.testing.assert_close(samples[i].mean(0), mean[i], atol=0.1, rtol=0)
        torch.testing.assert_close(torch.cov(samples[i].t()), cov, atol=0.03, rtol=0)
    est = model.log_z(y, num_samples=2000, steps=20, generator=torch.Generator().manual_seed(2))
    assert est["elbo"].shape == (6,)
    assert (est["elbo"] <= est["rw"] + 1e-6).all()
    torch.testing.assert_close(est["rw"].double(), log_py, atol=0.03, rtol=0)
    torch.testing.assert_close(est["elbo"].double(), log_py, atol=0.06, rtol=0)
    # one standard error per condition, consistent with its ESS, and the exact answer within four of them
    torch.testing.assert_close(est["rw_stderr"], torch.sqrt((1 / est["ess"] - 1) / 2000), rtol=1e-3, atol=1e-5)
    assert ((est["rw"].double() - log_py).abs() <= 4 * est["rw_stderr"].double() + 1e-3).all()


def test_save_and_load_give_identical_samples(trained, tmp_path):
    model, decoder, y = trained
    model.save_pretrained(tmp_path / "sampler")
    # a fresh process has the user's prior and likelihood, not the trained model's internals
    loaded = posterior.Posterior.from_pretrained(tmp_path / "sampler", prior=VAEDecoderPrior(decoder, 2),
                                                 reward=GaussianObservation(Identity(), NOISE))
    a = model.sample(y[:2], 5, steps=20, generator=torch.Generator().manual_seed(3))
    b = loaded.sample(y[:2], 5, steps=20, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    config = (tmp_path / "sampler" / "config.json").read_text()
    assert '"class": "Posterior"' in config and f'"version": "{posterior.__version__}"' in config
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        posterior.Posterior.from_pretrained(tmp_path / "missing", prior=VAEDecoderPrior(decoder, 2),
                                            reward=GaussianObservation(Identity(), NOISE))
    with pytest.raises(ValueError, match="trained with prior=a .*VAEDecoderPrior \\(latent_dim=2, dim=2\\).*pass the same prior"):
        posterior.Posterior.from_pretrained(tmp_path / "sampler", prior=None, reward=GaussianObservation(Identity(), NOISE))
    with pytest.raises(ValueError, match="trained with reward=a .*GaussianObservation"):
        posterior.Posterior.from_pretrained(tmp_path / "sampler", prior=VAEDecoderPrior(decoder, 2), reward=None)


def test_conditional_tb_resume_continues_the_same_run(tmp_path):
    decoder, y = _linear_problem(seed=1)
    kwargs = dict(prior=VAEDecoderPrior(decoder, 2), reward=GaussianObservation(Identity(), NOISE), conditions=y,
                  objective="tb", batch_size=3, samples_per_condition=4, steps=8, seed=5, progress=False,
                  explore=0.3, lr_decay_horizon=6, lr_decay_final=0.2)
    full = fit(iterations=8, **kwargs)

    class Crash(GaussianObservation):  # the process dies in the 6th iteration
        calls = 0

        def log_likelihood(self, x, obs):
            Crash.calls += 1
            if Crash.calls == 7:  # one validation call, then one per iteration
                raise KeyboardInterrupt
            return super().log_likelihood(x, obs)

    crashing = dict(kwargs, reward=Crash(Identity(), NOISE))
    with pytest.raises(KeyboardInterrupt):
        fit(iterations=8, checkpoint_dir=tmp_path, checkpoint_every=2, **crashing)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["iteration"] == 4
    resumed = fit(iterations=8, checkpoint_dir=tmp_path, resume=True, **crashing)  # the same reward class
    with pytest.raises(ValueError, match="belongs to another problem: .*reward="):
        fit(iterations=8, checkpoint_dir=tmp_path, resume=True, **kwargs)  # a GaussianObservation, not a Crash
    with pytest.raises(ValueError, match="belongs to another problem: conditions="):
        fit(iterations=8, checkpoint_dir=tmp_path, resume=True, **{**crashing, "conditions": y + 1.0})
    for (name, a), b in zip(full.network.state_dict().items(), resumed.network.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert resumed.training_history.loss == full.training_history.loss
    policy_group, log_z_group = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["optimizer"]["param_groups"]
    assert policy_group["lr"] == pytest.approx(0.2 * 1e-3) and log_z_group["lr"] == 0.1  # decayed; log Z's not


def test_fit_rejects_bad_input():
    decoder, y = _linear_problem()
    prior = VAEDecoderPrior(decoder, 2)
    with pytest.raises(ValueError, match=r"must return shape \(B,\) = \(2,\), got \(2, 1\)"):
        fit(prior=prior, reward=lambda x, obs: -((x - obs) ** 2).sum(-1, keepdim=True),
                      conditions=y, iterations=1, progress=False)
    with pytest.raises(ValueError, match="log_likelihood returned NaN for 2 of 2 inputs"):
        fit(prior=prior, reward=lambda x, obs: torch.full(x.shape[:1], float("nan")),
                      conditions=y, iterations=1, progress=False)
    with pytest.raises(ValueError, match="conditions must be a tensor or array of shape"):
        fit(prior=prior, reward=GaussianObservation(Identity(), NOISE), conditions=torch.zeros(5),
                      iterations=1, progress=False)
    with pytest.raises(ValueError, match="objective must be one of"):
        fit(prior=prior, reward=GaussianObservation(Identity(), NOISE), conditions=y, objective="dpo")
    with pytest.raises(ValueError, match="latent_dim is required"):
        fit(prior=decoder, reward=GaussianObservation(Identity(), NOISE), conditions=y, iterations=1)
    model = fit(prior=prior, reward=GaussianObservation(Identity(), NOISE), conditions=y,
                          iterations=1, batch_size=2, samples_per_condition=2, steps=4, progress=False)
    with pytest.raises(ValueError, match=r"y must have shape \(B, 3\)"):
        model.sample(torch.zeros(2, 4), 3, steps=4)


def test_conditional_losses_vanish_at_exact_posterior_sampler():
    """VarGrad groups and conditional TB: residuals are -log p(y) when p_F is exactly the posterior.

    With an identity decoder and noise variance equal to the prior's, the posterior of z given y is
    N(y / 2, I / 2); its Föllmer drift is linear, and the residual is ~ constant per condition.
    """
    from gaussian_cases import optimal_drift
    from posterior.paths.conditional_path import bind_conditions
    from posterior.core.grids import uniform_grid
    from posterior.objectives import VarGrad
    from posterior.samplers.sampler import DiffusionSampler
    from posterior.samplers.networks import PISPolicy
    from posterior.targets import LatentPosteriorReward

    reward = LatentPosteriorReward(VAEDecoderPrior(torch.nn.Identity(), 2), GaussianObservation(Identity(), 1.0))
    y = torch.tensor([[1.0, -1.0], [3.0, 0.5]], dtype=torch.float64).repeat_interleave(500, 0)
    sampler = DiffusionSampler(PISPolicy(2), sigma2=1.0).double()
    path = bind_conditions(reward, y, sampler.reference)
    n = 200
    times = uniform_grid(n, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros_like(y)
    states, drifts = [x], []
    for k in range(n):
        dt = float(times[k + 1] - times[k])
        u = optimal_drift(x, float(times[k]), y / 2, torch.full_like(y, 0.5), 1.0)
        x = x + u * dt + math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        states.append(x)
        drifts.append(u)
    states = torch.stack(states)
    from posterior.core.trajectories import Trajectories
    traj = Trajectories(times=times, states=states,
                        log_pf_steps=sampler.log_pf_steps(states, times, torch.stack(drifts), None),
                        log_q_steps=path.log_q_steps(states, times), log_reward=path.log_reward(states[-1]))
    log_py = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                                    2 * torch.eye(2, dtype=torch.float64)).log_prob(y[::500])
    residual = (traj.log_pf - traj.log_q).reshape(2, 500)
    torch.testing.assert_close(residual.mean(1), -log_py, atol=0.03, rtol=0)
    assert float(VarGrad(group_size=500).loss(traj)) < 0.01
    assert float(VarGrad().loss(traj)) > 0.3  # pooling the two conditions would be wrong: 0.5 * 0.905^2


def test_fit_reports_to_a_logger():
    decoder, y = _linear_problem()
    seen = []
    fit(prior=VAEDecoderPrior(decoder, 2), reward=GaussianObservation(Identity(), NOISE), conditions=y,
                  iterations=6, batch_size=2, samples_per_condition=2, steps=4, progress=False,
                  log=lambda values, step: seen.append((step, values)), log_every=3)
    assert [step for step, _ in seen] == [3, 6]
    assert set(seen[0][1]) == {"loss", "log_z_batch", "seconds_per_iter"}


def test_fit_is_a_guest_it_leaves_global_rng_and_malloc_alone(monkeypatch):
    calls = []
    allocator = importlib.import_module("posterior.training.cpu_allocator")
    monkeypatch.setattr(allocator, "retain_freed_memory", lambda: calls.append(1) or True)
    decoder, y = _linear_problem()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(prior=VAEDecoderPrior(decoder, 2), reward=GaussianObservation(Identity(), NOISE), conditions=y,
        iterations=1, batch_size=2, samples_per_condition=2, steps=4, progress=False)
    assert torch.equal(torch.rand(3), expected)  # the user's global generator did not move
    assert calls == []  # no process-wide malloc setting


@pytest.mark.parametrize("objective", ["subtb", "fl-subtb", "pis"])
def test_fit_trains_with_every_objective(objective):
    decoder, y = _linear_problem()
    model = fit(prior=VAEDecoderPrior(decoder, 2), reward=GaussianObservation(Identity(), NOISE),
                          conditions=y, objective=objective, iterations=30, batch_size=3, samples_per_condition=4,
                          steps=8, progress=False, langevin=objective == "fl-subtb")
    losses = model.training_history.loss
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    est = model.log_z(y[:2], num_samples=64, steps=8)
    assert torch.isfinite(est["rw"]).all()


def _ring_diffusion_prior():
    """A 5-step DDPM prior on 2-D points whose denoiser is a ring mixture's exact score."""
    diffusers = pytest.importorskip("diffusers")
    from posterior.priors.diffusion import DiffusionPrior
    from posterior.priors.gaussian_mixture import MixtureDenoiser, ring_mixture

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    mixture = ring_mixture(4, radius=1.0, std=0.2)
    return DiffusionPrior(MixtureDenoiser(mixture, scheduler.alphas_cumprod).float(), scheduler, 5, (2,))


def test_fit_with_a_diffusion_prior_in_noise_space_and_in_data_space():
    from posterior.diffusion.diffusion_posterior import DiffusionPosterior

    prior = _ring_diffusion_prior()

    def likelihood(x, y):
        return -0.5 * ((x - y) ** 2).sum(-1) / 0.1

    y = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    noise = fit(prior=prior, reward=likelihood, conditions=y, iterations=3, batch_size=2,
                          samples_per_condition=4, steps=5, progress=False)
    z = noise.sample_latent(y, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 3, 2)  # noise space of the 2-D prior
    x = noise.sample(y, num_samples=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, prior.ddim_solve(z.reshape(6, 2)).reshape(2, 3, 2))  # decoded by the DDIM solve
    data = fit(prior=prior, reward=lambda x: -0.5 * ((x - 1.0) ** 2).sum(-1), space="data",
                         objective="rtb", iterations=2, batch_size=4, progress=False)
    assert isinstance(data, posterior.Posterior) and isinstance(data.network, DiffusionPosterior)
    assert len(data.training_history.loss) == 2 and data.sample(None, 5).shape == (5, 2)
    kl = fit(prior=prior, reward=lambda x: -0.5 * ((x - 1.0) ** 2).sum(-1), space="data",
                       objective="pis", iterations=2, batch_size=4, progress=False)
    assert None not in kl.training_history.log_z_batch and kl.training_history.log_z_learned == [None, None]
    learned = fit(prior=prior, reward=lambda x: -0.5 * ((x - 1.0) ** 2).sum(-1), space="data",
                            objective="pis", learn_variance=True, iterations=2, batch_size=4, progress=False)
    scales = learned.network.model.log_scale  # step variances learned per step and dimension, trained from 0
    assert scales.shape == (prior.num_steps, 2) and float(scales[0].detach().abs().max()) > 0
    with pytest.raises(ValueError, match="reparameterized paths: it takes no explore"):
        fit(prior=prior, reward=lambda x: -(x ** 2).sum(-1), space="data", objective="pis",
                      explore=0.5, iterations=1, progress=False)
    with pytest.raises(ValueError, match="objective for space='data' must be one of \\('rtb', 'vargrad', 'pis'\\)"):
        fit(prior=prior, reward=lambda x: -(x ** 2).sum(-1), space="data", objective="subtb",
                      iterations=1, progress=False)
    with pytest.raises(ValueError, match="'rtb' is trajectory balance against the prior"):
        fit(prior=prior, reward=lambda x: -(x ** 2).sum(-1), space="data", objective="tb", iterations=1)
    with pytest.raises(ValueError, match="final lr multiplier"):  # the decay reaches RTB's settings
        fit(prior=prior, reward=lambda x: -(x ** 2).sum(-1), space="data", iterations=1,
                      lr_decay_horizon=2, lr_decay_final=1.5, progress=False)
    with pytest.raises(ValueError, match="learned step variances .* not supported for a diffusion posterior amortized"):
        fit(prior=prior, reward=likelihood, conditions=y, space="data", objective="rtb", iterations=1,
            learn_variance=True, progress=False)
    with pytest.raises(ValueError, match="space='data' needs a posterior.priors.DiffusionPrior"):
        fit(prior=lambda z: z, latent_dim=2, reward=likelihood, conditions=y, space="data", progress=False)


def test_fit_in_data_space_refuses_noise_space_settings_and_resumes_the_same_run(tmp_path):
    prior = _ring_diffusion_prior()
    kwargs = dict(prior=prior, reward=lambda x: -0.5 * ((x - 1.0) ** 2).sum(-1), space="data", objective="rtb",
                  batch_size=4, seed=3, progress=False)
    with pytest.raises(ValueError, match="does not take sampler.langevin"):
        fit(iterations=1, langevin=True, **kwargs)
    with pytest.raises(ValueError, match=r"TrainConfig.steps: a posterior fine-tuned from a diffusion prior"):
        fit(iterations=1, steps=50, **kwargs)
    with pytest.raises(ValueError, match="does not take replay"):
        fit(iterations=1, replay=posterior.ReplayConfig(), **kwargs)
    with pytest.raises(ValueError, match="device cuda differs from the diffusion prior's device cpu"):
        fit(iterations=1, device="cuda", **kwargs)
    whole = fit(iterations=4, **kwargs)
    first = fit(iterations=2, checkpoint_dir=tmp_path, **kwargs)
    assert (tmp_path / "checkpoint.pt").exists() and len(first.training_history.loss) == 2
    resumed = fit(iterations=4, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert resumed.training_history.loss == whole.training_history.loss
    for a, b in zip(resumed.network.model.parameters(), whole.network.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    slow_log_z = fit(iterations=1, lr_flow=1e-6, log_z_init="zero", **kwargs).training_history.log_z_learned[0]
    fast_log_z = fit(iterations=1, log_z_init="zero", **kwargs).training_history.log_z_learned[0]
    assert abs(slow_log_z) < 1e-5 < abs(fast_log_z)  # lr_flow is log Z's learning rate


def test_fit_langevin_scale_is_per_dimension_or_shared(tmp_path):
    decoder, y = _linear_problem()
    kwargs = dict(prior=VAEDecoderPrior(decoder, 2), reward=GaussianObservation(Identity(), NOISE), conditions=y,
                  iterations=2, batch_size=2, samples_per_condition=2, steps=4, progress=False)
    for scale, width in (("per-dimension", 2), ("shared", 1)):
        model = fit(langevin=True, langevin_scale=scale, **kwargs)
        assert model.network.sampler.policy.langevin_scale(torch.zeros(3)).shape == (3, width)
    model.save_pretrained(tmp_path / "shared")
    loaded = posterior.Posterior.from_pretrained(tmp_path / "shared", prior=kwargs["prior"], reward=kwargs["reward"])
    assert loaded.network.sampler.policy.langevin_scale(torch.zeros(3)).shape == (3, 1)
    a = model.sample(y[:2], 5, steps=4, generator=torch.Generator().manual_seed(3))
    b = loaded.sample(y[:2], 5, steps=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="SamplerConfig.langevin_scale must be one of"):
        fit(langevin=True, langevin_scale="per-step", **kwargs)
    with pytest.raises(ValueError, match="set langevin=True"):
        fit(langevin_scale="shared", **kwargs)


@pytest.mark.parametrize("objective", ["vargrad", "tb"])
def test_conditional_replay_and_local_search_keep_each_sample_condition(objective):
    from posterior import ReplayConfig
    decoder, y = _linear_problem()
    model = fit(prior=VAEDecoderPrior(decoder, 2), reward=GaussianObservation(Identity(), NOISE),
                          conditions=y, objective=objective, iterations=12, batch_size=3, samples_per_condition=4,
                          steps=8, progress=False, seed=2,
                          replay=ReplayConfig(capacity=2000, local_search=True, ls_every=4, ls_steps=12, ls_burn_in=4))
    assert all(math.isfinite(v) for v in model.training_history.loss)
    replay = model.replay
    assert len(replay.buffer) == 6 * 3 * 4 and replay.ls_rounds == 3
    for buffer in (replay.buffer, replay.ls_buffer):
        n = len(buffer)
        states, log_r, conds = buffer.states[:n], buffer.log_rewards[:n], buffer.conditions[:n]
        # every stored log-reward is the target of the stored state under its own condition
        torch.testing.assert_close(model.network.path_for(conds).log_reward(states), log_r, rtol=1e-5, atol=1e-4)
        assert all(bool((c == y).all(-1).any()) for c in conds)  # conditions come from the training set


def test_fit_tb_log_z_batch_init_starts_at_the_first_batch_estimate():
    """Conditional TB: with log_z_init='batch' the first loss is the residuals' spread only (their
    batch mean is zeroed); with 'zero' it also holds the squared offset log p(y) - 0."""
    decoder, y = _linear_problem()
    kwargs = dict(prior=VAEDecoderPrior(decoder, 2), reward=GaussianObservation(Identity(), NOISE), conditions=y,
                  objective="tb", iterations=1, batch_size=3, samples_per_condition=4, steps=8, progress=False)
    cold = fit(log_z_init="zero", **kwargs).training_history.loss[0]
    warm = fit(**kwargs).training_history.loss[0]  # "batch" is the default
    assert warm < 0.5 * cold


@pytest.mark.parametrize("space", ["noise", "data"])
def test_fit_returns_the_weight_average_and_checkpoints_the_last_weights(tmp_path, space):
    decay = 0.5
    if space == "noise":
        decoder, y = _linear_problem(num_conditions=3)
        kwargs = dict(prior=VAEDecoderPrior(decoder, 2), reward=GaussianObservation(Identity(), NOISE), conditions=y,
                      batch_size=3, samples_per_condition=4, steps=5, encoder="mlp")
    else:
        kwargs = dict(prior=_ring_diffusion_prior(), reward=lambda x: -0.5 * ((x - 1.0) ** 2).sum(-1), space="data",
                      objective="rtb", batch_size=4)
    kwargs.update(iterations=3, seed=1, progress=False, checkpoint_dir=tmp_path)
    model = fit(ema_decay=decay, **kwargs)
    last = fit(**{**kwargs, "checkpoint_dir": tmp_path / "plain"})  # the same run without the average
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    trained = model.network.model if space == "data" else model.network
    last_trained = last.network.model if space == "data" else last.network
    returned = [p for p in trained.parameters() if p.requires_grad]
    lasts = [p for p in last_trained.parameters() if p.requires_grad]
    assert state["ema"]["count"] == 3 and len(state["ema"]["averaged"]) == len(returned)
    for averaged, got in zip(state["ema"]["averaged"], returned, strict=True):
        torch.testing.assert_close(got, averaged, rtol=0, atol=0)  # the model handed back holds the average
    saved = state["model"]
    for name, p in last_trained.named_parameters():  # the checkpoint keeps the last weights, for resuming
        if p.requires_grad:
            torch.testing.assert_close(saved[name], p.detach(), rtol=0, atol=0, msg=name)
    assert any(not torch.allclose(a, b) for a, b in zip(returned, lasts))
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        fit(ema_decay=1.5, **{**kwargs, "checkpoint_dir": None})


CHILD = """
import sys, time, torch
torch.set_num_threads({threads})  # the parent's: float sums in the same order, so the run is the same bit for bit
sys.path.insert(0, {tests!r})
from test_fit import _linear_problem, fit, NOISE
from posterior.constraints.likelihoods import GaussianObservation, Identity
from posterior.priors.vae import VAEDecoderPrior

decoder, y = _linear_problem(seed=1)

def slow(z):  # the same decoder, slowed so that the parent can kill the process mid-run
    time.sleep(0.02)
    return decoder(z)

fit(prior=VAEDecoderPrior(slow, 2), reward=GaussianObservation(Identity(), NOISE), conditions=y, objective="tb",
    iterations=12, batch_size=3, samples_per_condition=4, steps=6, seed=5, progress=False, explore=0.3,
    checkpoint_dir={folder!r}, checkpoint_every=1)
"""


def test_a_run_killed_with_sigkill_resumes_bit_for_bit(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from posterior.training import checkpoint

    decoder, y = _linear_problem(seed=1)
    kwargs = dict(prior=VAEDecoderPrior(decoder, 2), reward=GaussianObservation(Identity(), NOISE), conditions=y,
                  objective="tb", iterations=12, batch_size=3, samples_per_condition=4, steps=6, seed=5,
                  progress=False, explore=0.3, checkpoint_every=1)
    whole = fit(**kwargs)
    script = CHILD.format(tests=str(Path(__file__).parent), folder=str(tmp_path), threads=torch.get_num_threads())
    child = subprocess.Popen([sys.executable, "-c", script])
    ckpt, deadline = tmp_path / "checkpoint.pt", time.time() + 120
    while time.time() < deadline and child.poll() is None:
        if ckpt.exists():
            try:
                if checkpoint.load(ckpt)["iteration"] >= 3:
                    break
            except ValueError:  # (cannot happen: the write is atomic; a torn read would be refused)
                pass
        time.sleep(0.05)
    assert child.poll() is None, "the run ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    killed_at = checkpoint.load(ckpt)["iteration"]
    assert 3 <= killed_at < 12  # killed mid-run (a torn temporary file may remain; the next write removes it)
    resumed = fit(checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert not list(tmp_path.glob("*.tmp"))
    assert resumed.training_history.loss == whole.training_history.loss
    for (name, a), b in zip(whole.network.state_dict().items(), resumed.network.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
