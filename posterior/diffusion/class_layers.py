"""Per-class parameters inside a diffusers UNet, for a posterior amortized over integer labels: each layer keeps
the prior's weights and adds a correction indexed by the sample's label, started at zero (the untrained posterior
is the prior for every label).

- :class:`ClassGroupNorm` ("conditional normalization"): a GroupNorm whose affine gets per-class offsets,
  K x C scales and shifts.
- :class:`ClassLoRA`: a Conv2d / Linear plus a per-class low-rank update up[y] @ down[y] of rank r (down random,
  up zero), one adapter per label, computed per sample (a grouped convolution over the batch).

The labels of the batch being evaluated reach the layers through a shared :class:`ClassLabels` holder that
:class:`~posterior.diffusion.conditional_denoiser.ConditionalDenoiser` sets for the duration of one call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ClassLabels:
    """The labels (B,) of the batch the owning denoiser is evaluating (None outside a call)."""

    value: Tensor | None = None

    def get(self, batch: int) -> Tensor:
        if self.value is None:
            raise RuntimeError("a per-class layer needs class labels: call it through its ConditionalDenoiser")
        if self.value.shape[0] != batch:
            raise ValueError(f"{batch} states but {self.value.shape[0]} labels")
        return self.value


class ClassGroupNorm(nn.Module):
    """``norm(x) + n(x) * class_scale[y] + class_shift[y]``: n(x) the normalized x (no affine), offsets (K, C)
    starting at zero. x: (B, C, *)."""

    def __init__(self, norm: nn.GroupNorm, num_classes: int, labels: ClassLabels) -> None:
        super().__init__()
        self.norm = norm
        self.class_scale = nn.Parameter(torch.zeros(num_classes, norm.num_channels))
        self.class_shift = nn.Parameter(torch.zeros(num_classes, norm.num_channels))
        self.labels = labels

    def class_parameters(self) -> list[nn.Parameter]:
        return [self.class_scale, self.class_shift]

    def forward(self, x: Tensor) -> Tensor:
        y = self.labels.get(x.shape[0])
        n = F.group_norm(x, self.norm.num_groups, None, None, self.norm.eps)
        view = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        return self.norm(x) + n * self.class_scale[y].view(view) + self.class_shift[y].view(view)


class ClassLoRA(nn.Module):
    """``base(x) + up[y] @ down[y] x`` per sample: ``down`` (K, r, fan-in) random with variance 1 / fan-in,
    ``up`` (K, out, r) zero. ``base`` a Conv2d (groups 1, zero padding; x (B, C_in, H, W)) or a Linear
    (x (B, ..., in))."""

    def __init__(self, base: nn.Conv2d | nn.Linear, num_classes: int, rank: int, labels: ClassLabels) -> None:
        super().__init__()
        if isinstance(base, nn.Conv2d):
            if base.groups != 1 or base.padding_mode != "zeros" or isinstance(base.padding, str):
                raise ValueError(f"class_rank: per-class adapters take ordinary convolutions (groups 1, numeric zero "
                                 f"padding); got {base}")
            shape = (base.in_channels,) + tuple(base.kernel_size)
            out = base.out_channels
        else:
            shape, out = (base.in_features,), base.out_features
        fan_in = math.prod(shape)
        self.base, self.rank, self.labels = base, int(rank), labels
        self.class_down = nn.Parameter(torch.randn((num_classes, rank) + shape) / fan_in ** 0.5)
        self.class_up = nn.Parameter(torch.zeros(num_classes, out, rank))

    def class_parameters(self) -> list[nn.Parameter]:
        return [self.class_down, self.class_up]

    def forward(self, x: Tensor) -> Tensor:
        y = self.labels.get(x.shape[0])
        down, up = self.class_down[y].to(x), self.class_up[y].to(x)
        if isinstance(self.base, nn.Conv2d):
            b = x.shape[0]
            a = F.conv2d(x.reshape((1, -1) + x.shape[2:]), down.reshape((b * self.rank,) + down.shape[2:]), None,
                         self.base.stride, self.base.padding, self.base.dilation, groups=b)
            a = a.reshape((b, self.rank) + a.shape[2:])
            return self.base(x) + torch.einsum("brhw,bor->bohw", a, up)
        a = torch.einsum("b...i,bri->b...r", x, down)
        return self.base(x) + torch.einsum("b...r,bor->b...o", a, up)


def add_class_layers(unet: nn.Module, num_classes: int, labels: ClassLabels, *, norms: bool = False,
                     rank: int = 0) -> list[nn.Module]:
    """Wrap every GroupNorm of ``unet`` in a :class:`ClassGroupNorm` (``norms``) and every Conv2d / Linear in a
    :class:`ClassLoRA` of rank ``rank`` (> 0); the class embedding table itself is left as it is. Returns the
    added layers."""
    kinds: tuple[type, ...] = ((nn.GroupNorm,) if norms else ()) + ((nn.Conv2d, nn.Linear) if rank else ())
    targets = [(module, name, child) for module in unet.modules() for name, child in module.named_children()
               if isinstance(child, kinds) and not isinstance(module, (ClassGroupNorm, ClassLoRA))]
    added: list[nn.Module] = []
    for module, name, child in targets:
        layer = (ClassGroupNorm(child, num_classes, labels) if isinstance(child, nn.GroupNorm)
                 else ClassLoRA(child, num_classes, rank, labels))
        setattr(module, name, layer)
        added.append(layer)
    if norms and not any(isinstance(layer, ClassGroupNorm) for layer in added):
        raise ValueError("class_norms: the prior's UNet has no GroupNorm layers to condition")
    return added
