"""Learned step variances for a posterior fine-tuned from a diffusion prior.

A posterior that keeps the prior's step variances var_k can only shift each step's mean. The exact
posterior's step-k transition is the prior's tilted by the future likelihood,
p_k(x' | x) h_{k+1}(x') / h_k(x), and a log-concave tilt also *narrows* it: for a linear-Gaussian
problem the posterior transition is Gaussian with a smaller variance than the prior's, and a
mean-only family stays short of log Z by a fixed gap however long it trains (about 0.1 nats on a
2-D Gaussian with a 10-step strided prior). This wrapper adds a learned log-scale s_k per step (per
event dimension, or one per step), so step k has variance var_k * exp(s_k):

    model = LearnedVarianceDenoiser(lora_denoiser(prior.denoiser, rank=8), prior)
    posterior = DiffusionPosterior(prior, model)

:class:`posterior.priors.DiffusionPrior` reads the scales through :meth:`LearnedVarianceDenoiser.log_variance_scale`
for sampling and log-densities, so relative trajectory balance, VarGrad, per-step gradient
accumulation and the pathwise KL (:func:`posterior.objectives.pathwise_kl.pathwise_kl`, which then uses the
Gaussian KL of unequal variances) all train them. The scales start at 0 (the prior's variances), so
a fresh posterior still equals the prior. The posterior's frozen final steps keep the prior's
variances (their scales are never used).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from posterior.priors.diffusion import denoise


class LearnedVarianceDenoiser(nn.Module):
    """``model`` plus a learned log-scale of each step's variance.

    Args:
        model: the trainable denoiser (e.g. ``prior.posterior_copy()`` or a LoRA copy), called as
            ``model(x, t)``. A model that shifts the step mean itself (``step_mean_shift``, e.g.
            :class:`posterior.diffusion.guided_denoiser.GuidedDenoiser`) is refused: the wrapper would hide it.
        prior: the :class:`posterior.priors.DiffusionPrior` the posterior is built on (its number of steps,
            event shape and device; not a submodule).
        per_dimension: one scale per step and event dimension ((N, *event_shape)); False: one per
            step ((N,), broadcast over the event).
        max_abs_log_scale: s_k is clamped to [-m, m] when used (the variance stays within a factor
            e^m of the prior's), so a diverging scale cannot make a step deterministic or explode.
    """

    def __init__(self, model: nn.Module, prior, *, per_dimension: bool = True,
                 max_abs_log_scale: float = 5.0) -> None:
        super().__init__()
        if getattr(model, "step_mean_shift", None) is not None:
            raise ValueError("model shifts the step mean itself (e.g. a GuidedDenoiser); LearnedVarianceDenoiser "
                             "would hide that shift: wrap a plain denoiser")
        if not max_abs_log_scale > 0:
            raise ValueError(f"max_abs_log_scale must be positive, got {max_abs_log_scale}")
        self.model = model
        self.max_abs_log_scale = float(max_abs_log_scale)
        shape = tuple(prior.event_shape) if per_dimension else (1,) * len(prior.event_shape)
        self.log_scale = nn.Parameter(torch.zeros((prior.num_steps,) + shape, device=prior.alpha_t.device))

    def log_variance_scale(self, k: int) -> Tensor:
        """s_k, shape (*event_shape) or (1, ...): step k's variance is var_k * exp(s_k)."""
        return self.log_scale[k].clamp(-self.max_abs_log_scale, self.max_abs_log_scale)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return denoise(self.model, x, t)
