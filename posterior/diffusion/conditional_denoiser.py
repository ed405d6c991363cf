"""A posterior denoiser amortized over conditions y: one fine-tuned copy of a diffusion prior's denoiser for
every y, with y added so that the untrained posterior is exactly the prior.

- Integer class labels (B,): a diffusers UNet gets diffusers' own class conditioning, an
  ``nn.Embedding(num_classes, time_embed_dim)`` whose output is added to the timestep embedding (the UNet's
  config then says ``num_class_embeds``, so ``save_pretrained`` writes a class-conditional ``UNet2DModel`` that
  diffusers loads as it is). The table starts at zero.
  With ``class_norms`` / ``class_rank`` the UNet's layers also get per-class corrections started at zero
  (:mod:`posterior.diffusion.class_layers`: GroupNorm offsets, low-rank adapters per label), so each label
  steers every block directly rather than only through the timestep embedding.
- Float measurements (B, *cond_shape) (e.g. a masked image): an encoder (a small CNN for images, an MLP
  otherwise) maps y to the same embedding width and is passed to the UNet as ``class_labels`` with
  ``class_embed_type="identity"``; its last layer starts at zero.
- A denoiser without a diffusers timestep embedding (an analytic or vector denoiser) is wrapped in a
  :class:`~posterior.diffusion.residual_denoiser.ResidualDenoiser` whose correction reads the encoded y;
  its last layer starts at zero.

:func:`bind` turns the conditional denoiser and a batch of conditions into the ``model(x, t)`` that
:class:`posterior.priors.DiffusionPrior` calls, so sampling, log-densities and per-step gradients work
unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from posterior.diffusion.class_layers import ClassLabels, add_class_layers
from posterior.priors.diffusion import denoise
from posterior.samplers.condition_encoders import auto_encoder_kind, make_condition_encoder


def _zero_last_linear(module: nn.Module) -> None:
    last = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)


def find_unet(model: nn.Module | None) -> nn.Module | None:
    """The diffusers UNet a denoiser is or holds (through ``.model`` of a conditional / guided wrapper and
    ``.denoiser`` of a fixed-conditioning one); None for other denoisers."""
    for _ in range(3):
        if model is None:
            return None
        if hasattr(model, "time_embedding") and hasattr(model, "class_embedding"):
            return model
        model = getattr(model, "model", None) or getattr(model, "denoiser", None)
    return None


class ConditionalDenoiser(nn.Module):
    """``model(x, t, y)``: the prior's denoiser copy conditioned on y.

    Args:
        model: a trainable copy of the prior's denoiser (``prior.posterior_copy()``).
        event_shape: shape of one sample x.
        num_classes: K for integer labels y (B,) in [0, K); None for float conditions.
        cond_shape: shape of one float condition (ignored with ``num_classes``).
        encoder: "auto" (a CNN for images (C, H, W) or square flat ones, else an MLP), "cnn" or "mlp".
        class_norms: with ``num_classes`` and a diffusers UNet, a per-class affine on every GroupNorm
            (:class:`~posterior.diffusion.class_layers.ClassGroupNorm`) besides the class embedding.
        class_rank: likewise, r > 0: a per-class rank-r adapter on every Conv2d / Linear
            (:class:`~posterior.diffusion.class_layers.ClassLoRA`); 0: none.
    """

    def __init__(self, model: nn.Module, event_shape: tuple[int, ...], *, num_classes: int | None = None,
                 cond_shape: tuple[int, ...] | None = None, encoder: str = "auto",
                 class_norms: bool = False, class_rank: int = 0) -> None:
        super().__init__()
        if (num_classes is None) == (cond_shape is None):
            raise ValueError("pass num_classes (integer labels) or cond_shape (float conditions), not both")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.cond_shape = None if cond_shape is None else tuple(int(s) for s in cond_shape)
        unet = find_unet(model)
        if (class_norms or class_rank) and (self.num_classes is None or unet is None):
            raise ValueError("class_norms / class_rank need integer class labels (num_classes) and a diffusers UNet "
                             "denoiser")
        self._labels = ClassLabels()
        self.class_layers: list[nn.Module] = []
        self.encoder: nn.Module | None = None
        if unet is not None:
            if unet.class_embedding is not None:
                raise ValueError("the prior's UNet is class-conditional already (num_class_embeds / class_embed_type): "
                                 "a posterior amortized over conditions adds its own conditioning and needs a prior "
                                 "denoiser without one")
            width = unet.time_embedding.linear_2.out_features
            if self.num_classes is not None:
                unet.class_embedding = nn.Embedding(self.num_classes, width)
                nn.init.zeros_(unet.class_embedding.weight)
                unet.register_to_config(num_class_embeds=self.num_classes)
                self.class_layers = add_class_layers(unet, self.num_classes, self._labels, norms=class_norms,
                                                     rank=class_rank)
            else:
                unet.class_embedding = nn.Identity()
                unet.register_to_config(class_embed_type="identity")
                self.encoder = _encoder(self.cond_shape, width, encoder)
            self.model, self.residual = model, False
        else:
            if len(event_shape) != 1:
                raise ValueError("a conditional posterior of a denoiser without a diffusers timestep embedding needs "
                                 f"vector samples (d,), got event shape {tuple(event_shape)}")
            from posterior.diffusion.residual_denoiser import ResidualDenoiser

            residual = model if isinstance(model, ResidualDenoiser) else ResidualDenoiser(model, event_shape[0])
            hidden = residual.state_embed.out_features
            self.encoder = (nn.Embedding(self.num_classes, hidden) if self.num_classes is not None
                            else _encoder(self.cond_shape, hidden, encoder))
            if self.num_classes is not None:
                nn.init.normal_(self.encoder.weight, std=1.0)  # the correction's last layer is the zero one
            self.model, self.residual = residual, True

    def condition_parameters(self) -> list[nn.Parameter]:
        """The parameters that read y: the class table (in the UNet) and per-class layers, or the encoder (trained
        at ``lr_condition``)."""
        if self.encoder is not None:
            return list(self.encoder.parameters())
        per_class = [p for layer in self.class_layers for p in layer.class_parameters()]
        return list(find_unet(self.model).class_embedding.parameters()) + per_class

    def embed(self, y: Tensor) -> Tensor:
        """What the UNet receives as ``class_labels`` (labels (B,) long, or the encoded y (B, width))."""
        if self.encoder is None:
            return y
        return self.encoder(y if self.num_classes is not None else y.to(self._dtype()))

    def _dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        if self.residual:
            return self.model(x, t, context=self.embed(y))
        if not self.class_layers:
            return denoise(self.model, x, t, class_labels=self.embed(y))
        self._labels.value = y.long()
        try:
            return denoise(self.model, x, t, class_labels=self.embed(y))
        finally:
            self._labels.value = None


class BoundDenoiser(nn.Module):
    """A :class:`ConditionalDenoiser` with a batch of conditions y (B, ...) bound: ``model(x, t)``."""

    def __init__(self, model: ConditionalDenoiser, y: Tensor) -> None:
        super().__init__()
        self.conditional = model
        self.y = y

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{x.shape[0]} states but {self.y.shape[0]} conditions bound")
        return self.conditional(x, t, self.y)


def conditional_of(model: nn.Module) -> "ConditionalDenoiser | None":
    """The :class:`ConditionalDenoiser` a posterior's model is or wraps (a guided one holds it as ``.model``);
    None for an unconditional model."""
    for candidate in (model, getattr(model, "model", None)):
        if isinstance(candidate, ConditionalDenoiser):
            return candidate
    return None


def separate_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(guidance scales, parameters that read y) of a posterior's model: the two groups trained at their own
    rates (``lr_guidance``, ``lr_condition``), and all that trains with ``SamplerConfig.freeze_denoiser``."""
    guidance = getattr(model, "guidance_parameters", None)
    conditional = conditional_of(model)
    return (list(guidance()) if guidance is not None else [],
            list(conditional.condition_parameters()) if conditional is not None else [])


def bind(model: nn.Module, y: Tensor | None) -> nn.Module:
    """``model`` itself without conditions; a :class:`BoundDenoiser` with them."""
    if y is None:
        return model
    if not isinstance(model, ConditionalDenoiser):
        raise ValueError("conditions were given but the posterior's denoiser is unconditional")
    return BoundDenoiser(model, y)


def _encoder(cond_shape: tuple[int, ...], width: int, kind: str) -> nn.Module:
    encoder = make_condition_encoder(auto_encoder_kind(cond_shape) if kind == "auto" else kind, cond_shape, width)
    _zero_last_linear(encoder)
    return encoder


def condition_context(y: Tensor, num_classes: int | None) -> Tensor:
    """(B, features) features of y for a learned log Z(y): one-hot labels, or the flattened float condition."""
    if num_classes is not None:
        return torch.nn.functional.one_hot(y.long(), num_classes).float()
    return y.reshape(y.shape[0], -1).float()


def condition_spec(conditions: Tensor) -> dict[str, Any]:
    """How a :class:`ConditionalDenoiser` is built for these training conditions (saved in configs)."""
    if conditions.is_floating_point():
        return {"num_classes": None, "cond_shape": [int(s) for s in conditions.shape[1:]]}
    return {"num_classes": int(conditions.max()) + 1, "cond_shape": None}
