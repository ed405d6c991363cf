"""Reparameterized (pathwise) reverse KL of a posterior fine-tuned from a diffusion prior.

A :class:`~posterior.diffusion.diffusion_posterior.DiffusionPosterior` and its prior share every step's
variance var_k, so on a posterior path x_{k+1} = mu_q(x_k) + sigma_k eps_k the step's log-ratio is

    log q_k - log p_k = |delta_k|^2 / (2 var_k) + delta_k . eps_k / sigma_k,    delta_k = mu_q(x_k) - mu_p(x_k).

Against the target path measure Q(tau) = p_prior(tau) r(x_N)^beta / Z this gives

    KL(q || Q / Z) = E_q[ sum_k |delta_k|^2 / (2 var_k) - beta log r(x_N) ] + log Z,

because eps_k is independent of x_k and the cross term has mean zero. With learned step variances
(:class:`~posterior.diffusion.learned_variance.LearnedVarianceDenoiser`, posterior variance v_k against the
prior's var_k, per dimension) the step term is the Gaussian KL of unequal variances,

    sum [log(var_k / v_k) + (v_k + delta_k^2) / var_k - 1] / 2,    x_{k+1} = mu_q + sqrt(v_k) eps_k.

The loss is a Monte Carlo estimate of that expectation along reparameterized paths: the states are
functions of the weights and the noise, and the reward's gradient enters. Its gradient is an
unbiased gradient of the KL, with the zero-mean cross term left out (it only adds variance). This is the path integral
sampler's objective (:class:`posterior.objectives.PathIntegral`) for a diffusion prior, also known
as KL-regularized reward fine-tuning; it has the same optimum as relative trajectory balance,
p_prior(x) r(x)^beta / Z, but needs a differentiable reward and a graph through the whole path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from posterior.diffusion.diffusion_posterior import DiffusionPosterior, DiffusionPriorPath
from posterior.objectives.base import floor_level


@dataclass
class PathwiseBatch:
    """One batch of reparameterized posterior paths.

    Attributes:
        loss: scalar, mean_b [sum_k |delta_k|^2 / (2 var_k) - beta log r(x_N)] (differentiable;
            log r floored ``-min_log_reward`` below the batch's best, :func:`floor_level`). Its expectation is
            KL - log Z.
        log_ratio: (B,) log q(tau) - log Q(tau) of each path, cross term included and the
            reward not floored (detached): the RTB residual, whose negated mean is an ELBO of log Z.
        states: (N + 1, B, *event_shape) the paths (detached).
    """

    loss: Tensor
    log_ratio: Tensor
    states: Tensor


def pathwise_kl(posterior: DiffusionPosterior, path: DiffusionPriorPath, batch_size: int, *,
                generator: torch.Generator | None = None, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32, min_log_reward: float = -1e4) -> PathwiseBatch:
    """Simulate ``batch_size`` posterior paths with a graph through the states and score them.

    The trained steps run the posterior's model and, for delta_k, the prior's denoiser at the same
    state (both differentiated with respect to the state); the frozen final steps run the prior's
    denoiser (delta = 0), so the reward's gradient flows back through them. With
    ``posterior.checkpoint_steps`` each step's denoiser activations are recomputed in the backward
    pass. A model that shifts the step mean with the reward's own gradient
    (:class:`~posterior.diffusion.guided_denoiser.GuidedDenoiser`) is refused: its shift is computed without
    a second-order graph, so the pathwise gradient through it would be wrong.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prior, model = posterior.prior, posterior.model_for(path)
    if getattr(model, "step_mean_shift", None) is not None:
        raise ValueError("the pathwise KL needs a model without a reward-gradient mean shift (GuidedDenoiser); "
                         "use relative trajectory balance or VarGrad with it")
    device = device if device is not None else prior.alpha_t.device
    x = torch.randn((batch_size,) + tuple(prior.event_shape), generator=generator, device=device, dtype=dtype)
    states = [x.detach()]
    control = x.new_zeros(batch_size)   # sum_k KL_k(x_k): |delta_k|^2 / (2 var_k) at equal variances
    remainder = x.new_zeros(batch_size)  # the zero-mean rest of the path's log-ratio (no gradient needed)

    def run(function, *inputs):
        if posterior.checkpoint_steps and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint
            return checkpoint(function, *inputs, use_reentrant=False)
        return function(*inputs)

    def trained_step(state: Tensor, k: int) -> tuple[Tensor, Tensor]:
        mean = prior.step_mean(state, k, model)
        return mean, mean - prior.step_mean(state, k)

    variances = prior.step_var.tolist()  # once per batch, not a device sync per step
    for k, variance in enumerate(variances):
        noise = torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
        if k < posterior.trained_steps:
            mean, delta = run(trained_step, x, k)
            learned = prior.step_variance(k, model)
            flat, eps = delta.flatten(1), noise.flatten(1)
            if learned is None:  # equal variances
                std = math.sqrt(variance)
                control = control + 0.5 * (flat * flat).sum(-1) / variance
                remainder = remainder + (flat.detach() * eps).sum(-1) / std
            else:  # KL(N(mu_q, v) || N(mu_p, var)) per dimension, and the path's own log-ratio's rest
                v = learned.to(dtype).expand(prior.event_shape).flatten()
                sd = v.sqrt()
                std = sd.reshape(prior.event_shape)
                log_ratio_var = math.log(variance) - v.log()
                control = control + 0.5 * (log_ratio_var + (v + flat * flat) / variance - 1).sum(-1)
                with torch.no_grad():  # log q_k - log p_k - KL_k: zero mean given x_k
                    remainder = remainder + 0.5 * ((v * (eps * eps - 1) + 2 * sd * flat * eps) / variance
                                                   - (eps * eps - 1)).sum(-1)
        else:
            mean, std = run(prior.step_mean, x, k), math.sqrt(variance)
        x = mean + std * noise
        states.append(x.detach())
    log_reward = path.log_reward(x)
    loss = (control - torch.maximum(log_reward, floor_level(log_reward, min_log_reward))).mean()
    log_ratio = (control.detach() + remainder - log_reward.detach())
    return PathwiseBatch(loss=loss, log_ratio=log_ratio, states=torch.stack(states))
