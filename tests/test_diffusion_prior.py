import math

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")

from posterior.diffusion.guided_denoiser import GuidedDenoiser  # noqa: E402
from posterior.diffusion.diffusion_posterior import DiffusionPosterior, DiffusionPriorPath, accumulate_gradients_per_step  # noqa: E402
from posterior.diffusion.learned_variance import LearnedVarianceDenoiser  # noqa: E402
from posterior.objectives import RelativeTrajectoryBalance, VarGrad  # noqa: E402
from posterior.priors.diffusion import DiffusionPrior  # noqa: E402
from posterior.priors.gaussian_mixture import MixtureDenoiser, ring_mixture  # noqa: E402


class TinyDenoiser(nn.Module):
    """(x, t) -> output, smooth in both (a stand-in for a UNet)."""

    def __init__(self, dim=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(dim, dim).double()
        self.time = nn.Linear(1, dim).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))

    def forward(self, x, t):
        return torch.tanh(self.lin(x) + self.time(t.to(x.dtype)[:, None] / 1000.0))


def _quadratic_log_r(x):
    return -(x - 1).square().sum(-1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_step_kernels_match_diffusers_ddpm_step(prediction_type):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type=prediction_type)
    scheduler.set_timesteps(10)
    den = TinyDenoiser()
    prior = DiffusionPrior(den, scheduler, 10, (3,), timesteps=scheduler.timesteps)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for k, t in enumerate(scheduler.timesteps[:-1]):  # the final step differs by design (see below)
        out = scheduler.step(den(x, t.expand(5)), t, x, generator=torch.Generator().manual_seed(k))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(k), dtype=x.dtype)
        variance = float(scheduler._get_variance(t))
        torch.testing.assert_close(prior.predict_x0(x, k), out.pred_original_sample)
        torch.testing.assert_close(prior.step_var[k].item(), variance, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(prior.step_mean(x, k), out.prev_sample - math.sqrt(variance) * noise)
        log_p = prior.log_prob_step(out.prev_sample, prior.step_mean(x, k), k)
        direct = torch.distributions.Normal(prior.step_mean(x, k), math.sqrt(variance)).log_prob(out.prev_sample).sum(-1)
        torch.testing.assert_close(log_p, direct)
    # the last step is deterministic in DDPM (x = x0_hat); ours keeps its mean and uses the
    # forward noise variance 1 - a_{tau_1} so that trajectories have densities
    last = scheduler.timesteps[-1]
    torch.testing.assert_close(prior.step_mean(x, 9), prior.predict_x0(x, 9))
    assert prior.step_var[9].item() == pytest.approx(1 - scheduler.alphas_cumprod[last].item())


def _mixture_prior(steps=100):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    mixture = ring_mixture(4, radius=1.0, std=0.15, weights=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    return DiffusionPrior(MixtureDenoiser(mixture, scheduler.alphas_cumprod), scheduler, steps, (2,)), mixture


def test_exact_mixture_denoiser_gives_a_prior_that_samples_the_mixture():
    prior, mixture = _mixture_prior()
    x = prior.sample(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)[-1]
    shares = torch.bincount(mixture.component_of(x), minlength=4).double() / 4000
    torch.testing.assert_close(shares, mixture.weights, atol=0.03, rtol=0)
    assert abs(float(x.norm(dim=-1).mean()) - 1.0) < 0.05


def test_rtb_residual_is_log_z_when_posterior_is_prior_and_reward_is_one():
    prior, _ = _mixture_prior(steps=20)
    posterior = DiffusionPosterior(prior)
    path = DiffusionPriorPath(prior, lambda x: x.new_zeros(x.shape[0]))
    objective = RelativeTrajectoryBalance(log_z_init=0.7).double()
    for traj in (posterior.trajectories(64, path, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                 posterior.backward_trajectories(torch.randn(64, 2, dtype=torch.float64), path,
                                                 generator=torch.Generator().manual_seed(1))):
        residual = objective.log_z_of(traj) + objective.residual(traj)
        torch.testing.assert_close(residual, objective.log_z_of(traj).expand(64), rtol=0, atol=1e-10)
        assert abs(float(residual[0].detach()) - 0.7) < 1e-6


@pytest.mark.parametrize("objective_name,frozen,wrapper", [("rtb", 0, None), ("rtb-hinge", 0, None),
                                                           ("vargrad", 0, None), ("rtb", 3, None),
                                                           ("vargrad", 2, "guided"), ("rtb", 2, "variance")])
def test_per_step_gradient_accumulation_is_exact(objective_name, frozen, wrapper):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(TinyDenoiser(), scheduler, 8, (3,))
    model = None  # a copy of the prior's denoiser, plain or wrapped
    if wrapper == "guided":
        model = GuidedDenoiser(prior.posterior_copy(), prior, _quadratic_log_r, init_scale=0.5).double()
    elif wrapper == "variance":  # learned step variances (their scales get gradients too)
        model = LearnedVarianceDenoiser(prior.posterior_copy(), prior).double()
    posterior = DiffusionPosterior(prior, model, frozen_final_steps=frozen)
    with torch.no_grad():
        for p in posterior.model.parameters():
            p.add_(0.05)
    path = DiffusionPriorPath(prior, lambda x: -(x - 1).square().sum(-1), beta=2.0)

    def make_objective():
        if objective_name == "vargrad":
            return VarGrad()
        return RelativeTrajectoryBalance(hinge=0.5 if objective_name == "rtb-hinge" else 0.0).double()

    g = torch.Generator().manual_seed(3)
    states = prior.sample(16, generator=g, model=posterior.model, model_steps=posterior.trained_steps,
                          dtype=torch.float64)
    full_obj, step_obj = make_objective(), make_objective()
    full = posterior.score(states, path)
    full_obj.loss(full).backward()
    expected = [p.grad.clone() for p in posterior.model.parameters()] + [p.grad.clone() for p in full_obj.parameters()]
    posterior.model.zero_grad()
    traj = posterior.score(states, path, track_gradients=False)
    accumulate_gradients_per_step(posterior, traj, step_obj)
    got = [p.grad for p in posterior.model.parameters()] + [p.grad for p in step_obj.parameters()]
    assert any(float(e.abs().max()) > 1e-6 for e in expected)
    for e, a in zip(expected, got):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


def test_frozen_final_steps_run_the_prior_and_cancel_in_the_log_ratio():
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(TinyDenoiser(), scheduler, 10, (3,)).double()
    assert prior.final_steps_below(1e-3) == 2  # ... -> 111 -> 0 -> sample: variances ~1e-4
    assert prior.final_steps_below(0.0) == 0
    posterior = DiffusionPosterior(prior, frozen_final_steps=2).double()
    assert posterior.trained_steps == 8
    with torch.no_grad():
        for p in posterior.model.parameters():
            p.add_(0.1)
    path = DiffusionPriorPath(prior, lambda x: x.new_zeros(x.shape[0]))
    traj = posterior.trajectories(32, path, generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                                  track_gradients=False)
    log_pf, log_q = traj.log_pf_steps, traj.log_q_steps
    torch.testing.assert_close(log_pf[8:], log_q[8:], rtol=0, atol=0)
    assert bool(((log_pf[:8] - log_q[:8]).abs() > 1e-6).any(dim=1).all())  # every trained step differs
    # the same noise through the frozen steps: the last two transitions are the prior's
    states = traj.states
    for k in (8, 9):
        torch.testing.assert_close(prior.step_mean(states[k], k, posterior.step_model(k)), prior.step_mean(states[k], k))
    assert not torch.allclose(prior.step_mean(states[7], 7, posterior.step_model(7)), prior.step_mean(states[7], 7))
    with pytest.raises(ValueError, match="frozen_final_steps"):
        DiffusionPosterior(prior, frozen_final_steps=10)


@pytest.mark.parametrize("track_gradients", [False, True])
def test_trajectories_reuse_the_sampling_loops_frozen_rows_instead_of_a_second_prior_pass(track_gradients):
    """The frozen final steps ran the prior's denoiser while sampling: their rows are the prior's, so scoring the
    trajectories calls the prior on the trained steps only, with the same log-densities as a full prior pass."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(TinyDenoiser(), scheduler, 10, (3,)).double()
    posterior = DiffusionPosterior(prior, frozen_final_steps=3).double()
    with torch.no_grad():
        for p in posterior.model.parameters():
            p.add_(0.1)
    path = DiffusionPriorPath(prior, lambda x: -(x - 1).square().sum(-1))
    calls = []
    forward = prior.denoiser.forward
    prior.denoiser.forward = lambda *a, **k: calls.append(a[0].shape[0]) or forward(*a, **k)
    traj = posterior.trajectories(16, path, generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                                  track_gradients=track_gradients)
    assert len(calls) == 3 + 7  # the frozen steps while sampling, then the trained steps' prior densities
    del prior.denoiser.forward
    full = posterior.score(traj.states, path, track_gradients=track_gradients)
    torch.testing.assert_close(traj.log_q_steps, full.log_q_steps, rtol=0, atol=1e-12)
    torch.testing.assert_close(traj.log_pf_steps, full.log_pf_steps, rtol=0, atol=1e-12)
    assert traj.log_pf_steps.requires_grad == track_gradients
    with pytest.raises(ValueError, match="frozen_rows"):
        posterior.score(traj.states, path, frozen_rows=full.log_q_steps[6:])


def test_exploration_widens_only_the_trained_steps():
    """explore adds its variance to the trained steps' kernels; the frozen final steps keep the prior's,
    so the samples that the reward scores are not blurred by steps that cannot learn."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(TinyDenoiser(), scheduler, 10, (3,)).double()
    posterior = DiffusionPosterior(prior, frozen_final_steps=2).double()
    path = DiffusionPriorPath(prior, lambda x: x.new_zeros(x.shape[0]))
    explore = 0.5
    with torch.no_grad():
        states = posterior.trajectories(4000, path, explore=explore, generator=torch.Generator().manual_seed(1),
                                        dtype=torch.float64, track_gradients=False).states
        for k in range(10):
            increment = states[k + 1] - prior.step_mean(states[k], k, posterior.step_model(k))
            expected = float(prior.step_var[k]) + (explore if k < 8 else 0.0)
            torch.testing.assert_close(increment.var(0), torch.full((3,), expected, dtype=torch.float64),
                                       rtol=0.08, atol=0)
    # the prior's own sampler widens every step unless told how many
    every = prior.sample(4000, explore=explore, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    last = every[10] - prior.step_mean(every[9], 9)
    assert float(last.var(0).min()) > 0.4


def test_sir_approaches_the_exact_posterior_and_guidance_runs():
    from posterior.baselines.guidance import guided_sample, sampling_importance_resampling
    prior, mixture = _mixture_prior(steps=30)
    prior = prior.float()

    def log_r(x):
        return -0.5 * (x[:, 0] - 0.8) ** 2 / 0.3

    exact = mixture.posterior(torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([0.8], dtype=torch.float64), 0.3)
    g = torch.Generator().manual_seed(0)
    x, nfe, ess, log_z = sampling_importance_resampling(prior, log_r, 4000, pool=8000, generator=g)
    # Z = E_prior exp(-(x_1 - 0.8)^2 / 0.6) = sqrt(2 pi 0.3) sum_k w_k N(0.8; mu_k1, s_k^2 + 0.3)
    marginal = torch.distributions.Normal(mixture.means[:, 0], (mixture.covariances[:, 0, 0] + 0.3).sqrt())
    exact_log_z = float(torch.logsumexp(mixture.weights.log() + marginal.log_prob(torch.tensor(0.8, dtype=torch.float64)), 0)
                        + 0.5 * math.log(2 * math.pi * 0.3))
    # the 30-step prior is itself ~0.03 off the mixture here (-1.21 on three seeds; 100 steps: -1.19 to -1.21,
    # exact samples: -1.17 to -1.20); the mean log-weight (Jensen) or a missing -log(pool) would be far outside
    assert abs(log_z - exact_log_z) < 0.06
    shares = torch.bincount(exact.component_of(x.double()), minlength=4).double() / 4000
    torch.testing.assert_close(shares, exact.weights, atol=0.04, rtol=0)
    assert nfe == 30 * 8000 / 4000 and 0 < ess <= 1
    for mode in ("dps", "x0"):
        samples, nfe = guided_sample(prior, log_r, 64, mode=mode, scale=0.5, generator=g)
        assert samples.shape == (64, 2) and bool(torch.isfinite(samples).all()) and nfe == 30
        assert float(samples[:, 0].mean()) > 0.0  # pulled toward the observation x_1 = 0.8


@pytest.mark.parametrize("mode", ["dps", "x0"])
def test_guided_sampling_skips_zero_density_and_reports_nan(mode):
    """A -inf log r (zero density) gives no guidance, so the sample is the unguided one with the same
    noise, not a step of inf or a silently zeroed NaN; a NaN log r raises."""
    from posterior.baselines.guidance import guided_sample
    prior, _ = _mixture_prior(steps=8)
    prior = prior.float()

    def log_r(x):
        return torch.where(x[:, 0] > 0, -0.5 * (x[:, 0] - 0.8) ** 2 / 0.3, torch.full_like(x[:, 0], -math.inf))

    def seeded(reward, scale):
        return guided_sample(prior, reward, 32, mode=mode, scale=scale, generator=torch.Generator().manual_seed(3))[0]

    zero_density = seeded(lambda x: torch.full_like(x[:, 0], -math.inf), 0.5)
    torch.testing.assert_close(zero_density, seeded(log_r, 0.0), rtol=0, atol=0)
    partly = seeded(log_r, 0.5)
    assert bool(torch.isfinite(partly).all()) and not torch.equal(partly, zero_density)
    with pytest.raises(ValueError, match="log_reward returned NaN"):
        seeded(lambda x: torch.where(x[:, 0] > 0, x[:, 0], torch.full_like(x[:, 0], math.nan)), 0.5)
    with pytest.raises(ValueError, match="differentiable in x"):
        seeded(lambda x: log_r(x).detach(), 0.5)


def test_gradient_checkpointing_gives_the_same_gradient():
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(TinyDenoiser(), scheduler, 6, (3,))
    grads = []
    for checkpoint_steps in (False, True):
        posterior = DiffusionPosterior(prior, checkpoint_steps=checkpoint_steps)
        path = DiffusionPriorPath(prior, lambda x: -(x - 1).square().sum(-1))
        states = prior.sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        RelativeTrajectoryBalance().double().loss(posterior.score(states, path)).backward()
        grads.append([p.grad for p in posterior.model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_sampling_continues_from_given_states():
    """start/first_step run the same ancestral steps as a full sample from the state before step k."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(TinyDenoiser(), scheduler, 7, (3,)).double()
    full = prior.sample(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(prior.sample(5, start=start, generator=generator), full, rtol=0, atol=0)
    tail = prior.sample(5, start=full[4], first_step=4, generator=torch.Generator().manual_seed(1))
    assert tail.shape == (4, 5, 3) and torch.equal(tail[0], full[4]) and tail.dtype == torch.float64
    with pytest.raises(ValueError, match="needs start"):
        prior.sample(5, first_step=2)
    with pytest.raises(ValueError, match="start must have shape"):
        prior.sample(5, start=full[0, :, :2], first_step=2)
    with pytest.raises(ValueError, match="return_log_probs"):
        prior.sample(5, start=full[2], first_step=2, return_log_probs=True)


def test_log_probs_recorded_while_sampling_equal_a_second_pass():
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(TinyDenoiser(), scheduler, 7, (3,))
    states, log_p = prior.sample(10, generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                                 explore=0.3, return_log_probs=True)
    torch.testing.assert_close(log_p, prior.log_prob_steps(states), rtol=1e-12, atol=1e-12)


def test_schedule_buffers_follow_the_denoiser_device():
    """A prior built around a denoiser on another device (here "meta", standing in for CUDA) keeps
    its schedule there, so a step runs without mixing devices (the time embedding's input too)."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(TinyDenoiser().to("meta"), scheduler, 10, (3,))
    assert {b.device.type for b in prior.buffers()} == {"meta"}
    x = torch.empty(4, 3, dtype=torch.float64, device="meta")
    mean = prior.step_mean(x, 3)
    assert mean.device.type == "meta" and mean.shape == (4, 3)
    assert prior.log_prob_step(mean, mean, 3).shape == (4,)


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_rtb_history_records_the_batch_log_z_of_forward_batches(beta):
    from posterior.training.config import TrainConfig
    from posterior.training.engine import Trainer
    from posterior.training.replay import ReplayConfig

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(TinyDenoiser(), scheduler, 10, (3,)).double()
    posterior = DiffusionPosterior(prior).double()
    # posterior = prior at the first iteration and log r = -1.3 everywhere: log Q - log p_F = -1.3 beta exactly
    path = DiffusionPriorPath(prior, lambda x: x.new_full((x.shape[0],), -1.3), beta=beta)
    trainer = Trainer(posterior, VarGrad(), TrainConfig(iterations=1, batch_size=8, seed=0), path=path,
                      replay=ReplayConfig(capacity=1000), dtype=torch.float64)
    trainer.run()
    assert trainer.history.log_z_batch[0] == pytest.approx(-1.3 * beta, abs=1e-9)
    trainer.config.iterations = 2  # the second iteration trains on backward trajectories from the buffer
    trainer.run()
    assert trainer.history.log_z_batch[1] is None
    assert len(trainer.history.log_z_batch) == len(trainer.history.loss) == 2


def _rtb_trainer(iterations, checkpoint_path=None, trajectory_pool=None, objective=None, **overrides):
    """Trainer of a 6-step diffusion posterior on event shape (3,); ``replay`` (default True) keeps a buffer,
    ``trajectory_pool`` and the ``forward_kl*`` overrides make an importance-pool source."""
    from posterior.training.config import TrainConfig
    from posterior.training.engine import Trainer
    from posterior.training.importance_pool import PoolTraining
    from posterior.training.replay import ReplayConfig

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(TinyDenoiser(), scheduler, 6, (3,)).double()
    posterior = DiffusionPosterior(prior).double()
    path = DiffusionPriorPath(prior, lambda x: -(x - 1).square().sum(-1))
    settings = dict(iterations=iterations, batch_size=8, lr=1e-2, explore=0.3, step_fraction=0.5,
                    seed=4, lr_decay_horizon=5, lr_decay_final=0.2)
    settings.update(overrides)
    replay = ReplayConfig(capacity=100_000) if settings.pop("replay", True) else None
    pool_settings = {k: settings.pop(k) for k in list(settings) if k.startswith("forward_kl")}
    pool = None if trajectory_pool is None else PoolTraining(trajectory_pool, **pool_settings)
    objective = objective if objective is not None else RelativeTrajectoryBalance(hinge=0.01).double()
    return Trainer(posterior, objective, TrainConfig(**settings), path=path, dtype=torch.float64,
                   checkpoint_path=checkpoint_path, replay=replay, pool=pool)


def test_rtb_trainer_resumed_from_a_checkpoint_continues_the_same_run(tmp_path):
    straight = _rtb_trainer(6)
    straight.run()
    ckpt = tmp_path / "rtb.pt"
    first = _rtb_trainer(6, ckpt, checkpoint_every=2)
    first.config.iterations = 3  # stop part-way (odd: the next iteration is a buffer iteration)
    first.run()
    resumed = _rtb_trainer(6, ckpt, checkpoint_every=2)
    resumed.load(ckpt)
    assert resumed.iteration == 3 and len(resumed.replay.buffer) == len(first.replay.buffer) > 0
    resumed.run()
    for a, b in zip(straight.sampler.model.parameters(), resumed.sampler.model.parameters()):
        assert torch.equal(a, b)
    assert straight.objective.log_z() == resumed.objective.log_z()
    assert straight.history.loss == resumed.history.loss
    assert straight.history.log_z_batch == resumed.history.log_z_batch
    assert resumed.history.log_z_batch_curve(window=2) == [
        (2, straight.history.log_z_batch[0]), (4, straight.history.log_z_batch[2]),
        (6, straight.history.log_z_batch[4])]  # one forward batch per window of two (replay alternates)


def test_rtb_trainer_refuses_a_checkpoint_of_a_different_run(tmp_path):
    ckpt = tmp_path / "rtb.pt"
    _rtb_trainer(2, ckpt).run()
    with pytest.raises(ValueError, match=r"lr=0.01 \(now 0.001\)"):
        _rtb_trainer(4, ckpt, lr=1e-3).load(ckpt)
    with pytest.raises(ValueError, match=r"belongs to another problem: replay=\{.*\} \(now None\)"):
        _rtb_trainer(4, ckpt, replay=False).load(ckpt)
    with pytest.raises(ValueError, match="checkpoint_every"):
        _rtb_trainer(4, checkpoint_every=-1)


def test_rtb_trainer_decays_the_posterior_learning_rate_but_not_log_z(tmp_path):
    from lr_checks import assert_rates_follow_decay
    from posterior.training.lr_schedule import CosineDecay
    decay = CosineDecay(horizon=5, final=0.2)
    assert decay(0) == 1.0 and decay(5) == decay(9) == pytest.approx(0.2)
    assert decay(2.5) == pytest.approx(0.6) and CosineDecay(0, 0.2)(7) == 1.0
    trainer = _rtb_trainer(7)
    assert_rates_follow_decay(trainer, 7, 1e-2, decay, 0.1)  # RTB's default log Z rate
    with pytest.raises(ValueError, match="TrainConfig.lr_decay_horizon must be an integer >= 0"):
        _rtb_trainer(2, lr_decay_horizon=-1)
    with pytest.raises(ValueError, match="final lr multiplier"):
        _rtb_trainer(2, lr_decay_final=1.5)
    # a checkpoint written before the schedule existed resumes when the schedule is off
    ckpt = tmp_path / "old.pt"
    old = _rtb_trainer(2, ckpt, lr_decay_horizon=0, lr_decay_final=0.1)
    old.run()
    from posterior.training import checkpoint

    state = checkpoint.load(ckpt)
    del state["config"]["lr_decay_horizon"], state["config"]["lr_decay_final"]
    checkpoint.save_atomic(state, ckpt)
    _rtb_trainer(4, ckpt, lr_decay_horizon=0, lr_decay_final=0.1).load(ckpt)
    with pytest.raises(ValueError, match="lr_decay_horizon=0"):
        _rtb_trainer(4, ckpt).load(ckpt)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_guided_denoiser_shifts_each_step_mean_by_its_scale_times_the_guidance(prediction_type):
    # clip_sample on: the shift is added to the mean after x0's clipping
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=True, prediction_type=prediction_type)
    prior = DiffusionPrior(TinyDenoiser(), scheduler, 6, (3,)).double()
    guided = GuidedDenoiser(prior.posterior_copy(), prior, _quadratic_log_r, init_scale=0.7).double()
    with torch.no_grad():
        guided.scale[2] = -1.3
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for k in range(6):
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(_quadratic_log_r(prior.predict_x0(xg, k)).sum(), xg)
        expected = prior.step_mean(x, k) + float(guided.scale[k].detach()) * prior.step_var[k] * grad
        torch.testing.assert_close(prior.step_mean(x, k, guided), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(guided(x, prior.timesteps[1].expand(5)), prior.denoiser(x, prior.timesteps[1].expand(5)))


def test_guided_denoiser_treats_minus_inf_rewards_as_zero_guidance_and_reports_nan():
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(TinyDenoiser(), scheduler, 6, (3,)).double()

    def half_plane(x):  # zero density where x0 < 0
        return torch.where(x[:, 0] > 0, _quadratic_log_r(x), torch.full_like(x[:, 0], -math.inf))

    guided = GuidedDenoiser(prior.posterior_copy(), prior, half_plane).double()
    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = guided.guidance(x, 2)
    outside = prior.predict_x0(x, 2)[:, 0] <= 0
    assert 0 < int(outside.sum()) < 64
    assert bool((g[outside] == 0).all()) and bool(torch.isfinite(g).all()) and bool((g[~outside] != 0).any())
    nan_guided = GuidedDenoiser(prior.posterior_copy(), prior, lambda x: x[:, 0] * math.nan).double()
    with pytest.raises(ValueError, match="log_reward"):
        nan_guided.guidance(x, 2)


def test_guided_posterior_starts_closer_to_the_posterior_than_the_prior_does():
    """On a mixture prior with a Gaussian likelihood, first-order guidance at w = 1 starts with less
    than half the KL to the posterior (log Z - ELBO, log Z analytic) of the unguided posterior (= prior)."""
    prior, _ = _mixture_prior(steps=20)
    prior = prior.double()

    def log_r(x):
        return -0.5 * (x[:, 0] - 0.8).square() / 0.05

    path = DiffusionPriorPath(prior, log_r)
    elbo = {}
    for name, model in (("prior", None), ("guided", GuidedDenoiser(prior.posterior_copy(), prior, log_r).double())):
        posterior = DiffusionPosterior(prior, model)
        traj = posterior.trajectories(2000, path, generator=torch.Generator().manual_seed(2), dtype=torch.float64,
                                      track_gradients=False)
        elbo[name] = float((traj.log_q_steps.sum(0) + traj.log_reward - traj.log_pf_steps.sum(0)).mean())
    # log Z = log sum_j w_j sqrt(0.05 / v) exp(-(mu_j1 - 0.8)^2 / (2 v)), v = 0.05 + 0.15^2
    v = 0.05 + 0.15**2
    log_z = math.log(sum(w * math.sqrt(0.05 / v) * math.exp(-(m - 0.8) ** 2 / (2 * v))
                         for w, m in zip((0.1, 0.2, 0.3, 0.4), (1.0, 0.0, -1.0, 0.0))))
    kl = {name: log_z - value for name, value in elbo.items()}  # measured: prior 11.1, guided 3.4
    assert 0 < kl["guided"] < 0.5 * kl["prior"], (log_z, elbo)


def test_signal_weighted_guidance_scales_and_their_own_learning_rate():
    from posterior.training.config import TrainConfig
    from posterior.training.engine import Trainer

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(TinyDenoiser(), scheduler, 6, (3,)).double()
    guided = GuidedDenoiser.signal_weighted(prior.posterior_copy(), prior, _quadratic_log_r, 2.0).double()
    torch.testing.assert_close(guided.scale.detach(), 2.0 * prior.alpha_t)
    with pytest.raises(ValueError, match="init_scale"):
        GuidedDenoiser(prior.posterior_copy(), prior, _quadratic_log_r, init_scale=torch.ones(5))
    posterior = DiffusionPosterior(prior, guided)
    path = DiffusionPriorPath(prior, _quadratic_log_r)
    trainer = Trainer(posterior, VarGrad(), TrainConfig(iterations=1, batch_size=8, lr=1e-5, lr_guidance=0.3),
                      path=path, dtype=torch.float64)
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [1e-5, 0.3]
    assert trainer.optimizer.param_groups[1]["params"] == [guided.scale]
    before = guided.scale.detach().clone()
    trainer.run()
    # Adam's first step moves every scale with a nonzero gradient by lr exactly
    step = (guided.scale.detach() - before).abs()
    torch.testing.assert_close(step[step > 0], torch.full_like(step[step > 0], 0.3), rtol=1e-6, atol=0)


def test_rtb_weight_average_is_resumed_and_swapped_in_to_sample(tmp_path):
    straight = _rtb_trainer(6, ema_decay=0.6)
    straight.run()
    ckpt = tmp_path / "rtb.pt"
    first = _rtb_trainer(6, ckpt, checkpoint_every=3, ema_decay=0.6)
    first.config.iterations = 3
    first.run()
    resumed = _rtb_trainer(6, ckpt, checkpoint_every=3, ema_decay=0.6)
    resumed.load(ckpt)
    resumed.run()
    assert resumed.ema.count == straight.ema.count == 6
    for a, b in zip(straight.ema.averaged, resumed.ema.averaged, strict=True):
        assert torch.equal(a, b)
    trained = [p.detach().clone() for p in resumed.sampler.model.parameters()]
    with resumed.averaged_weights():
        for p, averaged in zip(resumed.sampler.model.parameters(), resumed.ema.averaged, strict=True):
            assert torch.equal(p, averaged)
    assert all(torch.equal(p, t) for p, t in zip(resumed.sampler.model.parameters(), trained))
    assert any(not torch.equal(a, t) for a, t in zip(resumed.ema.averaged, trained))
    with pytest.raises(ValueError, match=r"ema_decay=0.6 \(now 0.0\)"):
        _rtb_trainer(6, ckpt).load(ckpt)
