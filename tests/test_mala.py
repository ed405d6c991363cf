import math

import torch

from posterior.samplers.mala import AdaptiveMALA


def _gaussian(mean, var):
    def log_r(x):
        return (-0.5 * (x - mean) ** 2 / var).sum(-1)

    def grad(x):
        return -(x - mean) / var

    return log_r, grad


def test_mala_leaves_a_gaussian_invariant_where_ula_would_not():
    mean, var = torch.tensor([1.0, -2.0]), torch.tensor([1.0, 0.25])
    log_r, grad = _gaussian(mean, var)
    g = torch.Generator().manual_seed(0)
    x0 = mean + var.sqrt() * torch.randn(6000, 2, generator=g)
    # h = 0.4: the unadjusted chain's stationary variance in the first coordinate is 1/(1 - h/2) = 1.25
    run = AdaptiveMALA(log_r, grad, step_size=0.4).run(x0, 60, adapt=False, generator=g)
    torch.testing.assert_close(run.states.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(run.states.var(0), var, atol=0.06 * var.max().item(), rtol=0.06)
    assert run.evaluations == 6000 * 61
    assert 0.05 < sum(run.acceptance) / len(run.acceptance) < 0.95


def test_step_size_adapts_toward_the_target_acceptance():
    log_r, grad = _gaussian(torch.zeros(10), torch.ones(10))
    g = torch.Generator().manual_seed(1)
    for start in (1e-4, 10.0):
        mala = AdaptiveMALA(log_r, grad, step_size=start)
        run = mala.run(torch.randn(500, 10, generator=g), 300, burn_in=200, generator=g)
        late = sum(run.acceptance[-100:]) / 100
        assert abs(late - 0.574) < 0.08, (start, late)
        assert mala.step_size == run.step_size
        assert len(run.kept_states) == round(sum(run.acceptance[200:]) * 500)
        torch.testing.assert_close(log_r(run.kept_states), run.kept_log_rewards)


def test_tempering_targets_the_tempered_density():
    log_r, grad = _gaussian(torch.zeros(1), torch.ones(1))
    g = torch.Generator().manual_seed(2)
    run = AdaptiveMALA(log_r, grad, step_size=0.5, beta=0.5).run(
        torch.randn(8000, 1, generator=g) * math.sqrt(2.0), 40, adapt=False, generator=g)
    assert abs(float(run.states.var()) - 2.0) < 0.12
    torch.testing.assert_close(run.log_rewards, log_r(run.states))  # stored log R is untempered


def test_zero_density_region_is_never_entered():
    def log_r(x):
        return torch.where(x[:, 0] > 0, -0.5 * x[:, 0] ** 2, torch.full_like(x[:, 0], -math.inf))

    def grad(x):
        return -x

    g = torch.Generator().manual_seed(3)
    start = torch.rand(1000, 1, generator=g) + 0.01
    start[:10] = -1.0  # chains that start at zero density move out at their first finite proposal
    run = AdaptiveMALA(log_r, grad, step_size=0.5).run(start, 100, generator=g)
    assert bool((run.kept_states > 0).all())
    assert float((run.states > 0).float().mean()) > 0.99
