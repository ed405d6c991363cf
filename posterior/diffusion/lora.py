"""Low-rank adapters (LoRA) on a copy of a prior's denoiser: the parameter-efficient posterior.

Relative trajectory balance fine-tunes a copy of the prior's denoiser into the posterior's. With
LoRA (via the ``peft`` library) the copy's own weights stay frozen and every chosen ``Linear`` /
``Conv2d`` layer gains a trainable low-rank update ``(alpha / rank) * B A``; ``B`` starts at zero,
so the adapted model starts exactly at the prior (the RTB residual is log Z at the first step),
and the optimizer keeps state only for the adapters. This is how the RTB paper fine-tunes large
text-to-image priors (rank 32, lr 1e-5).

    model = lora_denoiser(prior.denoiser, rank=8)
    posterior = DiffusionPosterior(prior, model)   # the Trainer trains only requires_grad params

Checkpoints of :class:`posterior.training.engine.Trainer` store the adapted model's whole state
(frozen copy and adapters); to resume, rebuild the model with the same arguments first.
"""

from __future__ import annotations

import copy
from typing import Sequence

from torch import nn

from posterior.core.optional import require

ADAPTABLE_LAYERS = (nn.Linear, nn.Conv2d)


def adaptable_layer_names(model: nn.Module) -> list[str]:
    """Names of every ``Linear`` and ``Conv2d`` submodule of ``model`` (the default targets)."""
    return [name for name, module in model.named_modules() if isinstance(module, ADAPTABLE_LAYERS)]


def lora_denoiser(denoiser: nn.Module, rank: int = 8, *, alpha: float | None = None,
                  target_modules: Sequence[str] | None = None, dropout: float = 0.0) -> nn.Module:
    """A copy of ``denoiser`` whose weights are frozen, with trainable LoRA adapters.

    Args:
        denoiser: the prior's denoiser (left unchanged: the adapters go on a deep copy).
        rank: the adapters' rank r >= 1.
        alpha: LoRA scaling numerator (the update is scaled by alpha / r); default r (scale 1).
        target_modules: names of the ``Linear`` / ``Conv2d`` submodules to adapt (default: all of
            them, :func:`adaptable_layer_names`).
        dropout: dropout on the adapters' input, in [0, 1).
    Returns:
        the adapted copy: called like ``denoiser``, equal to it until the adapters are trained;
        only the adapters' parameters require gradients.
    """
    peft = require("peft", "diffusion", "posterior.diffusion.lora")
    LoraConfig, inject_adapter_in_model = peft.LoraConfig, peft.inject_adapter_in_model

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    available = adaptable_layer_names(denoiser)
    targets = list(available if target_modules is None else target_modules)
    if not targets:
        raise ValueError("target_modules: the denoiser has no Linear or Conv2d layer to adapt"
                         if target_modules is None else "target_modules must name at least one layer")
    unknown = sorted(set(targets) - set(available))
    if unknown:
        raise ValueError(f"target_modules {unknown} are not Linear or Conv2d layers of the denoiser "
                         f"(those are: {available})")
    model = copy.deepcopy(denoiser)
    config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), lora_dropout=dropout,
                        target_modules=targets)
    model = inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of parameters of ``model`` that require gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
