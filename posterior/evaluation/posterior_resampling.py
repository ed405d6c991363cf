"""Sampling-importance-resampling with a trained diffusion posterior as the proposal.

A fine-tuned posterior q (RTB, VarGrad, pathwise KL) that has not fully converged is mode-seeking:
it concentrates where the reward is high and under-covers the rest of the exact posterior
p(tau) r(x_0)^beta / Z. Its own trajectories, weighted by

    log w(tau) = beta log r(x_0) + log p(tau) - log q(tau)

(frozen final steps contribute exactly 0), and resampled with probabilities softmax(log w), are
draws of the exact posterior in the limit of many proposals, as in SIR over prior samples, with the
trained sampler as the proposal. Its effective sample size per proposal is not always better than
the prior's: a mode-seeking sampler that misses part of the target gets heavy weights there (on the
MNIST recipe 3% against the prior's 9%), one trained with a mass-covering term does better (11%;
BENCHMARKS.md). The same weights give an importance estimate of log Z.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from posterior.core.metrics import effective_sample_size, log_z_importance
from posterior.core.resampling import pick_by_weight


@dataclass
class ResampledPosterior:
    """Attributes:
        samples: (num_samples, *event_shape) terminal states drawn with replacement.
        proposals: number of posterior trajectories that were weighted.
        ess_share: normalized effective sample size of their weights, in (0, 1].
        log_z: importance estimate log mean w of log Z (biased low, consistent).
        distinct: number of distinct proposals among the draws.
    """

    samples: Tensor
    proposals: int
    ess_share: float
    log_z: float
    distinct: int


@torch.no_grad()
def sampled_paths(posterior, path, num_samples: int, *, chunk: int = 64,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``num_samples`` trajectories of ``posterior`` drawn ``chunk`` at a time, scored against ``path``.

    Returns the terminal states (num_samples, *event_shape), the per-step log-ratios
    log q_k - log p_k (N, num_samples) and beta log r of the terminal states (num_samples,), both
    in float64; log w = beta log r - sum_k (log q_k - log p_k) is the importance log-weight.
    """
    states, step_log_ratio, log_r = [], [], []
    for start in range(0, num_samples, chunk):
        traj = posterior.trajectories(min(chunk, num_samples - start), path, generator=generator,
                                      track_gradients=False)
        states.append(traj.samples)
        step_log_ratio.append((traj.log_pf_steps - traj.log_q_steps).double())
        log_r.append(traj.log_reward.double())
    return torch.cat(states), torch.cat(step_log_ratio, 1), torch.cat(log_r)


@torch.no_grad()
def resample_posterior(posterior, path, num_samples: int, *, proposals: int, chunk: int = 64,
                       generator: torch.Generator | None = None) -> ResampledPosterior:
    """Draw ``num_samples`` states by resampling ``proposals`` trajectories of ``posterior`` (a
    :class:`~posterior.diffusion.diffusion_posterior.DiffusionPosterior`) with their importance weights against
    the target of ``path`` (a :class:`~posterior.diffusion.diffusion_posterior.DiffusionPriorPath`: prior,
    reward and beta). A reward of -inf is a zero weight; NaN weights raise."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if proposals < 1:
        raise ValueError(f"proposals must be >= 1, got {proposals}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    x, step_log_ratio, log_r = sampled_paths(posterior, path, proposals, chunk=chunk, generator=generator)
    log_w = log_r - step_log_ratio.sum(0)
    idx = pick_by_weight(log_w, generator, draws=num_samples)
    return ResampledPosterior(samples=x[idx], proposals=proposals, ess_share=float(effective_sample_size(log_w)),
                              log_z=float(log_z_importance(log_w)), distinct=int(idx.unique().numel()))
