import math

import pytest
import torch

from posterior.grids import check_grid, random_grid, uniform_grid
from posterior.reference import BrownianBridge
from posterior.sampler import DiffusionSampler
from posterior.networks import PISPolicy


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

    from posterior.path_target import BoltzmannPath
    path = BoltzmannPath(Flat(), sampler.reference)
    traj = sampler.forward_trajectories(64, times, path, generator=torch.Generator().manual_seed(3),
                                        track_gradients=False)
    x1 = traj.samples
    expected = traj.log_q_steps.sum(0) + torch.distributions.Normal(torch.zeros((), dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64).sqrt()).log_prob(x1).sum(-1)
    torch.testing.assert_close(traj.log_pf, expected, rtol=1e-9, atol=1e-9)
