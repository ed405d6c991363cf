"""Condition encoders: map a condition y (B, *cond_shape) to policy context (B, hidden)."""

from __future__ import annotations

import math

from torch import Tensor, nn


class MLPConditionEncoder(nn.Module):
    """Flatten y and apply a two-layer GELU MLP.

    Args:
        cond_shape: shape of one condition.
        hidden: output width (the policy's hidden width).
    """

    def __init__(self, cond_shape: tuple[int, ...], hidden: int = 64, width: int = 256) -> None:
        super().__init__()
        self.cond_shape = tuple(cond_shape)
        size = int(math.prod(self.cond_shape))
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(size, width), nn.GELU(), nn.Linear(width, hidden))

    def forward(self, y: Tensor) -> Tensor:
        """y: (B, *cond_shape) -> (B, hidden)."""
        return self.net(y)


class ConvConditionEncoder(nn.Module):
    """Small CNN for image conditions (B, C, H, W) or flattened square images (B, H*W).

    Args:
        cond_shape: (C, H, W), or (P,) with P a square number (one channel).
        hidden: output width.
    """

    def __init__(self, cond_shape: tuple[int, ...], hidden: int = 64, channels: int = 32) -> None:
        super().__init__()
        self.cond_shape = tuple(cond_shape)
        if len(self.cond_shape) == 1:
            side = int(round(math.sqrt(self.cond_shape[0])))
            if side * side != self.cond_shape[0]:
                raise ValueError(f"a flat image condition needs a square number of pixels, got {self.cond_shape}")
            self.image_shape = (1, side, side)
        elif len(self.cond_shape) == 3:
            self.image_shape = self.cond_shape
        else:
            raise ValueError(f"cond_shape must be (C, H, W) or (P,), got {self.cond_shape}")
        c = self.image_shape[0]
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * channels, hidden))

    def forward(self, y: Tensor) -> Tensor:
        """y: (B, *cond_shape) -> (B, hidden)."""
        return self.net(y.reshape(y.shape[0], *self.image_shape))


class LabelEncoder(nn.Module):
    """Integer class labels y (B,) in [0, num_classes) -> (B, hidden), a learned table."""

    def __init__(self, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.cond_shape = ()
        self.table = nn.Embedding(int(num_classes), hidden)

    def forward(self, y: Tensor) -> Tensor:
        """y: (B,) integer labels -> (B, hidden)."""
        return self.table(y.long())


def auto_encoder_kind(cond_shape: tuple[int, ...]) -> str:
    """What ``encoder="auto"`` means for float conditions of this shape: "cnn" for images (C, H, W) and flat square
    images of side >= 8, else "mlp"."""
    side = int(round(math.sqrt(cond_shape[0]))) if len(cond_shape) == 1 else 0
    return "cnn" if len(cond_shape) == 3 or (side >= 8 and side * side == cond_shape[0]) else "mlp"


def make_condition_encoder(kind: str, cond_shape: tuple[int, ...], hidden: int = 64,
                           num_classes: int | None = None) -> nn.Module:
    """``"mlp"`` or ``"cnn"`` for float conditions, ``"embedding"`` (with ``num_classes``) for integer labels."""
    if kind == "embedding":
        if num_classes is None:
            raise ValueError("encoder 'embedding' (integer class labels) needs num_classes")
        return LabelEncoder(num_classes, hidden)
    if kind == "mlp":
        return MLPConditionEncoder(cond_shape, hidden)
    if kind == "cnn":
        return ConvConditionEncoder(cond_shape, hidden)
    raise ValueError(f"encoder must be 'mlp', 'cnn' or 'embedding', got {kind!r}")
