"""The prior's own conditioning: a conditional diffusers UNet used as a prior p(x | c) for one fixed c.

A class-conditional ``UNet2DModel`` (``num_class_embeds`` / ``class_embed_type``) needs ``class_labels``; a
``UNet2DConditionModel`` needs ``encoder_hidden_states`` (e.g. a text encoder's output) and, if it has a class
embedding, ``class_labels``. :class:`FixedConditioning` holds those inputs for one condition and calls the UNet
as ``denoiser(x, t)`` with them repeated over the batch, so the prior, and every posterior fine-tuned from it,
is that conditional model at c. The inputs come as ``DiffusionPrior.from_pretrained(folder, N,
conditioning={...})``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

CONDITIONING_KEYS = ("class_labels", "encoder_hidden_states")


def required_conditioning(unet_class: str, config: dict[str, Any]) -> tuple[str, ...]:
    """Which conditioning inputs a UNet of this class and config needs; refuses (ValueError naming the setting)
    the extra inputs the prior cannot supply."""
    needed = []
    if config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None:
        needed.append("class_labels")
    if unet_class == "UNet2DConditionModel":
        for key in ("addition_embed_type", "time_cond_proj_dim", "encoder_hid_dim_type"):
            if config.get(key) is not None:
                raise ValueError(f"UNet2DConditionModel with {key}={config.get(key)!r} is not supported: it needs "
                                 "inputs beyond encoder_hidden_states and class_labels (e.g. added_cond_kwargs)")
        needed.append("encoder_hidden_states")
    return tuple(needed)


class FixedConditioning(nn.Module):
    """``denoiser(x, t)`` for a conditional UNet at one fixed condition.

    Args:
        denoiser: the conditional UNet.
        class_labels: one class index (int or a 0-d / (1,) long tensor), or None.
        encoder_hidden_states: (L, D) or (1, L, D), or None.
    """

    def __init__(self, denoiser: nn.Module, *, class_labels: int | Tensor | None = None,
                 encoder_hidden_states: Tensor | None = None) -> None:
        super().__init__()
        self.denoiser = denoiser
        if class_labels is not None:
            labels = torch.as_tensor(class_labels)
            if labels.is_floating_point() or labels.numel() != 1:
                raise ValueError(f"conditioning['class_labels'] must be one integer class, got {class_labels!r}")
            num = getattr(getattr(denoiser, "config", None), "num_class_embeds", None)
            if num is not None and not 0 <= int(labels) < int(num):
                raise ValueError(f"conditioning['class_labels'] must be in [0, {num}) (num_class_embeds={num}), "
                                 f"got {int(labels)}")
            self.register_buffer("class_labels", labels.reshape(1).long(), persistent=False)
        else:
            self.class_labels = None
        if encoder_hidden_states is not None:
            states = torch.as_tensor(encoder_hidden_states)
            if states.ndim == 2:
                states = states[None]
            width = getattr(getattr(denoiser, "config", None), "cross_attention_dim", None)
            if states.ndim != 3 or states.shape[0] != 1 or (width is not None and states.shape[-1] != width):
                raise ValueError(f"conditioning['encoder_hidden_states'] must have shape (L, {width}) or "
                                 f"(1, L, {width}) (cross_attention_dim={width}), got {tuple(states.shape)}")
            if not bool(torch.isfinite(states).all()):
                raise ValueError("conditioning['encoder_hidden_states'] contains NaN or inf")
            self.register_buffer("encoder_hidden_states", states.float(), persistent=False)
        else:
            self.encoder_hidden_states = None

    def forward(self, x: Tensor, t: Tensor, **extra: Any) -> Any:
        """``extra`` (e.g. a posterior's own ``class_labels``) goes to the UNet as well."""
        kwargs = dict(extra)
        if self.encoder_hidden_states is not None:
            kwargs["encoder_hidden_states"] = self.encoder_hidden_states.to(x.dtype).expand(
                x.shape[0], *self.encoder_hidden_states.shape[1:])
        if self.class_labels is not None:
            if "class_labels" in kwargs:
                raise ValueError("the prior's UNet takes its own class_labels (fixed conditioning)")
            kwargs["class_labels"] = self.class_labels.expand(x.shape[0])
        return self.denoiser(x, t, **kwargs)


def wrap(unet: nn.Module, unet_class: str, config: dict[str, Any], conditioning: dict[str, Any] | None) -> nn.Module:
    """The UNet itself (no conditioning needed and none given) or a :class:`FixedConditioning` around it;
    a missing input, an unknown key or an input the UNet does not take is refused naming it."""
    conditioning = dict(conditioning or {})
    unknown = sorted(set(conditioning) - set(CONDITIONING_KEYS))
    if unknown:
        raise ValueError(f"conditioning keys {unknown} are not supported (supported: {', '.join(CONDITIONING_KEYS)})")
    needed = required_conditioning(unet_class, config)
    missing = [k for k in needed if conditioning.get(k) is None]
    if missing:
        raise ValueError(f"this {unet_class} is conditional: pass conditioning={{{', '.join(repr(k) + ': ...' for k in missing)}}} "
                         f"(the fixed condition of the prior p(x | c))")
    extra = sorted(k for k, v in conditioning.items() if v is not None and k not in needed)
    if extra:
        raise ValueError(f"conditioning {extra} given, but this {unet_class} takes no such input")
    if not needed:
        return unet
    return FixedConditioning(unet, **{k: conditioning[k] for k in needed})
