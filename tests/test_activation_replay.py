"""The replayed batched backward must give the gradients of an ordinary autograd pass."""

import pytest
import torch

from posterior.constraints import GaussianTarget
from posterior.core.grids import random_grid
from posterior.samplers.networks import PISPolicy
from posterior.objectives import TrajectoryBalance
from posterior.paths.path_target import BoltzmannPath
from posterior.samplers.sampler import DiffusionSampler


@pytest.mark.parametrize("langevin,learn_variance,context,per_dimension", [
    (False, False, False, True), (True, False, False, True), (False, True, False, True), (True, True, True, True),
    (True, False, False, False)])
def test_replayed_gradients_equal_recomputed(langevin, learn_variance, context, per_dimension):
    torch.manual_seed(0)
    dim, batch, hidden = 3, 16, 64
    policy = PISPolicy(dim, langevin=langevin, learn_variance=learn_variance, langevin_per_dimension=per_dimension)
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


@pytest.mark.parametrize("per_dimension", [True, False])
def test_shared_langevin_scale_multiplies_every_coordinate_alike(per_dimension):
    torch.manual_seed(0)
    dim, steps, batch = 4, 5, 6
    policy = PISPolicy(dim, langevin=True, langevin_per_dimension=per_dimension)
    torch.nn.init.normal_(policy.langevin_scale.mlp[-1].weight, std=0.5)  # zero-init joint output: drift = scale · score
    sampler = DiffusionSampler(policy, sigma2=1.0)
    features = policy.time_features(torch.linspace(0.0, 0.8, steps))
    assert features.langevin_scale.shape == (steps, dim if per_dimension else 1)
    scores = torch.randn(steps, batch, dim)
    drift, _ = sampler.evaluate_policy(torch.randn(steps, batch, dim), features, scores)
    ratio = drift / scores  # (N, B, d): the scale each coordinate's score got
    torch.testing.assert_close(ratio, ratio[:, :1, :].expand_as(ratio))  # the scale depends on time only
    spread = (ratio - ratio[..., :1]).abs().max().item()
    assert (spread > 1e-3) if per_dimension else (spread < 1e-6)


@pytest.mark.parametrize("hidden", [0, -3, 2.5, True])
def test_policy_refuses_a_width_that_is_not_a_positive_integer(hidden) -> None:
    with pytest.raises(ValueError, match="hidden: expected a positive integer width"):
        PISPolicy(2, hidden=hidden)
