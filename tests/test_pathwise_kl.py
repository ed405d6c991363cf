"""The pathwise (reparameterized) reverse KL of a diffusion posterior: its per-path log-ratio is the
RTB residual, its loss is KL - log Z in expectation, and its gradient is the KL's gradient (the
expected VarGrad gradient, an independent estimator of the same quantity)."""

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from posterior.diffusion.diffusion_posterior import DiffusionPosterior, DiffusionPriorPath  # noqa: E402
from posterior.diffusion.guided_denoiser import GuidedDenoiser  # noqa: E402
from posterior.diffusion.learned_variance import LearnedVarianceDenoiser  # noqa: E402
from posterior.objectives import PathIntegral, VarGrad  # noqa: E402
from posterior.objectives.pathwise_kl import pathwise_kl  # noqa: E402
from posterior.training.config import TrainConfig  # noqa: E402
from posterior.training.engine import Trainer  # noqa: E402
from posterior.training.replay import ReplayConfig  # noqa: E402
from posterior.priors.diffusion import DiffusionPrior  # noqa: E402
from posterior.priors.gaussian_mixture import GaussianMixture, MixtureDenoiser  # noqa: E402
from posterior.diffusion.residual_denoiser import ResidualDenoiser  # noqa: E402
from test_diffusion_prior import _mixture_prior  # noqa: E402


def _shifted_posterior(frozen=0, steps=8, shift=0.02, learned_variance=False):
    """The exact denoiser of a 2-D ring mixture as the prior, and a posterior whose residual
    correction of it has nonzero weights (and, with ``learned_variance``, step variances scaled by
    exp(s) with s nonzero, per step and dimension)."""
    prior, _ = _mixture_prior(steps)
    torch.manual_seed(0)
    model = ResidualDenoiser(prior.denoiser, 2, hidden=16).double()
    with torch.no_grad():
        for p in model.correction.parameters():
            p.add_(shift)
    if learned_variance:
        model = LearnedVarianceDenoiser(model, prior).double()
        with torch.no_grad():
            model.log_scale.copy_(0.3 * torch.randn(model.log_scale.shape))
    posterior = DiffusionPosterior(prior, model, frozen_final_steps=frozen)
    path = DiffusionPriorPath(prior, lambda x: -(x - 0.5).square().sum(-1), beta=2.0)
    return prior, posterior, path


@pytest.mark.parametrize("frozen, learned_variance", [(0, False), (2, False), (2, True)])
def test_log_ratio_is_the_rtb_residual_and_the_loss_is_its_mean_without_the_noise_term(frozen, learned_variance):
    prior, posterior, path = _shifted_posterior(frozen, learned_variance=learned_variance)
    batch = pathwise_kl(posterior, path, 4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert batch.states.shape == (9, 4000, 2) and batch.log_ratio.shape == (4000,)
    # the same paths scored by the posterior and the prior: log p_F - log Q, path by path
    traj = posterior.score(batch.states, path, track_gradients=False)
    torch.testing.assert_close(batch.log_ratio, traj.log_pf - traj.log_q, rtol=1e-10, atol=1e-9)
    # the paths are the posterior's own: the means of the trained steps are the posterior model's
    for k in range(prior.num_steps):
        with torch.no_grad():
            mean = prior.step_mean(batch.states[k], k, posterior.step_model(k))
        variance = prior.step_variance(k, posterior.step_model(k))
        noise = (batch.states[k + 1] - mean) / (prior.step_var[k] if variance is None else variance.detach()).sqrt()
        assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1.0) < 0.05
    # the loss drops the zero-mean cross term delta . eps / sigma: equal in expectation only
    gap = float(batch.loss.detach()) - float(batch.log_ratio.mean())
    assert gap != 0.0
    assert abs(gap) < 4 * float(batch.log_ratio.std()) / math.sqrt(4000)


@pytest.mark.parametrize("frozen, learned_variance", [(0, False), (3, False), (3, True)])
def test_pathwise_gradient_is_the_expected_vargrad_gradient(frozen, learned_variance):
    # VarGrad's loss is half the batch variance of log p_F - log Q, so its expected gradient is
    # (B - 1) / B grad KL(q || Q / Z), a score-function estimate; the pathwise
    # estimate must agree with it on every parameter, the frozen steps' reward gradient included
    prior, posterior, path = _shifted_posterior(frozen, learned_variance=learned_variance)
    params = list(posterior.model.parameters())
    pathwise = [torch.zeros_like(p) for p in params]
    for seed in range(4):
        posterior.model.zero_grad()
        pathwise_kl(posterior, path, 20000, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).loss.backward()
        pathwise = [a + p.grad / 4 for a, p in zip(pathwise, params)]
    posterior.model.zero_grad()
    traj = posterior.trajectories(160000, path, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    VarGrad().loss(traj).backward()
    vargrad = torch.cat([p.grad.flatten() for p in params]) * 160000 / 159999
    pathwise = torch.cat([g.flatten() for g in pathwise])
    assert float(pathwise.norm()) > 0.1
    assert float(torch.nn.functional.cosine_similarity(pathwise, vargrad, dim=0)) > 0.99
    assert float((pathwise - vargrad).norm() / vargrad.norm()) < 0.08


def test_pathwise_kl_and_vargrad_training_reach_the_same_posterior():
    # prior: the exact denoiser of N(0, I) in 2-D on a 10-step strided schedule, likelihood N(y; x_1, s^2).
    # The 10-step ancestral sampler loses variance (its x_1 marginal has variance ~0.52, not 1), so
    # the target p_prior10(x) r(x) has log Z ~ -2.25, estimated here from 200k prior samples; the
    # Gaussian-kernel family with the prior's variances stays ~0.1 nats below it. Both objectives
    # have the same optimum in the family: the pathwise KL (reparameterized, through the
    # likelihood's gradient) and VarGrad (score function) must reach the same ELBO and samples
    # from a prior ~3.5 nats away. With learned step variances the family holds the exact
    # posterior (the path target is Gaussian with per-step, per-dimension transition variances):
    # the pathwise KL must then close the gap to log Z and match the analytic posterior variance.
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    mixture = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    prior = DiffusionPrior(MixtureDenoiser(mixture, scheduler.alphas_cumprod), scheduler, 10, (2,))
    y, s2 = 1.5, 0.25
    path = DiffusionPriorPath(prior, lambda x: -0.5 * (x[:, 0] - y) ** 2 / s2 - 0.5 * math.log(2 * math.pi * s2))
    with torch.no_grad():
        prior_samples = prior.sample(200_000, generator=torch.Generator().manual_seed(7))[-1]
    log_z = float(torch.logsumexp(path.log_reward(prior_samples).double(), 0)) - math.log(200_000)
    results = {}
    for name, objective in (("kl", PathIntegral()), ("vargrad", VarGrad()), ("kl-variance", PathIntegral())):
        torch.manual_seed(0)
        model = ResidualDenoiser(prior.denoiser, 2, hidden=32)
        if name == "kl-variance":
            model = LearnedVarianceDenoiser(model, prior)
        posterior = DiffusionPosterior(prior, model, frozen_final_steps=prior.final_steps_below(1e-3))
        trainer = Trainer(posterior, objective, TrainConfig(iterations=300, batch_size=128, lr=3e-3, seed=0,
                                                            lr_decay_horizon=300), path=path)
        trainer.run()
        with torch.no_grad():
            batch = pathwise_kl(posterior, path, 8000, generator=torch.Generator().manual_seed(1))
        results[name] = (trainer.history.log_z_batch[0], -float(batch.log_ratio.mean()), batch.states[-1])
    (start, elbo_kl, x_kl), (_, elbo_vargrad, x_vargrad) = results["kl"], results["vargrad"]
    assert start < log_z - 3.0 and elbo_kl <= log_z + 0.01
    assert elbo_kl > log_z - 0.15 and abs(elbo_kl - elbo_vargrad) < 0.03
    torch.testing.assert_close(x_kl.mean(0), x_vargrad.mean(0), atol=0.04, rtol=0)
    torch.testing.assert_close(x_kl.var(0), x_vargrad.var(0), atol=0.03, rtol=0)
    assert float(x_kl[:, 0].mean()) > 0.9  # the prior's mean is 0, the posterior's ~1
    # the analytic posterior of the 10-step prior's Gaussian marginal N(0, v) (v measured) times r
    v = float(prior_samples[:, 0].double().var())
    post_var = 1 / (1 / v + 1 / s2)
    _, elbo_variance, x_variance = results["kl-variance"]
    assert log_z - 0.03 < elbo_variance <= log_z + 0.01 and elbo_variance > elbo_kl + 0.05
    assert abs(float(x_variance[:, 0].var()) - post_var) < 0.015 < abs(float(x_kl[:, 0].var()) - post_var)
    assert abs(float(x_variance[:, 0].mean()) - post_var * y / s2) < 0.03
    assert abs(float(x_variance[:, 1].var()) - v) < 0.03  # the unobserved dimension keeps the prior's


def test_pathwise_kl_floors_zero_density_rewards_and_refuses_what_it_cannot_differentiate():
    prior, posterior, _ = _shifted_posterior()
    half = DiffusionPriorPath(prior, lambda x: torch.where(x[:, 0] > 0, -x[:, 0].square(), -math.inf))
    batch = pathwise_kl(posterior, half, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                        min_log_reward=-50.0)
    assert torch.isfinite(batch.loss) and bool(torch.isinf(batch.log_ratio).any())
    batch.loss.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in posterior.model.parameters())
    nan_path = DiffusionPriorPath(prior, lambda x: torch.full_like(x[:, 0], math.nan))
    with pytest.raises(ValueError, match="log_reward"):
        pathwise_kl(posterior, nan_path, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="batch_size"):
        pathwise_kl(posterior, half, 0)
    guided = DiffusionPosterior(prior, GuidedDenoiser(prior.posterior_copy(), prior, half.log_reward).double())
    with pytest.raises(ValueError, match="GuidedDenoiser"):
        pathwise_kl(guided, half, 4, dtype=torch.float64)
    for config, replay in ((TrainConfig(iterations=1, explore=0.1), None), (TrainConfig(iterations=1), ReplayConfig())):
        with pytest.raises(ValueError, match="reparameterized paths"):
            Trainer(posterior, PathIntegral(), config, path=half, replay=replay)


def test_pathwise_training_resumes_the_same_run(tmp_path):
    def trainer(path_file):
        _, posterior, path = _shifted_posterior(frozen=2)
        return Trainer(posterior, PathIntegral(), TrainConfig(iterations=6, batch_size=8, lr=1e-2, seed=3,
                                                              checkpoint_every=2),
                       path=path, dtype=torch.float64, checkpoint_path=path_file)

    straight = trainer(None)
    straight.run()
    first = trainer(tmp_path / "kl.pt")
    first.config.iterations = 3
    first.run()
    resumed = trainer(tmp_path / "kl.pt")
    resumed.load(tmp_path / "kl.pt")
    resumed.run()
    assert straight.history.loss == resumed.history.loss
    assert straight.history.log_z_batch == resumed.history.log_z_batch and None not in straight.history.log_z_batch
    for a, b in zip(straight.sampler.model.parameters(), resumed.sampler.model.parameters()):
        assert torch.equal(a, b)


def test_checkpointed_steps_give_the_same_pathwise_gradient():
    _, posterior, path = _shifted_posterior(frozen=2)
    grads = []
    for checkpointed in (False, True):
        posterior.checkpoint_steps = checkpointed
        posterior.model.zero_grad()
        pathwise_kl(posterior, path, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64).loss.backward()
        grads.append([p.grad.clone() for p in posterior.model.parameters()])
    assert any(float(g.abs().max()) > 1e-6 for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
