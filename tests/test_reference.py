import math

import pytest
import torch

from posterior.core.grids import check_grid, power_grid, random_grid, uniform_grid
from posterior.paths.reference import BrownianBridge
from posterior.samplers.sampler import DiffusionSampler
from posterior.samplers.networks import PISPolicy


def test_uniform_and_random_grids():
    t = uniform_grid(10)
    assert t.shape == (11,) and t[0] == 0 and t[-1] == 1
    g = torch.Generator().manual_seed(0)
    r = random_grid(15, generator=g)
    check_grid(r)
    inc = r[1:] - r[:-1]
    assert float(inc.max() / inc.min()) <= 10.0 + 1e-4
    with pytest.raises(ValueError, match="steps"):
        uniform_grid(0)
    with pytest.raises(ValueError, match="increasing"):
        check_grid(torch.tensor([0.0, 0.6, 0.4, 1.0]))


def test_power_grid():
    torch.testing.assert_close(power_grid(10, 1.0), uniform_grid(10))
    t = power_grid(100, 2.0, dtype=torch.float64)
    check_grid(t)
    assert t.shape == (101,) and t[0] == 0 and t[-1] == 1
    inc = t[1:] - t[:-1]
    assert bool((inc[1:] < inc[:-1]).all())  # steps shrink toward t = 1
    assert math.isclose(float(inc[-1]), 1e-4, rel_tol=1e-9)  # the last is steps ** -power
    assert math.isclose(float(inc[0]), 1 - 0.99 ** 2, rel_tol=1e-9)
    torch.testing.assert_close(t[50], torch.tensor(0.75, dtype=torch.float64))
    toward_zero = power_grid(10, 0.5, dtype=torch.float64)
    check_grid(toward_zero)
    assert float(toward_zero[1] - toward_zero[0]) < float(toward_zero[-1] - toward_zero[-2])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="power"):
            power_grid(10, bad)
    with pytest.raises(ValueError, match="steps"):
        power_grid(0, 2.0)


def test_bridge_log_prob_matches_direct_gaussian():
    bridge = BrownianBridge(sigma2=2.5)
    times = random_grid(7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    states = torch.randn(8, 5, 3, dtype=torch.float64)
    states[0] = 0
    got = bridge.log_prob_steps(states, times)
    assert got.shape == (7, 5)
    assert torch.all(got[0] == 0)
    for k in range(1, 7):
        mean = states[k + 1] * times[k] / times[k + 1]
        var = 2.5 * (times[k + 1] - times[k]) * times[k] / times[k + 1]
        expected = torch.distributions.Normal(mean, var.sqrt()).log_prob(states[k]).sum(-1)
        torch.testing.assert_close(got[k], expected, rtol=1e-10, atol=1e-10)


def test_bridge_backward_marginals():
    sigma2, n = 3.0, 20
    bridge = BrownianBridge(sigma2)
    times = uniform_grid(n, dtype=torch.float64)
    x1 = torch.full((40_000, 1), 2.0, dtype=torch.float64)
    states = bridge.sample_backward(x1, times, torch.Generator().manual_seed(0))
    assert torch.all(states[0] == 0) and torch.all(states[-1] == x1)
    for k in (5, 10, 15):
        t = float(times[k])
        mean, var = 2.0 * t, sigma2 * t * (1 - t)
        assert abs(float(states[k].mean()) - mean) < 4 * math.sqrt(var / 40_000)
        assert abs(float(states[k].var()) / var - 1) < 0.03


def test_zero_drift_policy_is_the_reference_path_measure():
    """log p_F(tau) = log N(x_1; 0, sigma2) + sum_k log p_B(x_k | x_{k+1}) for the untrained policy."""
    sampler = DiffusionSampler(PISPolicy(3), sigma2=1.7).double()
    times = random_grid(12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    class Flat:
        dim = 3

        def log_reward(self, x):
            return x.new_zeros(x.shape[0])

        def grad_log_reward(self, x):
            return torch.zeros_like(x)

    from posterior.paths.path_target import BoltzmannPath
    path = BoltzmannPath(Flat(), sampler.reference)
    traj = sampler.forward_trajectories(64, times, path, generator=torch.Generator().manual_seed(3),
                                        track_gradients=False)
    x1 = traj.samples
    expected = traj.log_q_steps.sum(0) + torch.distributions.Normal(torch.zeros((), dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64).sqrt()).log_prob(x1).sum(-1)
    torch.testing.assert_close(traj.log_pf, expected, rtol=1e-9, atol=1e-9)


def test_vp_log_prob_matches_direct_gaussian_and_its_coefficients():
    from posterior.paths.reference import VPNoising
    vp = VPNoising(sigma2=2.0, beta_min=0.1, beta_max=20.0)
    times = random_grid(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    states = torch.randn(7, 4, 3, dtype=torch.float64)
    got = vp.log_prob_steps(states, times)
    assert got.shape == (6, 4)
    for k in range(6):
        s0, s1 = 1 - float(times[k + 1]), 1 - float(times[k])  # noising time runs backward
        integral = 0.1 * (s1 - s0) + 0.5 * 19.9 * (s1 ** 2 - s0 ** 2)
        a = math.exp(-0.5 * integral)
        expected = torch.distributions.Normal(a * states[k + 1], math.sqrt(2.0 * (1 - a * a))).log_prob(states[k]).sum(-1)
        torch.testing.assert_close(got[k], expected, rtol=1e-10, atol=1e-10)


def test_vp_backward_marginals():
    from posterior.paths.reference import VPNoising
    sigma2, n = 2.0, 20
    vp = VPNoising(sigma2, beta_min=0.1, beta_max=8.0)
    times = uniform_grid(n, dtype=torch.float64)
    x1 = torch.full((40_000, 1), 3.0, dtype=torch.float64)
    states = vp.sample_backward(x1, times, torch.Generator().manual_seed(0))
    assert torch.all(states[-1] == x1)
    for k in (0, 5, 10, 15):
        s = 1 - float(times[k])
        alpha = math.exp(-0.5 * (0.1 * s + 0.5 * 7.9 * s * s))
        mean, var = 3.0 * alpha, sigma2 * (1 - alpha ** 2)
        assert abs(float(states[k].mean()) - mean) < 4 * math.sqrt(var / 40_000)
        assert abs(float(states[k].var()) / var - 1) < 0.03


@pytest.mark.parametrize("reference", ["brownian", "vp"])
def test_zero_drift_policy_is_exact_for_the_reference_marginal(reference):
    """Target Z * (reference marginal at t = 1): log p_F - log Q = -log Z for every trajectory,
    forward or backward, on a random grid (the start density is part of log p_F for VP)."""
    from posterior.paths.path_target import BoltzmannPath
    from posterior.paths.reference import VPNoising
    sigma2, log_z = 1.7, 0.4
    ref = BrownianBridge(sigma2) if reference == "brownian" else VPNoising(sigma2)
    sampler = DiffusionSampler(PISPolicy(3), sigma2=sigma2, reference=ref).double()

    class Scaled:
        dim = 3

        def log_reward(self, x):
            return log_z + ref.log_marginal(x, x.new_ones(()))

        def grad_log_reward(self, x):
            return -x / sigma2

    path = BoltzmannPath(Scaled(), ref)
    times = random_grid(12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    forward = sampler.forward_trajectories(64, times, path, generator=g, track_gradients=False)
    backward = sampler.backward_trajectories(torch.randn(64, 3, generator=g, dtype=torch.float64), times, path,
                                             generator=g, track_gradients=False)
    for traj in (forward, backward):
        torch.testing.assert_close(traj.log_pf - traj.log_q, torch.full((64,), -log_z, dtype=torch.float64),
                                   rtol=0, atol=1e-9)
    if reference == "vp":
        assert float(forward.states[0].std()) > 0.5  # a random start


@pytest.mark.parametrize("base", ["brownian", "vp"])
def test_learned_backward_starts_at_its_base_and_its_kernels_are_what_it_samples(base):
    from posterior.samplers.learned_backward import LearnedBackward
    from posterior.paths.reference import VPNoising
    ref = BrownianBridge(1.5) if base == "brownian" else VPNoising(1.5)
    learned = LearnedBackward(ref, 2).double()
    times = random_grid(9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    states = ref.sample_backward(torch.randn(16, 2, dtype=torch.float64), times, torch.Generator().manual_seed(1))
    torch.testing.assert_close(learned.log_prob_steps(states, times), ref.log_prob_steps(states, times))
    # perturb the network: sampling and log_prob must describe the same kernels. One step from
    # a fixed x_{k+1}: the empirical mean/variance of x_k match the log-density's Gaussian.
    with torch.no_grad():
        for p in learned.net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2), dtype=p.dtype))
    x1 = torch.full((20_000, 2), 0.7, dtype=torch.float64)
    two = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    with torch.no_grad():
        sampled = learned.sample_backward(x1, two, torch.Generator().manual_seed(3))[1]
        scale, var = learned.backward_coefficients(two)
        mean, log_var = learned._kernels(x1[None], two[2:], scale[1:], var[1:])
    standard_error = (log_var[0, 0].exp() / x1.shape[0]).sqrt()
    assert bool(((sampled.mean(0) - mean[0, 0]).abs() < 4 * standard_error).all())
    torch.testing.assert_close(sampled.var(0), log_var[0, 0].exp(), atol=0, rtol=0.05)
    assert (mean[0, 0] - scale[1] * 0.7).abs().max() > 1e-3  # the perturbation moved the mean
    learned.zero_grad()
    learned.log_prob_steps(states, times).sum().backward()
    assert all(p.grad is not None for p in learned.net.parameters())
