import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from posterior.diffusion.diffusion_posterior import DiffusionPosterior  # noqa: E402
from posterior.training.importance_pool import ImportancePool  # noqa: E402
from posterior.priors.diffusion import DiffusionPrior  # noqa: E402
from posterior.priors.gaussian_mixture import MixtureDenoiser, ring_mixture  # noqa: E402
from test_diffusion_prior import _rtb_trainer  # noqa: E402


def test_pool_draws_each_path_with_its_normalized_weight_and_never_a_zero_weight():
    # 3 states per path, 4 paths, event (2,): path j holds j + 10 s at state s
    paths = (torch.arange(4, dtype=torch.float64)[None, :, None] + 10 * torch.arange(3.0)[:, None, None]).expand(3, 4, 2)
    pool = ImportancePool(paths, torch.tensor([0.1, 0.2, 0.7, 0.0]).log())  # log 0 = -inf: a legal zero weight
    draws = pool.sample(40_000, torch.Generator().manual_seed(0))
    assert draws.shape == (3, 40_000, 2)
    assert torch.equal(draws[1], draws[0] + 10) and torch.equal(draws[2], draws[0] + 20)  # whole paths
    assert torch.equal(pool.terminal_states, paths[-1])
    shares = torch.bincount(draws[0, :, 0].long(), minlength=4).double() / 40_000
    torch.testing.assert_close(shares, torch.tensor([0.1, 0.2, 0.7, 0.0], dtype=torch.float64), atol=0.008, rtol=0)
    assert shares[3] == 0


def test_pool_reports_its_effective_sample_size_and_log_mean_weight():
    pool = ImportancePool(torch.zeros(2, 3, 1), torch.tensor([1.0, 1.0, 2.0]).log() - 5.0)
    assert pool.effective_sample_size() == pytest.approx(16 / (3 * 6))  # (sum w)^2 / (K sum w^2)
    assert pool.log_mean_weight() == pytest.approx(math.log(4 / 3) - 5.0)
    restored = ImportancePool.from_state_dict(pool.state_dict())
    assert torch.equal(restored.paths, pool.paths) and torch.equal(restored.log_weights, pool.log_weights)


def test_pool_rejects_bad_weights_with_a_named_error():
    with pytest.raises(ValueError, match="log_weights must have shape"):
        ImportancePool(torch.zeros(2, 3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="log_weights.*NaN"):
        ImportancePool(torch.zeros(2, 2, 2), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="every weight is zero"):
        ImportancePool(torch.zeros(2, 2, 2), torch.full((2,), -math.inf))
    with pytest.raises(ValueError, match="< \\+inf"):
        ImportancePool(torch.zeros(2, 2, 2), torch.tensor([0.0, math.inf]))
    with pytest.raises(ValueError, match="paths must have shape"):
        ImportancePool(torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="batch_size"):
        ImportancePool(torch.zeros(2, 2, 2), torch.zeros(2)).sample(0)


def test_pool_of_prior_paths_resamples_to_the_exact_posterior_component_weights():
    # a diffusion prior with the exact score of a 4-component mixture; a reward constant on each
    # component's region: the posterior's component weights are w_j c_j / sum_i w_i c_i
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    mixture = ring_mixture(4, radius=1.0, std=0.15, weights=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    prior = DiffusionPrior(MixtureDenoiser(mixture, scheduler.alphas_cumprod), scheduler, 50, (2,))
    reward = torch.tensor([8.0, 1.0, 0.5, 0.25], dtype=torch.float64)

    def log_weight(x):
        return 2.0 * reward.log()[mixture.component_of(x)]  # beta = 2

    pool = ImportancePool.from_prior(prior, log_weight, 20_000, chunk=5000,
                                     generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = mixture.weights.double() * reward**2
    assert pool.log_mean_weight() == pytest.approx(math.log(float(exact.sum())), abs=0.03)
    exact = exact / exact.sum()
    draws = pool.sample(20_000, torch.Generator().manual_seed(1))
    assert draws.shape == (51, 20_000, 2)
    shares = torch.bincount(mixture.component_of(draws[-1]), minlength=4).double() / 20_000
    torch.testing.assert_close(shares, exact, atol=0.015, rtol=0)  # the prior's weights are 0.1 .. 0.4


def _pool_trainer(iterations, pool, checkpoint_path=None, **overrides):
    """The RTB test trainer of test_diffusion_prior (6 steps, event (3,)) with a pool instead of a buffer."""
    return _rtb_trainer(iterations, checkpoint_path, trajectory_pool=pool, **{"replay": False, **overrides})


def test_odd_iterations_train_on_whole_paths_resampled_from_the_pool(monkeypatch):
    path_a = torch.linspace(-1.0, 1.0, 7 * 3, dtype=torch.float64).reshape(7, 1, 3)  # 6 steps: 7 states
    pool = ImportancePool(torch.cat([path_a, path_a + 5.0], 1), torch.tensor([0.0, -math.inf]))  # only path a
    trainer = _pool_trainer(4, pool)
    scored = []
    original = DiffusionPosterior.score

    def recording(self, states, path, **kwargs):
        scored.append(states.clone())
        return original(self, states, path, **kwargs)

    monkeypatch.setattr(DiffusionPosterior, "score", recording)
    trainer.run()
    assert len(scored) == 4  # one per iteration: forward batches at 0 and 2, pool paths at 1 and 3
    for states in scored[1::2]:
        assert states.shape == (7, 8, 3) and torch.equal(states, path_a.expand(7, 8, 3))
    for states in scored[0::2]:
        assert not torch.equal(states[:, :1], path_a)
    assert [v is None for v in trainer.history.log_z_batch] == [False, True, False, True]


def test_pool_trainer_resumes_the_same_run_with_its_own_pool(tmp_path):
    pool = ImportancePool(torch.randn(7, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)),
                          torch.linspace(-1.0, 1.0, 5, dtype=torch.float64))
    straight = _pool_trainer(6, pool)
    straight.run()
    ckpt = tmp_path / "rtb.pt"
    first = _pool_trainer(6, pool, ckpt, checkpoint_every=3)
    first.config.iterations = 3
    first.run()
    other = ImportancePool(torch.zeros(7, 2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    resumed = _pool_trainer(6, other, ckpt, checkpoint_every=3)  # the checkpoint's pool wins
    resumed.load(ckpt)
    assert torch.equal(resumed.pool.pool.paths, pool.paths)
    resumed.run()
    assert straight.history.loss == resumed.history.loss
    for a, b in zip(straight.sampler.model.parameters(), resumed.sampler.model.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="belongs to another problem: pool="):
        _pool_trainer(6, None, ckpt, checkpoint_every=3).load(ckpt)


def test_pool_and_replay_buffer_are_not_combined_and_pool_paths_must_fit_the_prior():
    pool = ImportancePool(torch.zeros(7, 2, 3, dtype=torch.float64), torch.zeros(2))
    with pytest.raises(ValueError, match="replay and pool are two sources"):
        _pool_trainer(2, pool, replay=True)
    with pytest.raises(ValueError, match=r"pool.paths must have shape \(7, B, 3\)"):
        _pool_trainer(2, ImportancePool(torch.zeros(6, 2, 3), torch.zeros(2)))  # one state short
    with pytest.raises(ValueError, match="pool.paths must have shape"):
        _pool_trainer(2, ImportancePool(torch.zeros(7, 2, 4), torch.zeros(2)))


def test_forward_kl_adds_the_pool_paths_negative_log_likelihood_gradient_every_iteration():
    path_a = torch.linspace(-1.0, 1.0, 7 * 3, dtype=torch.float64).reshape(7, 1, 3)
    pool = ImportancePool(torch.cat([path_a, path_a + 5.0], 1), torch.tensor([0.0, -math.inf]))  # only path a
    lam = 0.3
    with_term = _pool_trainer(2, pool, forward_kl=lam, explore=0.0)
    plain = _pool_trainer(2, None, explore=0.0)  # same weights, seed and forward batch
    # the expected extra gradient: lambda * grad of -mean log q over 8 copies of path a (trained steps)
    untouched = _pool_trainer(2, None, explore=0.0).sampler
    nll = -untouched.prior.log_prob_steps(path_a.expand(7, 8, 3), model=untouched.model,
                                          steps=untouched.trained_steps).sum(0).mean()
    (lam * nll).backward()
    loss_with, loss_plain = with_term.step()[0], plain.step()[0]
    for p_with, p_plain, p_nll in zip(with_term.sampler.model.parameters(), plain.sampler.model.parameters(),
                                      untouched.model.parameters(), strict=True):
        torch.testing.assert_close(p_with.grad, p_plain.grad + p_nll.grad)
    assert loss_with == pytest.approx(loss_plain + lam * float(nll.detach()))
    # every iteration is a forward batch: the pool feeds only the forward-KL term
    trainer = _pool_trainer(2, pool, forward_kl=lam)
    trainer.run()
    assert all(v is not None for v in trainer.history.log_z_batch)


def test_forward_kl_weight_decays_on_a_cosine_and_then_adds_nothing():
    path_a = torch.linspace(-1.0, 1.0, 7 * 3, dtype=torch.float64).reshape(7, 1, 3)
    pool = ImportancePool(torch.cat([path_a, path_a + 5.0], 1), torch.tensor([0.0, -math.inf]))
    lam, decay = 0.4, dict(forward_kl_decay_horizon=4, forward_kl_decay_final=0.25)
    trainer = _pool_trainer(8, pool, forward_kl=lam, explore=0.0, **decay)
    weights = [trainer.pool.forward_kl_weight(i) for i in (0, 2, 4, 7)]
    assert weights == pytest.approx([lam, lam * (0.25 + 0.75 * 0.5), lam * 0.25, lam * 0.25])
    untouched = _pool_trainer(2, None, explore=0.0).sampler
    nll = -untouched.prior.log_prob_steps(path_a.expand(7, 8, 3), model=untouched.model,
                                          steps=untouched.trained_steps).sum(0).mean()
    nll.backward()
    # halfway through the horizon the added gradient is the decayed weight times the NLL gradient
    with_term, plain = _pool_trainer(8, pool, forward_kl=lam, explore=0.0, **decay), _pool_trainer(8, None, explore=0.0)
    with_term.iteration = plain.iteration = 2
    loss_with, loss_plain = with_term.step()[0], plain.step()[0]
    for p_with, p_plain, p_nll in zip(with_term.sampler.model.parameters(), plain.sampler.model.parameters(),
                                      untouched.model.parameters(), strict=True):
        torch.testing.assert_close(p_with.grad, p_plain.grad + weights[1] * p_nll.grad)
    assert loss_with == pytest.approx(loss_plain + weights[1] * float(nll.detach()))
    # decayed to 0: the term vanishes and the pool is not drawn from
    off = _pool_trainer(8, pool, forward_kl=lam, explore=0.0, forward_kl_decay_horizon=4)
    plain = _pool_trainer(8, None, explore=0.0)
    off.iteration = plain.iteration = 5
    assert off.step() == plain.step()
    for p_off, p_plain in zip(off.sampler.model.parameters(), plain.sampler.model.parameters(), strict=True):
        assert torch.equal(p_off.grad, p_plain.grad)


def test_forward_kl_decay_settings_are_checked():
    from posterior.training.importance_pool import PoolTraining

    pool = ImportancePool(torch.zeros(7, 2, 3, dtype=torch.float64), torch.zeros(2))
    with pytest.raises(ValueError, match="forward_kl_decay_horizon must be an integer >= 0"):
        PoolTraining(pool, forward_kl=1.0, forward_kl_decay_horizon=-1)
    with pytest.raises(ValueError, match=r"forward_kl_decay_final must be in \[0, 1\]"):
        PoolTraining(pool, forward_kl=1.0, forward_kl_decay_horizon=10, forward_kl_decay_final=1.5)
    with pytest.raises(ValueError, match="decays the forward_kl weight, which is 0"):
        PoolTraining(pool, forward_kl_decay_horizon=10)
    with pytest.raises(ValueError, match="forward_kl must be a finite number >= 0"):
        PoolTraining(pool, forward_kl=-1.0)
    with pytest.raises(TypeError, match="pool must be an ImportancePool"):
        PoolTraining(None, forward_kl=0.5)
    assert PoolTraining(pool, forward_kl=0.5).forward_kl_weight(10_000) == 0.5  # no horizon: constant


def test_forward_kl_admits_the_pathwise_kl_but_pool_batches_do_not():
    from posterior.objectives import PathIntegral

    pool = ImportancePool(torch.zeros(7, 2, 3, dtype=torch.float64), torch.zeros(2))
    kl = dict(replay=False, explore=0.0, step_fraction=1.0, objective=PathIntegral())
    with pytest.raises(ValueError, match="takes no explore, replay buffer or importance-pool batches"):
        _pool_trainer(2, pool, **kl)
    trainer = _pool_trainer(2, pool, forward_kl=0.5, **kl)
    trainer.run()
    assert trainer.iteration == 2 and all(v is not None for v in trainer.history.log_z_batch)
