"""Build the trainable posterior of a diffusion prior (data space) from plain settings, the same way
when `fit` starts it and when `Posterior.from_pretrained` restores it."""

from __future__ import annotations

from typing import Any

from posterior.diffusion.diffusion_posterior import NEAR_DETERMINISTIC_VARIANCE, DiffusionPosterior, DiffusionPriorPath


def diffusion_posterior(prior: Any, reward: Any, spec: dict[str, Any]) -> tuple[DiffusionPosterior, DiffusionPriorPath]:
    """(posterior, path) for ``prior`` (a :class:`posterior.priors.DiffusionPrior`) and ``reward`` (a likelihood
    with ``log_likelihood(x)``, or a callable x -> (B,)).

    ``spec``: ``learn_variance`` (learn each step's variance too), ``beta`` (the reward's exponent),
    ``frozen_final_steps`` (None: the prior's near-deterministic final steps stay the prior's), ``lora_rank``
    (train LoRA adapters of that rank on a frozen copy; 0: all weights), ``guidance`` (g > 0: learned per-step
    reward guidance starting at g * alpha_bar_k, :class:`~posterior.diffusion.guided_denoiser.GuidedDenoiser`;
    0: none), ``freeze_denoiser`` (train only what reads y and the guidance scales) and ``condition``
    (None: one unconditional posterior; else ``{"num_classes": K}`` for integer labels or ``{"cond_shape": [...],
    "encoder": "auto" | "cnn" | "mlp"}`` for float conditions (labels may add ``"class_norms": True`` and
    ``"class_rank": r``): one posterior amortized over them, the reward then
    ``log_likelihood(x, y)`` or a callable (x, y) -> (B,)). A denoiser without parameters (an analytic one) gets
    a trainable residual correction.
    """
    from posterior.priors.diffusion import DiffusionPrior

    if not isinstance(prior, DiffusionPrior):
        raise ValueError(f"space='data' needs a posterior.priors.DiffusionPrior, got {type(prior).__name__}; "
                         "use space='noise' for decoders and generators")
    log_r = reward.log_likelihood if hasattr(reward, "log_likelihood") else reward
    if not callable(log_r):
        raise TypeError(f"reward must be a likelihood with log_likelihood(x) or a callable x -> (B,), "
                        f"got {type(reward).__name__}")
    condition = spec.get("condition")
    if condition is not None and spec.get("learn_variance", False):
        raise ValueError("learned step variances (SamplerConfig.learn_variance) are not supported for a diffusion "
                         "posterior amortized over conditions")
    lora_rank = int(spec.get("lora_rank", 0) or 0)
    if lora_rank:
        if not any(True for _ in prior.denoiser.parameters()):
            raise ValueError("SamplerConfig.lora_rank: the prior's denoiser has no layers to adapt")
        from posterior.diffusion.lora import lora_denoiser

        model = lora_denoiser(prior.denoiser, rank=lora_rank)
    else:
        model = prior.posterior_copy()
    if not any(True for _ in model.parameters()):  # an analytic denoiser: learn a residual correction
        if len(prior.event_shape) != 1:
            raise ValueError("the prior's denoiser has no parameters to fine-tune; pass a DiffusionPosterior "
                             "with your own trainable model")
        from posterior.diffusion.residual_denoiser import ResidualDenoiser
        model = ResidualDenoiser(prior.denoiser, prior.event_shape[0])
    if spec.get("learn_variance", False):
        from posterior.diffusion.learned_variance import LearnedVarianceDenoiser
        model = LearnedVarianceDenoiser(model, prior)
    if condition is not None:
        from posterior.diffusion.conditional_denoiser import ConditionalDenoiser

        cond_shape = condition.get("cond_shape")
        model = ConditionalDenoiser(model, tuple(prior.event_shape), num_classes=condition.get("num_classes"),
                                    cond_shape=None if cond_shape is None else tuple(cond_shape),
                                    encoder=condition.get("encoder", "auto"),
                                    class_norms=bool(condition.get("class_norms", False)),
                                    class_rank=int(condition.get("class_rank", 0)))
    guidance = float(spec.get("guidance", 0.0) or 0.0)
    if guidance:
        if spec.get("learn_variance", False):
            raise ValueError("SamplerConfig.guidance does not combine with learn_variance (a guided mean shift and a "
                             "learned variance are not supported together)")
        from posterior.diffusion.guided_denoiser import GuidedDenoiser

        model = GuidedDenoiser.signal_weighted(model, prior, None, guidance)
    if spec.get("freeze_denoiser", False):
        _freeze_denoiser(model, lora_rank)
    frozen = spec.get("frozen_final_steps")
    frozen = prior.final_steps_below(NEAR_DETERMINISTIC_VARIANCE) if frozen is None else int(frozen)
    posterior = DiffusionPosterior(prior, model, frozen_final_steps=frozen)
    return posterior, DiffusionPriorPath(prior, log_r, beta=spec.get("beta", 1.0), conditional=condition is not None)


def _freeze_denoiser(model: Any, lora_rank: int) -> None:
    """Leave only the parameters that read y (class table, per-class norms and adapters, condition encoder) and
    the guidance scales trainable (``separate_parameters``): the fine-tuned copy of the prior's denoiser stays
    the prior's."""
    from posterior.diffusion.conditional_denoiser import separate_parameters

    if lora_rank:
        raise ValueError("SamplerConfig.freeze_denoiser keeps the denoiser's weights frozen; lora_rank trains adapters "
                         "on them: set one of the two")
    guidance, condition = separate_parameters(model)
    keep = guidance + condition
    if not keep:
        raise ValueError("SamplerConfig.freeze_denoiser leaves nothing to train: it needs conditions (a posterior "
                         "amortized over them) or guidance > 0")
    kept = {id(p) for p in keep}
    for p in model.parameters():
        p.requires_grad_(id(p) in kept)
