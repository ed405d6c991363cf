"""A reward-guided parametrization of a fine-tuned diffusion posterior (the diffusion-prior analogue
of the Langevin parametrization of the Boltzmann sampler).

The posterior's step-k mean is the trainable denoiser's mean plus a learned per-step multiple of the
reward's gradient through the *frozen prior's* x0 estimate (the DPS direction):

    mean_k(x) = mean_theta,k(x) + w_k * var_k * grad_x log r(x0_prior(x, k))

At w_k = 1 this is the first-order posterior correction var_k * grad_x log E[r(x_0) | x_k] of the
prior's kernel (with E[r(x_0) | x_k] ~ r(E[x_0 | x_k])), so training starts near the posterior
instead of at the prior; RTB then corrects what the approximation misses. The guidance term is a
function of the state only (the prior is frozen), so per-step log-densities and their gradients in
theta and w stay exact. It costs one backward pass through the prior's denoiser per step.

The wrapper is a drop-in ``model`` for :class:`posterior.priors.DiffusionPrior` (sampling, log-densities,
per-step gradient accumulation): it denoises as the trainable model does, and
:meth:`posterior.priors.DiffusionPrior.step_mean` adds its :meth:`GuidedDenoiser.step_mean_shift`.

Amortized over conditions y (the trainable model a
:class:`~posterior.diffusion.conditional_denoiser.ConditionalDenoiser`), the guidance follows each sample's own
reward log r(x, y): :meth:`GuidedDenoiser.for_path` binds a batch's conditions and the path's reward, so the
untrained amortized posterior is the first-order guided sampler of every y at once (the condition reaches the
sampler through the reward's gradient from the first iteration, before the condition table or encoder has
learned anything). The per-step scales are shared by all y.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from posterior.diffusion.conditional_denoiser import ConditionalDenoiser, bind
from posterior.priors.diffusion import denoise

from posterior.core.checks import check_no_nan, check_shape
from posterior.core.gradients import log_reward_gradient


class GuidedDenoiser(nn.Module):
    """``model`` plus learned per-step reward guidance, for a posterior of ``prior``.

    Args:
        model: the trainable denoiser (e.g. ``prior.posterior_copy()``), called as ``model(x, t)``.
        prior: the frozen :class:`posterior.priors.DiffusionPrior` (its x0 estimate gives the guidance; not a
            submodule, so neither trained nor saved here).
        log_reward: x (B, *event_shape) -> (B,) beta * log r(x), differentiable in x. Where it is
            -inf (a legal zero density) the guidance is 0; a NaN value or gradient raises. None: the reward
            comes from the path the posterior is scored on (:meth:`for_path`), as
            :class:`~posterior.diffusion.diffusion_posterior.DiffusionPosterior` does; needed for a conditional
            ``model``.
        init_scale: initial w_k, one value for every step (1: the first-order posterior correction)
            or (N,) per step. At high noise the prior's x0 estimate is poor and grad log r(x0_prior)
            overshoots the gradient of log E[r(x_0) | x_k] (on the MNIST prior of the guidance recipe
            the first step alone puts 168 nats of path KL at w = 1), so w_k = a_k (the step's signal
            share alpha_bar, see :meth:`signal_weighted`) is the better start there.
        grad_clip: clip each entry of grad_x log r to [-grad_clip, grad_clip] (None: no clip).
    """

    def __init__(self, model: nn.Module, prior, log_reward: Callable[[Tensor], Tensor] | None = None, *,
                 init_scale: float = 1.0, grad_clip: float | None = None) -> None:
        super().__init__()
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {grad_clip}")
        if log_reward is not None and isinstance(model, ConditionalDenoiser):
            raise ValueError("a GuidedDenoiser around a model amortized over conditions is guided by each sample's "
                             "own reward log r(x, y) from the path: pass log_reward=None")
        self.model = model
        self._prior = (prior,)
        self._log_reward = (log_reward,)
        self.grad_clip = grad_clip
        scale = torch.as_tensor(init_scale, dtype=torch.float32, device=prior.alpha_t.device)
        if scale.ndim == 0:
            scale = scale.expand(prior.num_steps)
        check_shape(scale, (prior.num_steps,), "init_scale")
        check_no_nan(scale, "init_scale")
        self.scale = nn.Parameter(scale.clone())
        self._bound: tuple[object, "_PathGuided"] | None = None  # the last path's bound model (its guidance cache)

    @classmethod
    def signal_weighted(cls, model: nn.Module, prior, log_reward: Callable[[Tensor], Tensor] | None = None,
                        scale: float = 1.0, **kwargs) -> "GuidedDenoiser":
        """Initial w_k = scale * a_k (alpha_bar of step k's start): guidance off at pure noise,
        ``scale`` near the data."""
        return cls(model, prior, log_reward, init_scale=scale * prior.alpha_t.float(), **kwargs)

    def guidance_parameters(self) -> list[nn.Parameter]:
        """The per-step scales w (trained at ``TrainConfig.lr_guidance`` by :class:`posterior.training.engine.Trainer`)."""
        return [self.scale]

    @property
    def prior(self):
        return self._prior[0]

    def for_path(self, path) -> nn.Module:
        """``model(x, t)`` for ``path``: the trainable model bound to the path's conditions, guided by this
        wrapper's own ``log_reward`` if it has one, else by ``path.log_reward`` (beta log r at the bound
        conditions); what :class:`DiffusionPosterior` samples and scores with. The same path object gets the
        same bound model back, so a training iteration computes each step's guidance once (while sampling; the
        per-step gradients reuse it, see :class:`_PathGuided`)."""
        if self._bound is not None and self._bound[0] is path:
            return self._bound[1]
        own = self._log_reward[0]
        bound = _PathGuided(self, bind(self.model, path.conditions), own if own is not None else path.log_reward)
        self._bound = (path, bound)
        return bound

    def guidance(self, x: Tensor, k: int, log_reward: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """var_k * grad_x log r(x0_prior(x, k)), (B, *event_shape), without a graph (``log_reward``: instead of
        the one given at construction)."""
        prior = self.prior
        log_reward = log_reward if log_reward is not None else self._log_reward[0]
        if log_reward is None:
            raise ValueError("this GuidedDenoiser has no log_reward of its own: score it through a path "
                             "(DiffusionPosterior, or for_path(path))")
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            grad = log_reward_gradient(log_reward, prior.predict_x0(leaf, k), leaf)
        if self.grad_clip is not None:
            grad = grad.clamp(-self.grad_clip, self.grad_clip)
        return grad * prior.step_var[k].to(grad)

    def step_mean_shift(self, x: Tensor, k: int, log_reward: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """w_k * var_k * grad_x log r(x0_prior(x, k)), (B, *event_shape)."""
        return self.scale[k].to(x) * self.guidance(x, k, log_reward)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return denoise(self.model, x, t)


class _PathGuided(nn.Module):
    """A :class:`GuidedDenoiser` bound to one path: its (bound) model's output, its scales, the path's reward.

    The guidance term var_k grad log r(x0_prior(x_k)) depends on the state, the step and the path's reward only
    (the prior is frozen), so it is kept per step for the last states seen: rebuilding a sampled trajectory's
    step log-densities with a graph (per-step gradients) then costs no second pass through the prior and the
    reward. A state that differs in any entry is recomputed."""

    def __init__(self, guided: GuidedDenoiser, model: nn.Module, log_reward: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.guided, self.model = guided, model
        self._log_reward = (log_reward,)
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}  # step -> (state, guidance)

    def step_mean_shift(self, x: Tensor, k: int) -> Tensor:
        hit = self._cache.get(k)
        if hit is not None and hit[0].shape == x.shape and hit[0].dtype == x.dtype and torch.equal(hit[0], x):
            guidance = hit[1]
        else:
            guidance = self.guided.guidance(x, k, self._log_reward[0])
            self._cache[k] = (x.detach().clone(), guidance)
        return self.guided.scale[k].to(x) * guidance

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return denoise(self.model, x, t)
