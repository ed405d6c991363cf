"""Parallel Metropolis-adjusted Langevin (MALA) chains with an adaptive global step size.

Target pi(x) ∝ exp(beta * log R(x)). Proposal from x with step size h:

    x' = x + h * grad log pi(x) + sqrt(2 h) * xi,     xi ~ N(0, I),
    log q(x' | x) = -|x' - x - h grad log pi(x)|^2 / (4 h)   (+ const),

accepted with probability min(1, pi(x') q(x | x') / (pi(x) q(x' | x))). After each step the
step size moves toward a target acceptance rate (0.574, optimal for MALA): multiplied by
``increase`` when the batch's acceptance is above it, by ``decrease`` otherwise.

A zero density (log R = -inf) is legal: a proposal there is rejected; a chain that starts
there accepts its first finite proposal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

LogDensity = Callable[[Tensor], Tensor]


@dataclass
class MALARun:
    """What a run of parallel chains produced.

    Attributes:
        states: (C, d) final states of the C chains.
        log_rewards: (C,) log R (untempered) at the final states.
        kept_states: (M, d) states accepted after burn-in (every accepted proposal, in order).
        kept_log_rewards: (M,) their log R.
        kept_chains: (M,) index of the chain each kept state belongs to.
        step_size: step size after the run (for the next run to start from).
        acceptance: per-step acceptance rates.
        evaluations: number of points at which log R and its gradient were evaluated.
    """

    states: Tensor
    log_rewards: Tensor
    kept_states: Tensor
    kept_log_rewards: Tensor
    kept_chains: Tensor
    step_size: float
    acceptance: list[float] = field(default_factory=list)
    evaluations: int = 0


@dataclass
class AdaptiveMALA:
    """MALA on exp(beta * log R) with step-size adaptation toward ``target_acceptance``.

    Args:
        log_reward: (C, d) -> (C,) log R (may be -inf).
        grad_log_reward: (C, d) -> (C, d) its gradient.
        step_size: initial h (> 0).
        beta: tempering of the Metropolis-Hastings target (> 0).
        target_acceptance: acceptance rate the step size is steered toward.
        increase, decrease: multiplicative step-size changes above / below the target.
        min_step, max_step: bounds of the adapted step size.
    """

    log_reward: LogDensity
    grad_log_reward: LogDensity
    step_size: float = 0.01
    beta: float = 1.0
    target_acceptance: float = 0.574
    increase: float = 1.1
    decrease: float = 0.9
    min_step: float = 1e-8
    max_step: float = 1e3

    def __post_init__(self) -> None:
        if not self.step_size > 0:
            raise ValueError(f"step_size must be positive, got {self.step_size}")
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not 0 < self.target_acceptance < 1:
            raise ValueError(f"target_acceptance must be in (0, 1), got {self.target_acceptance}")

    def _evaluate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """log R (C,) and the tempered drift grad log pi (C, d), zero where log R = -inf."""
        log_r = self.log_reward(x)
        grad = self.beta * self.grad_log_reward(x)
        grad = torch.where(torch.isfinite(log_r)[:, None] & torch.isfinite(grad), grad, torch.zeros_like(grad))
        return log_r, grad

    def run(self, x: Tensor, steps: int, *, burn_in: int = 0, adapt: bool = True,
            adapt_after_burn_in: bool = True, keep: bool = True,
            generator: torch.Generator | None = None) -> MALARun:
        """Run ``steps`` MALA steps on every chain.

        Args:
            x: (C, d) starting states.
            steps: number of proposals per chain.
            burn_in: accepted states of the first ``burn_in`` steps are not kept.
            adapt: adapt the step size during burn-in.
            adapt_after_burn_in: keep adapting after burn-in (as in local search); set False for
                a chain whose kept states must be exactly invariant for pi.
            keep: collect the states accepted after burn-in (False: only the final states).
            generator: source of all randomness.
        """
        if x.ndim != 2:
            raise ValueError(f"x must have shape (C, d), got {tuple(x.shape)}")
        if steps < 0 or burn_in < 0:
            raise ValueError(f"steps and burn_in must be >= 0, got {steps} and {burn_in}")
        x = x.detach().clone()
        log_r, grad = self._evaluate(x)
        h = float(self.step_size)
        kept_x, kept_r, kept_c, rates = [], [], [], []
        chains = torch.arange(x.shape[0], device=x.device)
        evaluations = x.shape[0]
        for k in range(steps):
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            mean_fwd = x + h * grad
            proposal = mean_fwd + (2.0 * h) ** 0.5 * noise
            log_r_new, grad_new = self._evaluate(proposal)
            evaluations += x.shape[0]
            mean_bwd = proposal + h * grad_new
            log_q_fwd = -((proposal - mean_fwd) ** 2).sum(-1) / (4.0 * h)
            log_q_bwd = -((x - mean_bwd) ** 2).sum(-1) / (4.0 * h)
            finite_old, finite_new = torch.isfinite(log_r), torch.isfinite(log_r_new)
            delta = self.beta * (torch.where(finite_new, log_r_new, torch.zeros_like(log_r_new))
                                 - torch.where(finite_old, log_r, torch.zeros_like(log_r)))
            log_accept = delta + log_q_bwd - log_q_fwd
            log_accept = torch.where(finite_old, log_accept, torch.zeros_like(log_accept))
            u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
            accept = finite_new & (u.log() < log_accept)
            x = torch.where(accept[:, None], proposal, x)
            log_r = torch.where(accept, log_r_new, log_r)
            grad = torch.where(accept[:, None], grad_new, grad)
            rate = float(accept.float().mean())
            rates.append(rate)
            if keep and k >= burn_in:
                kept_x.append(proposal[accept])
                kept_r.append(log_r_new[accept])
                kept_c.append(chains[accept])
            if adapt and (k < burn_in or adapt_after_burn_in):
                h *= self.increase if rate > self.target_acceptance else self.decrease
                h = min(max(h, self.min_step), self.max_step)
        self.step_size = h
        kept_states = torch.cat(kept_x) if kept_x else x.new_empty(0, x.shape[1])
        kept_log_rewards = torch.cat(kept_r) if kept_r else x.new_empty(0)
        kept_chains = torch.cat(kept_c) if kept_c else chains[:0]
        return MALARun(states=x, log_rewards=log_r, kept_states=kept_states,
                       kept_log_rewards=kept_log_rewards, kept_chains=kept_chains, step_size=h, acceptance=rates,
                       evaluations=evaluations)
