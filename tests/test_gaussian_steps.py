"""The fused per-step Gaussian log-density against the same formula written with autograd ops."""

from __future__ import annotations

import math

import pytest
import torch

from posterior.samplers.gaussian_steps import gaussian_step_log_density


def reference_log_density(drift, increment, c, var, clip):
    residual = increment - drift.clamp(-clip, clip) * c[:, None, None]
    d = drift.shape[-1]
    return (-0.5 * (residual * residual).sum(-1) / var[:, None]
            - 0.5 * d * (math.log(2 * math.pi) + var.log())[:, None])


def make_inputs(scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, b, d = 7, 5, 3
    drift = (scale * torch.randn(n, b, d, generator=g, dtype=torch.float64)).requires_grad_()
    increment = torch.randn(n, b, d, generator=g, dtype=torch.float64).requires_grad_()
    c = torch.rand(n, generator=g, dtype=torch.float64) * 0.1 + 0.01
    return drift, increment, c, 2.5 * c


@pytest.mark.parametrize("scale,clip", [(1.0, math.inf), (1.0, 1e4), (3.0, 2.0)])
def test_values_and_gradients_match_autograd(scale, clip):
    drift, increment, c, var = make_inputs(scale)
    if scale > clip:  # the clipped case must actually clip some entries and leave others
        assert 0 < int((drift.abs() > clip).sum()) < drift.numel()
    weights = torch.randn(drift.shape[:2], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fused = gaussian_step_log_density(drift, increment, c, var, clip)
    exact = reference_log_density(drift, increment, c, var, clip)
    torch.testing.assert_close(fused, exact, rtol=1e-12, atol=1e-12)
    grads_fused = torch.autograd.grad((fused * weights).sum(), (drift, increment))
    grads_exact = torch.autograd.grad((exact * weights).sum(), (drift, increment))
    for got, want in zip(grads_fused, grads_exact):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if scale > clip:  # clipped entries get no drift gradient
        assert bool((grads_fused[0][drift.abs() > clip] == 0).all())


def test_gradcheck_in_both_inputs():
    drift, increment, c, var = make_inputs(1.0, seed=2)
    assert torch.autograd.gradcheck(lambda u, a: gaussian_step_log_density(u, a, c, var, 1e4), (drift, increment))


def test_gradient_only_where_asked():
    drift, increment, c, var = make_inputs(1.0)
    increment = increment.detach()
    out = gaussian_step_log_density(drift, increment, c, var)
    (grad,) = torch.autograd.grad(out.sum(), drift)
    assert grad.shape == drift.shape


def test_differentiable_coefficients_are_refused():
    drift, increment, c, var = make_inputs(1.0)
    with pytest.raises(ValueError, match="c and var must be constants"):
        gaussian_step_log_density(drift, increment, c.requires_grad_(), var)


def test_empty_batch_gives_empty_rows():
    drift = torch.zeros(4, 0, 3, requires_grad=True)
    c = torch.full((4,), 0.1)
    out = gaussian_step_log_density(drift, torch.zeros(4, 0, 3), c, c, 1e4)
    assert out.shape == (4, 0)
