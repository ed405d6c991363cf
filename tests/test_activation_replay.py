"""The replayed batched backward must give the gradients of an ordinary autograd pass."""

import pytest
import torch

from constraints import GaussianTarget
from posterior.grids import random_grid
from posterior.networks import PISPolicy
from posterior.objectives import TrajectoryBalance
from posterior.path_target import BoltzmannPath
from posterior.sampler import DiffusionSampler


@pytest.mark.parametrize("langevin,learn_variance,context", [
    (False, False, False), (True, False, False), (False, True, False), (True, True, True)])
def test_replayed_gradients_equal_recomputed(langevin, learn_variance, context):
    torch.manual_seed(0)
    dim, batch, hidden = 3, 16, 64
    policy = PISPolicy(dim, langevin=langevin, learn_variance=learn_variance)
    for p in policy.parameters():  # leave the zero-initialized start: make every path non-trivial
        torch.nn.init.normal_(p, std=0.3)
    sampler = DiffusionSampler(policy, sigma2=1.3).double()
    target = GaussianTarget(mean=torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64),
                            std=torch.tensor([0.7, 1.2, 0.9], dtype=torch.float64))
    path = BoltzmannPath(target, sampler.reference)
    times = random_grid(9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ctx = torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True) if context else None
    traj = sampler.forward_trajectories(batch, times, path, explore=0.3,
                                        generator=torch.Generator().manual_seed(2), context=ctx)
    objective = TrajectoryBalance(log_z_init=0.4).double()
    objective.loss(traj).backward()
    replayed = {n: p.grad.clone() for n, p in sampler.named_parameters() if p.grad is not None}
    ctx_grad = ctx.grad.clone() if context else None

    # reference: recompute the policy on the recorded states with an ordinary autograd graph
    sampler.zero_grad()
    if context:
        ctx.grad = None
    features = sampler.policy.time_features(times[:-1])
    drift, log_var = sampler.evaluate_policy(traj.states, features, traj.scores, ctx)
    log_pf = sampler.log_pf_steps(traj.states, times, drift, log_var)
    torch.testing.assert_close(log_pf, traj.log_pf_steps.detach(), rtol=1e-10, atol=1e-10)
    residual = objective.log_z_param + log_pf.sum(0) - traj.log_q.detach()
    (0.5 * (residual ** 2).mean()).backward()
    assert replayed.keys() == {n for n, p in sampler.named_parameters() if p.grad is not None}
    for name, p in sampler.named_parameters():
        torch.testing.assert_close(replayed[name], p.grad, rtol=1e-8, atol=1e-10, msg=name)
    if context:
        torch.testing.assert_close(ctx_grad, ctx.grad, rtol=1e-8, atol=1e-10)


def test_reusing_the_workspace_before_backward_raises():
    sampler = DiffusionSampler(PISPolicy(2), sigma2=1.0)
    target = GaussianTarget(mean=torch.zeros(2), std=torch.ones(2))
    path = BoltzmannPath(target, sampler.reference)
    times = random_grid(5, generator=torch.Generator().manual_seed(0))
    first = sampler.forward_trajectories(8, times, path)
    sampler.forward_trajectories(8, times, path)  # overwrites the recorded activations
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.log_pf.sum().backward()
