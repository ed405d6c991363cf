"""Posterior diffusion models fine-tuned from a diffusion prior (relative trajectory balance).

- :class:`DiffusionPriorPath`: the target path measure log Q(tau) = log p_prior(tau) + beta log r(x_1)
  (the prior's own per-step transitions on its schedule).
- :class:`DiffusionPosterior`: a trainable copy of the prior's denoiser that samples on the same
  schedule with the same variances (so RTB compares Gaussians of equal variance at every step),
  or with learned ones (:class:`posterior.diffusion.learned_variance.LearnedVarianceDenoiser`);
  optionally the last few near-deterministic steps stay the prior's own (``frozen_final_steps``);
  forward trajectories (optionally with extra exploration variance, log-probs always under the
  un-noised model) and backward trajectories from given samples via the forward noising chain.
- :func:`accumulate_gradients_per_step`: the exact gradient of any loss that depends on the policy
  only through the per-step log-probabilities, computed one step at a time. The loss's gradient
  with respect to log p_F,k is a constant coefficient (e.g. the TB residual), so
  grad = sum_k sum_b c_kb grad log p_F,kb can be accumulated with one denoiser graph alive at a
  time, optionally on a random subset of steps (unbiased, rescaled).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from posterior.core.checks import check_no_nan, check_shape
from posterior.core.trajectories import Trajectories
from posterior.diffusion.conditional_denoiser import bind, condition_context, conditional_of

if TYPE_CHECKING:
    from posterior.objectives.base import Objective


# steps with a transition variance below this are "near-deterministic" (a strided DDPM schedule
# ends with two steps of variance ~1e-4); the default threshold for frozen final steps
NEAR_DETERMINISTIC_VARIANCE = 1e-3


class DiffusionPriorPath:
    """log Q = log p_prior(tau) + beta * log r(x_1[, y]).

    Args:
        prior: a :class:`posterior.priors.DiffusionPrior`.
        log_reward: x (B, *event_shape) -> (B,) log r(x) (-inf allowed, NaN raises); with ``conditional``
            (x, y) -> (B,) log r(x, y).
        beta: reward exponent (inverse temperature).
        conditional: the reward takes a condition y per sample; :meth:`bind` gives the path of a batch of
            conditions (a conditional path with none bound cannot score).
    """

    def __init__(self, prior, log_reward: Callable[..., Tensor], beta: float = 1.0, *,
                 conditional: bool = False) -> None:
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.prior, self.reward, self.beta = prior, log_reward, float(beta)
        self.conditional = bool(conditional)
        self.conditions: Tensor | None = None
        self.evaluations = {"log_reward": 0, "grad": 0}

    def bind(self, conditions: Tensor) -> "DiffusionPriorPath":
        """The path of a batch whose trajectory b has condition ``conditions[b]`` (shares the evaluation count)."""
        if not self.conditional:
            raise ValueError("this path's reward is unconditional: it takes no conditions")
        bound = DiffusionPriorPath(self.prior, self.reward, self.beta, conditional=True)
        bound.conditions, bound.evaluations = conditions, self.evaluations
        return bound

    def log_reward(self, x: Tensor) -> Tensor:
        """(B,) beta * log r(x[, y]), validated."""
        self.evaluations["log_reward"] += int(x.shape[0])
        if self.conditional:
            if self.conditions is None:
                raise ValueError("a conditional path needs its batch's conditions: use path.bind(y)")
            check_shape(self.conditions, (x.shape[0],) + tuple(self.conditions.shape[1:]), "conditions")
            value = self.reward(x, self.conditions)
            check_shape(value, (x.shape[0],), "log_reward(x, y)")
        else:
            value = self.reward(x)
            check_shape(value, (x.shape[0],), "log_reward(x)")
        return self.beta * check_no_nan(value, "log_reward")

    @torch.no_grad()
    def log_q_steps(self, states: Tensor, times: Tensor | None = None, *, steps: int | None = None) -> Tensor:
        """(N, B) prior transition log-densities (row 0 includes the start density), or the first ``steps``
        rows only."""
        return self.prior.log_prob_steps(states, steps=steps)


class DiffusionPosterior(nn.Module):
    """A fine-tuned copy of a diffusion prior's denoiser.

    Args:
        prior: the (frozen) :class:`posterior.priors.DiffusionPrior`.
        model: the trainable denoiser (default: a copy of the prior's).
        checkpoint_steps: gradient checkpointing of every step when log p_F is computed with a
            graph (the full-graph alternative to per-step accumulation).
        frozen_final_steps: m >= 0; the last m steps of the schedule use the prior's denoiser, so
            their posterior and prior log-densities are identical and the RTB residual sums the
            first N - m steps only. Meant for near-deterministic final steps (DDPM variance ~1e-4
            at the end of a strided schedule): there a trained mean enters the log-ratio divided by
            the tiny variance, and the per-step gradient is ~30x that of any other step, pure noise
            at initialization (see :meth:`posterior.priors.DiffusionPrior.final_steps_below`). The posterior
            is then exact for the reward averaged over those steps' noise (std ~0.01 per pixel:
            negligible for any smooth reward).
    """

    def __init__(self, prior, model: nn.Module | None = None, *, checkpoint_steps: bool = False,
                 frozen_final_steps: int = 0) -> None:
        super().__init__()
        if not 0 <= frozen_final_steps < prior.num_steps:
            raise ValueError(f"frozen_final_steps must be in [0, {prior.num_steps - 1}] "
                             f"(the prior has {prior.num_steps} steps), got {frozen_final_steps}")
        self.model = model if model is not None else prior.posterior_copy()
        self.checkpoint_steps = checkpoint_steps
        self.frozen_final_steps = int(frozen_final_steps)
        self._prior = (prior,)  # not a submodule: the prior's weights are neither trained nor saved here

    @property
    def prior(self):
        return self._prior[0]

    @property
    def trained_steps(self) -> int:
        """Number of leading steps run by the trainable model."""
        return self.prior.num_steps - self.frozen_final_steps

    def model_for(self, path: DiffusionPriorPath) -> nn.Module:
        """The trainable denoiser as ``model(x, t)``: with the path's bound conditions for a conditional one, and
        a guided one (:class:`~posterior.diffusion.guided_denoiser.GuidedDenoiser`) guided by the path's reward."""
        for_path = getattr(self.model, "for_path", None)
        return for_path(path) if for_path is not None else bind(self.model, path.conditions)

    def context(self, path: DiffusionPriorPath) -> Tensor | None:
        """(B, features) of the bound conditions for a learned log Z(y) (None without conditions)."""
        if path.conditions is None:
            return None
        conditional = conditional_of(self.model)
        return condition_context(path.conditions, None if conditional is None else conditional.num_classes)

    def step_model(self, k: int) -> nn.Module:
        """The denoiser of step k: the trainable model, or the prior's for a frozen final step."""
        return self.model if k < self.trained_steps else self.prior.denoiser

    def _times(self, like: Tensor) -> Tensor:
        return torch.linspace(0.0, 1.0, self.prior.num_steps + 1, device=like.device, dtype=like.dtype)

    def trajectories(self, batch_size: int, path: DiffusionPriorPath, *, explore: float = 0.0,
                     generator: torch.Generator | None = None, track_gradients: bool = True,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Trajectories:
        """Forward trajectories of the posterior (states (N + 1, B, *event_shape)); ``explore`` widens
        only the trained steps (a frozen step's log-ratio is zero whatever its state, so widening it
        would only blur the samples that the reward scores)."""
        if explore < 0:
            raise ValueError(f"explore must be >= 0, got {explore}")
        device = device if device is not None else self.prior.alpha_t.device
        if path.conditions is not None and path.conditions.shape[0] != batch_size:
            raise ValueError(f"batch_size={batch_size} but the path has {path.conditions.shape[0]} conditions bound")
        states, log_pf = self.prior.sample(batch_size, generator=generator, model=self.model_for(path),
                                           model_steps=self.trained_steps, explore=explore,
                                           explore_steps=self.trained_steps, device=device,
                                           dtype=dtype, return_log_probs=True)
        # with gradients a second pass builds the graph; without, the loop's log-probs are exact. The loop ran the
        # frozen final steps with the prior's denoiser: their rows are the prior's and need no second prior pass
        return self.score(states, path, track_gradients=track_gradients,
                          log_pf=None if track_gradients else log_pf,
                          frozen_rows=log_pf[self.trained_steps:])

    def backward_trajectories(self, samples: Tensor, path: DiffusionPriorPath, *,
                              generator: torch.Generator | None = None, track_gradients: bool = True) -> Trajectories:
        """Trajectories ending at given samples (B, *event_shape), drawn by forward noising."""
        check_shape(samples, (None,) + tuple(self.prior.event_shape), "samples")
        states = self.prior.noise_backward(samples.detach(), generator)
        return self.score(states, path, track_gradients=track_gradients)

    def score(self, states: Tensor, path: DiffusionPriorPath, *, track_gradients: bool = True,
              log_pf: Tensor | None = None, frozen_rows: Tensor | None = None) -> Trajectories:
        """Per-step posterior and prior log-densities and the terminal log-reward of given states
        (``log_pf``: the posterior's (N, B) log-densities if already known; ``frozen_rows``: the prior's
        (frozen_final_steps, B) log-densities of the frozen final steps if already known, saving those prior calls)."""
        if frozen_rows is None:
            log_q = path.log_q_steps(states)
        else:
            check_shape(frozen_rows, (self.frozen_final_steps, states.shape[1]), "frozen_rows")
            log_q = torch.cat([path.log_q_steps(states, steps=self.trained_steps), frozen_rows.detach()])
        if log_pf is None:
            with torch.set_grad_enabled(track_gradients):
                log_pf = self.prior.log_prob_steps(states, model=self.model_for(path), steps=self.trained_steps,
                                                   checkpoint_steps=self.checkpoint_steps)
            if self.frozen_final_steps:  # the frozen steps are the prior's own: reuse its rows
                log_pf = torch.cat([log_pf, log_q[self.trained_steps:]])
        return Trajectories(times=self._times(states), states=states, log_pf_steps=log_pf,
                            log_q_steps=log_q, log_reward=path.log_reward(states[-1]),
                            context=self.context(path), path=path)


def accumulate_gradients_per_step(posterior: DiffusionPosterior, traj: Trajectories, objective: Objective, *,
                                  step_fraction: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Backpropagate ``objective.loss`` exactly, one denoiser step at a time.

    ``traj`` may be computed without gradients. The loss is differentiated with respect to the
    per-step log-probabilities (a (N, B) leaf) and the objective's own parameters; then for each
    step k the posterior's log p_F,k is recomputed with a graph and backpropagated with those
    coefficients. With ``step_fraction`` < 1 a random subset of steps is used and rescaled
    (an unbiased estimate of the same gradient). The posterior's frozen final steps have no
    parameters and are skipped.

    Returns:
        the loss value (detached).
    """
    if not 0 < step_fraction <= 1:
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
    leaf = traj.log_pf_steps.detach().requires_grad_(True)
    proxy = Trajectories(times=traj.times, states=traj.states, log_pf_steps=leaf, log_q_steps=traj.log_q_steps,
                         log_reward=traj.log_reward, scores=traj.scores, context=traj.context, path=traj.path)
    loss = objective.loss(proxy)
    loss.backward()
    coefficients = leaf.grad
    prior, states = posterior.prior, traj.states.detach()
    model = posterior.model if traj.path is None else posterior.model_for(traj.path)
    n = posterior.trained_steps
    steps = list(range(n))
    scale = 1.0
    if step_fraction < 1:
        count = max(1, round(step_fraction * n))
        steps = torch.randperm(n, generator=generator)[:count].sort().values.tolist()
        scale = n / count
    for k in steps:
        mean = prior.step_mean(states[k], k, model)
        # the start density is parameter-free
        log_p = prior.log_prob_step(states[k + 1], mean, k, prior.step_variance(k, model))
        (scale * (coefficients[k] * log_p).sum()).backward()
    return loss.detach()
