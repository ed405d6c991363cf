"""Where a diffusion posterior spends its KL: per-step decompositions of the path KL.

For a posterior q fine-tuned from a prior p (RTB, VarGrad) with target p(tau) r(x_0)^beta / Z,
log Z - ELBO = KL(q || target), and the ELBO is E_q[beta log r] - sum_k KL_k with
KL_k = E_q[log q_k(x_{k+1} | x_k) - log p_k(x_{k+1} | x_k)], the path KL of step k.

- :func:`sampler_path_kl` measures KL_k of a trained posterior on its own trajectories (exact up to
  Monte Carlo error), with the ELBO, an importance-sampled log Z and the effective sample size.
- :func:`exact_posterior_path_kl` estimates the same decomposition for the *exact* posterior path
  measure, whose step-k transition is p_k(x_{k+1} | x_k) h_{k+1}(x_{k+1}) / h_k(x_k) with
  h_k(x) = E_p[r(x_0)^beta | x_k = x]: KL_k = E_post[log h_{k+1}(x_{k+1}) - log h_k(x_k)], summing to
  E_post[beta log r] - log Z. Posterior paths come from sampling-importance-resampling of prior
  trajectories; h_k from prior continuations. log of a Monte Carlo mean underestimates log h_k
  (Jensen), most where h_k is uncertain (early steps), so the report gives that bias at the start:
  mean log h_0 against log Z.

A sampler whose KL_k far exceeds the exact posterior's at some step spends nats there that buy
little reward (on the MNIST prior of the guidance recipe: the last trained step).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from posterior.baselines.guidance import prior_pool
from posterior.core.metrics import effective_sample_size, log_z_importance
from posterior.evaluation.posterior_resampling import sampled_paths


@dataclass
class PathKLReport:
    """Attributes:
        step_kl: (N,) per-step path KL (nats), one entry per step of the schedule.
        path_kl: their sum.
        mean_log_reward: E[beta log r(x_0)] under the sampled paths.
        elbo: mean_log_reward - path_kl (the sampler's ELBO of log Z; None for the exact posterior).
        log_z: an estimate of log Z (importance sampling with the sampler as proposal, or SIR's pool).
        ess_share: effective sample size of the importance weights, as a share of the samples.
        log_weight_std: standard deviation of the log importance weights (0 for an exact sampler).
        start_bias: exact posterior only: mean log h_0 minus log Z (the Monte Carlo bias of log h at
            the first step; None for a sampler).
    """

    step_kl: list[float]
    path_kl: float
    mean_log_reward: float
    elbo: float | None
    log_z: float
    ess_share: float
    log_weight_std: float
    start_bias: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _importance(log_w: Tensor) -> tuple[float, float, float]:
    """Importance log Z, ESS share and the std of the finite log-weights, for log-weights (n,) where
    -inf is a zero weight."""
    finite = log_w[torch.isfinite(log_w)]
    if finite.numel() == 0:
        return -math.inf, 0.0, math.nan
    std = float(finite.std()) if finite.numel() > 1 else 0.0
    return float(log_z_importance(log_w)), float(effective_sample_size(log_w)), std


@torch.no_grad()
def sampler_path_kl(posterior, path, num_samples: int, *, chunk: int = 64,
                    generator: torch.Generator | None = None) -> PathKLReport:
    """Per-step path KL of ``posterior`` (a :class:`DiffusionPosterior`) against the prior of ``path``
    (a :class:`DiffusionPriorPath`, which also gives beta log r), from ``num_samples`` trajectories.
    Frozen final steps have KL exactly 0."""
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    _, ratio, log_r = sampled_paths(posterior, path, num_samples, chunk=chunk, generator=generator)
    log_w = log_r - ratio.sum(0)  # -inf for a zero-density sample: then the ELBO is -inf
    log_z, ess, std = _importance(log_w)
    step_kl = ratio.mean(1)
    return PathKLReport(step_kl=step_kl.tolist(), path_kl=float(step_kl.sum()), mean_log_reward=float(log_r.mean()),
                        elbo=float(log_w.mean()), log_z=log_z, ess_share=ess, log_weight_std=std)


@torch.no_grad()
def exact_posterior_path_kl(path, *, pool: int = 4096, paths: int = 256, continuations: int = 16, chunk: int = 256,
                            generator: torch.Generator | None = None) -> PathKLReport:
    """Per-step path KL of the exact posterior ∝ p(tau) r(x_0)^beta of ``path`` (a
    :class:`DiffusionPriorPath`: prior, reward and beta) on the prior's schedule.

    Args:
        pool: prior trajectories to resample from; paths: posterior paths kept (SIR).
        continuations: prior continuations per path and step for h_k (more: less bias).
    Costs about pool * N + paths * continuations * N * (N + 1) / 2 denoiser evaluations.
    """
    if paths < 2 or continuations < 1 or pool < paths:
        raise ValueError(f"need paths >= 2, continuations >= 1 and pool >= paths; got pool={pool}, "
                         f"paths={paths}, continuations={continuations}")
    prior = path.prior
    states, log_w = prior_pool(prior, path.log_reward, pool, chunk=chunk, generator=generator, keep_paths=True)
    log_z, ess, _ = _importance(log_w)
    if log_z == -math.inf:
        raise ValueError(f"every one of the {pool} prior samples has zero reward; raise pool")
    chosen = states[:, torch.multinomial(torch.softmax(log_w, 0), paths, replacement=True, generator=generator)]
    log_h = []
    for k in range(prior.num_steps):  # log h_k at the state before step k, from prior continuations
        estimates = [path.log_reward(prior.sample(paths, start=chosen[k], first_step=k, generator=generator)[-1])
                     for _ in range(continuations)]
        log_h.append(torch.logsumexp(torch.stack(estimates).double(), 0) - math.log(continuations))
    log_h.append(path.log_reward(chosen[-1]).double())
    log_h = torch.stack(log_h)  # (N + 1, paths)
    if not bool(torch.isfinite(log_h).all()):
        raise ValueError(f"every one of the {continuations} continuations from some posterior state had zero "
                         "reward, so log h is -inf there; raise continuations")
    step_kl = (log_h[1:] - log_h[:-1]).mean(1)
    return PathKLReport(step_kl=step_kl.tolist(), path_kl=float(step_kl.sum()),
                        mean_log_reward=float(log_h[-1].mean()), elbo=None, log_z=log_z, ess_share=ess,
                        log_weight_std=0.0, start_bias=float(log_h[0].mean()) - log_z)
