"""The gradient of a user's log-reward, with -inf rows (legal zero densities) and NaNs handled."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from posterior.core.checks import check_no_nan, check_shape

LogReward = Callable[[Tensor], Tensor]


def log_reward_gradient(log_reward: LogReward, x0: Tensor, wrt: Tensor) -> Tensor:
    """grad_wrt sum_b log r(x0_b), for x0 (B, *event_shape) computed from the leaf ``wrt`` (B, ...).

    A row whose log r is -inf (a legal zero density, no direction to follow) gets a zero gradient;
    a NaN log r or gradient raises ValueError (a bug in the user's reward, never guided on).
    ``wrt`` may be ``x0`` itself (gradient in data space) or the noisy state it was denoised from
    (gradient through the denoiser, as DPS takes it). Needs grad mode on. A log r without an autograd
    graph raises ValueError unless every row is -inf.
    """
    log_r = log_reward(x0)
    check_shape(log_r, (x0.shape[0],), "log_reward(x)")
    check_no_nan(log_r, "log_reward")
    finite = torch.isfinite(log_r)
    if not log_r.requires_grad:
        if bool(finite.any()):
            raise ValueError("log_reward(x) must be differentiable in x for guidance (it has no autograd graph: "
                             "computed under torch.no_grad() or detached?)")
        return torch.zeros_like(wrt)  # zero density everywhere: nothing to follow
    (grad,) = torch.autograd.grad(log_r.where(finite, log_r.new_zeros(())).sum(), wrt)
    grad = grad.where(finite.reshape((-1,) + (1,) * (grad.ndim - 1)), grad.new_zeros(()))
    return check_no_nan(grad, "gradient of log_reward")
