"""Non-amortized baselines: annealed sequential Monte Carlo (SMC) and long-run MALA.

SMC anneals geometrically from the normalized Gaussian pi_0 = N(0, sigma0^2 I) to the target,

    pi_b(x) ∝ pi_0(x)^(1 - b) * R(x)^b,   0 = b_0 < b_1 < ... < b_K = 1,

with incremental importance weights (b_k - b_{k-1}) * (log R(x) - log pi_0(x)), multinomial
resampling when the effective sample size falls below a threshold, and MALA moves that leave
each pi_b invariant. The product of the mean weights between resamplings is an unbiased
estimate of Z (its log is biased low by Jensen's inequality).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from posterior.samplers.mala import AdaptiveMALA
from posterior.paths.path_target import BoltzmannPath
from posterior.paths.reference import LOG_2PI


@dataclass
class BaselineResult:
    """Samples and cost of a non-amortized run.

    Attributes:
        samples: (n, d) final particles / chain states (equally weighted).
        log_z: SMC estimate of log Z, or None (MCMC gives none).
        seconds: wall time.
        evaluations: points at which log R (with its gradient for MALA moves) was evaluated.
        acceptance: mean MALA acceptance rate.
        resamplings: number of resampling events (SMC).
    """

    samples: Tensor
    log_z: float | None
    seconds: float
    evaluations: int
    acceptance: float
    resamplings: int = 0


def _log_gaussian(x: Tensor, var: float) -> Tensor:
    d = x.shape[-1]
    return -0.5 * (x * x).sum(-1) / var - 0.5 * d * (LOG_2PI + math.log(var))


def _tempered_log_density(path: BoltzmannPath, beta: float, variance: float, x: Tensor) -> Tensor:
    """log pi_beta(x) = beta log R(x) + (1 - beta) log N(x; 0, variance I), for 0 < beta <= 1."""
    return beta * path.log_reward(x) + (1.0 - beta) * _log_gaussian(x, variance)


def _tempered_score(path: BoltzmannPath, beta: float, variance: float, x: Tensor) -> Tensor:
    return beta * path.score(x) - (1.0 - beta) * x / variance


def annealed_smc(path: BoltzmannPath, num_particles: int = 2000, *, temperatures: int = 100,
                 mala_steps: int = 5, initial_variance: float = 1.0, step_size: float = 0.01,
                 ess_threshold: float = 0.5, adapt: bool = True,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> BaselineResult:
    """Annealed importance sampling with MALA moves and resampling.

    Args:
        path: the target (log R and its gradient, evaluations counted there).
        num_particles: n.
        temperatures: K, number of annealing steps (b_k = k / K).
        mala_steps: MALA steps per temperature.
        initial_variance: sigma0^2 of the normalized initial Gaussian.
        step_size: initial MALA step size (adapted toward acceptance 0.574 unless ``adapt`` is False).
        ess_threshold: resample when ESS / n falls below this.
    """
    if num_particles < 1 or temperatures < 1 or mala_steps < 0:
        raise ValueError("num_particles and temperatures must be >= 1 and mala_steps >= 0")
    if not 0 < ess_threshold <= 1:
        raise ValueError(f"ess_threshold must be in (0, 1], got {ess_threshold}")
    start = time.perf_counter()
    d = path.dim
    x = math.sqrt(initial_variance) * torch.randn(num_particles, d, generator=generator, device=device, dtype=dtype)
    log_w = x.new_zeros(num_particles)
    log_z = 0.0
    betas = torch.linspace(0.0, 1.0, temperatures + 1).tolist()
    evaluations, acceptance, resamplings = 0, [], 0
    log_r = path.log_reward(x)
    evaluations += num_particles
    h = step_size
    for k in range(1, temperatures + 1):
        log_w = log_w + (betas[k] - betas[k - 1]) * (log_r - _log_gaussian(x, initial_variance))
        ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))) / num_particles
        if ess < ess_threshold or k == temperatures:
            log_z += float(torch.logsumexp(log_w, 0)) - math.log(num_particles)
            idx = torch.multinomial(torch.softmax(log_w, 0), num_particles, replacement=True, generator=generator)
            x, log_r, log_w = x[idx], log_r[idx], torch.zeros_like(log_w)
            resamplings += k < temperatures
        if mala_steps:  # move: MALA invariant for pi_{b_k}
            mala = AdaptiveMALA(partial(_tempered_log_density, path, betas[k], initial_variance),
                                partial(_tempered_score, path, betas[k], initial_variance), step_size=h)
            run = mala.run(x, mala_steps, adapt=adapt, keep=False, generator=generator)
            x, h = run.states, run.step_size
            evaluations += run.evaluations
            acceptance.extend(run.acceptance)
            log_r = path.log_reward(x)
            evaluations += num_particles
    return BaselineResult(samples=x, log_z=log_z, seconds=time.perf_counter() - start, evaluations=evaluations,
                          acceptance=sum(acceptance) / max(1, len(acceptance)), resamplings=resamplings)


def long_run_mala(path: BoltzmannPath, num_chains: int = 2000, *, steps: int = 10_000, burn_in: int = 2000,
                  initial_variance: float = 1.0, step_size: float = 0.01,
                  generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> BaselineResult:
    """Parallel MALA chains from N(0, sigma0^2 I); the step size adapts during burn-in only, and
    the final states are the samples."""
    start = time.perf_counter()
    x = math.sqrt(initial_variance) * torch.randn(num_chains, path.dim, generator=generator, device=device,
                                                  dtype=dtype)
    mala = AdaptiveMALA(path.log_reward, path.score, step_size=step_size)
    run = mala.run(x, steps, burn_in=burn_in, adapt_after_burn_in=False, keep=False, generator=generator)
    return BaselineResult(samples=run.states, log_z=None, seconds=time.perf_counter() - start,
                          evaluations=run.evaluations,
                          acceptance=sum(run.acceptance[burn_in:]) / max(1, steps - burn_in))
