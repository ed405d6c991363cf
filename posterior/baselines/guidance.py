"""Training-free baselines for sampling prior x reward under a diffusion prior.

- DPS-style guidance: each ancestral step's mean moves along grad_{x_t} log r(x0_hat(x_t)),
  differentiating through the denoiser, with a fixed step size zeta.
- Classifier guidance on x0_hat: mean += scale * var_k * grad_{x0} log r(x0_hat) / sqrt(a_t)
  (the denoiser's Jacobian taken as 1 / sqrt(a_t) I: no backpropagation through it).
- Sampling-importance-resampling (SIR) of prior samples with weights r^beta: exact in the limit
  of a large pool.
All return samples and the number of denoiser evaluations per returned sample.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from posterior.core.gradients import LogReward, log_reward_gradient
from posterior.core.metrics import effective_sample_size, log_z_importance

def guided_sample(prior, log_reward: LogReward, batch_size: int, *, mode: str = "dps", scale: float = 1.0,
                  generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> tuple[Tensor, float]:
    """Ancestral sampling with reward guidance. mode: "dps" or "x0" (see the module docstring).

    A sample whose log r is -inf at a step is not guided at that step; a NaN log r raises.

    Returns:
        samples (B, *event_shape), denoiser evaluations per sample.
    """
    if mode not in ("dps", "x0"):
        raise ValueError(f"mode must be 'dps' or 'x0', got {mode!r}")
    device = prior.alpha_t.device
    shape = (batch_size,) + tuple(prior.event_shape)
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    for k in range(prior.num_steps):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(mode == "dps")
            x0 = prior.predict_x0(xg, k)
            if mode == "dps":
                grad = log_reward_gradient(log_reward, x0, xg)
            else:
                x0_leaf = x0.detach().requires_grad_(True)
                grad = log_reward_gradient(log_reward, x0_leaf, x0_leaf) / prior.alpha_t[k].sqrt().to(dtype)
        with torch.no_grad():
            mean = prior.coef_x0[k].to(dtype) * x0.detach() + prior.coef_xt[k].to(dtype) * x
            var = float(prior.step_var[k])
            shift = scale * grad if mode == "dps" else scale * var * grad
            noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
            x = mean + shift + math.sqrt(var) * noise
    return x.detach(), float(prior.num_steps)


@torch.no_grad()
def prior_pool(prior, log_reward: LogReward, pool: int, *, chunk: int = 256, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, keep_paths: bool = False) -> tuple[Tensor, Tensor]:
    """``pool`` prior samples drawn ``chunk`` at a time, with their log-rewards (pool,) in float64.

    Returns the terminal states (pool, *event_shape), or with ``keep_paths`` the whole
    trajectories (N + 1, pool, *event_shape).
    """
    xs, logs = [], []
    for start in range(0, pool, chunk):
        states = prior.sample(min(chunk, pool - start), generator=generator, dtype=dtype)
        xs.append(states if keep_paths else states[-1])
        logs.append(log_reward(states[-1]))
    return torch.cat(xs, 1 if keep_paths else 0), torch.cat(logs).double()


@torch.no_grad()
def sampling_importance_resampling(prior, log_reward: LogReward, num_samples: int, *, pool: int = 1024,
                                   beta: float = 1.0, chunk: int = 256, generator: torch.Generator | None = None,
                                   dtype: torch.dtype = torch.float32) -> tuple[Tensor, float, float, float]:
    """Resample ``num_samples`` from ``pool`` prior samples with weights r(x)^beta.

    Returns:
        samples (num_samples, *event_shape), denoiser evaluations per returned sample,
        the effective sample size of the pool's weights (share of the pool), and
        log mean_pool r(x)^beta, the log of an unbiased estimate of Z = E_prior[r(x)^beta].
    """
    x, log_w = prior_pool(prior, lambda x: beta * log_reward(x), pool, chunk=chunk, generator=generator, dtype=dtype)
    idx = torch.multinomial(torch.softmax(log_w, 0), num_samples, replacement=True, generator=generator)
    return (x[idx], prior.num_steps * pool / num_samples, float(effective_sample_size(log_w)),
            float(log_z_importance(log_w)))
