"""Per-step log-densities of a fixed-variance Gaussian policy, with a fused backward pass.

Each step of the sampler's kernel is

    x_{k+1} ~ N(m_k x_k + c_k clip(u_k), v_k I),   v_k = sigma2 * c_k,

so that, with the increment a_k = x_{k+1} - m_k x_k and the residual r_k = a_k - c_k clip(u_k),

    log p_F,k = -|r_k|^2 / (2 v_k) - d/2 (log 2 pi + log v_k),
    d log p_F,k / d u_k = (c_k / v_k) r_k 1[|u_k| <= clip],   d log p_F,k / d a_k = -r_k / v_k.

Written with autograd ops this is a chain of five elementwise passes over the (N, B, d)
trajectory forward and as many backward (plus three for the clamp); it is the largest
elementwise cost of a training iteration after the network itself. :class:`GaussianStepLogDensity`
computes the forward in four passes (clip, residual, squared sum, and a min/max check of the
clip), keeps r_k, and its backward is one pass per differentiable input (plus the clip mask
only when some entry was clipped).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from posterior.paths.reference import LOG_2PI


class GaussianStepLogDensity(torch.autograd.Function):
    """log N(a_k; c_k clip(u_k), v_k I) for every step and trajectory.

    Forward args:
        drift: (N, B, d) unclipped drift u (differentiable).
        increment: (N, B, d) a = x_{k+1} - m_k x_k (differentiable, e.g. through PIS's states).
        c: (N,) drift coefficient of each step (no gradient).
        var: (N,) step variance v (no gradient).
        clip: the drift is clipped to [-clip, clip] (``math.inf``: no clipping).
    Returns:
        (N, B) per-step log-densities.
    """

    @staticmethod
    def forward(ctx, drift: Tensor, increment: Tensor, c: Tensor, var: Tensor, clip: float) -> Tensor:
        clipped = drift if math.isinf(clip) else drift.clamp(-clip, clip)
        residual = torch.addcmul(increment, clipped, c[:, None, None], value=-1.0)
        d = drift.shape[-1]
        log_density = (residual * residual).sum(-1).mul_((-0.5 / var)[:, None])
        log_density.sub_((0.5 * d * (LOG_2PI + var.log()))[:, None])
        # The mask of clipped entries is only needed (and only kept) when some entry was clipped.
        outside = None
        if not math.isinf(clip) and ctx.needs_input_grad[0] and drift.numel() > 0:
            low, high = torch.aminmax(drift)
            if bool(low < -clip) or bool(high > clip):
                outside = drift.abs() > clip
        ctx.save_for_backward(residual, c, var, outside)
        return log_density

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        residual, c, var, outside = ctx.saved_tensors
        grad_drift = grad_increment = None
        if ctx.needs_input_grad[0]:
            grad_drift = residual * (grad * (c / var)[:, None])[:, :, None]
            if outside is not None:
                grad_drift.masked_fill_(outside, 0.0)
        if ctx.needs_input_grad[1]:
            grad_increment = residual * (grad * (-1.0 / var)[:, None])[:, :, None]
        return grad_drift, grad_increment, None, None, None


def gaussian_step_log_density(drift: Tensor, increment: Tensor, c: Tensor, var: Tensor,
                              clip: float = math.inf) -> Tensor:
    """Per-step log N(increment; c * clip(drift), var I), summed over the last axis.

    Args:
        drift: (N, B, d) drift before clipping.
        increment: (N, B, d) x_{k+1} - m_k x_k.
        c: (N,) drift coefficients; var: (N,) step variances (both constants).
        clip: clipping bound of the drift (inf: none).
    Returns:
        (N, B).
    """
    if c.requires_grad or var.requires_grad:
        raise ValueError("c and var must be constants (no gradient) in gaussian_step_log_density")
    return GaussianStepLogDensity.apply(drift, increment, c, var, float(clip))
