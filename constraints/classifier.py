"""Classifier likelihoods r(x, c) = p(c | x)^(1/temperature) from any torch image classifier,
including `transformers` image-classification models (outputs with ``.logits``)."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ImageTransform(nn.Module):
    """Explicit input transform for a classifier: value range, resize, channels, normalization.

    Args:
        input_range: the range of the sampler's images (e.g. (-1, 1) for diffusion models).
        classifier_range: the range the classifier expects before normalization (e.g. (0, 1)).
        size: (H, W) to resize to (bilinear, antialiased), or None.
        channels: repeat a single channel to this many (e.g. 3 for RGB models), or None.
        mean, std: per-channel normalization applied last, or None.
    """

    def __init__(self, *, input_range: tuple[float, float] = (-1.0, 1.0),
                 classifier_range: tuple[float, float] = (0.0, 1.0), size: tuple[int, int] | None = None,
                 channels: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.input_range, self.classifier_range = tuple(input_range), tuple(classifier_range)
        self.size, self.channels = (tuple(size) if size is not None else None), channels
        self.register_buffer("mean", None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C', H', W')."""
        if x.ndim != 4:
            raise ValueError(f"images must have shape (B, C, H, W), got {tuple(x.shape)}")
        (a, b), (c, d) = self.input_range, self.classifier_range
        x = (x - a) / (b - a) * (d - c) + c
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if self.channels is not None and x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ValueError(f"can only repeat a single channel, got {x.shape[1]} channels")
            x = x.expand(-1, self.channels, -1, -1)
        if self.mean is not None:
            x = (x - self.mean.to(x)) / self.std.to(x)
        return x


class ClassifierLikelihood(nn.Module):
    """log r(x, c) = log_softmax(logits(transform(x)) / temperature)[c].

    The class comes per sample as the condition y (B,) of integer labels, or is fixed with
    ``target_classes``: one class, or a set whose best class counts (max over the set).

    Args:
        classifier: module mapping images to logits (B, K), or an output with ``.logits``.
        target_classes: default class or classes (used when no y is given).
        transform: input transform (default: identity).
        temperature: softmax temperature (the paper's beta multiplies the log-likelihood instead:
            pass it to the path / fit as ``beta``).
    """

    def __init__(self, classifier: nn.Module, *, target_classes: int | Sequence[int] | None = None,
                 transform: nn.Module | None = None, temperature: float = 1.0) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if not callable(classifier):
            raise TypeError(f"classifier must be a callable (an nn.Module) mapping images to logits (B, K), "
                            f"got {type(classifier).__name__}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be a callable (an nn.Module) or None, got {type(transform).__name__}")
        self.classifier = classifier
        self.transform = transform if transform is not None else nn.Identity()
        classes = [target_classes] if isinstance(target_classes, numbers.Integral) else target_classes
        if classes is not None:
            classes = list(classes)
            if not classes or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 0 for c in classes):
                raise ValueError(f"target_classes must be class indices >= 0 (an int or a non-empty list), "
                                 f"got {classes!r}")
        self.target_classes = None if classes is None else [int(c) for c in classes]
        self.temperature = float(temperature)

    def log_probs(self, x: Tensor) -> Tensor:
        """(B, K) class log-probabilities."""
        out = self.classifier(self.transform(x))
        logits = out.logits if hasattr(out, "logits") else out
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"classifier must return logits of shape (B, K), got {tuple(logits.shape)}")
        return torch.log_softmax(logits / self.temperature, dim=-1)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """(B,) log r(x, y); y (B,) integer classes, or None for ``target_classes``."""
        log_p = self.log_probs(x)
        if y is not None:
            y = y.reshape(-1).long()
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"y must hold one class per image: expected ({x.shape[0]},), got {tuple(y.shape)}")
            if bool(((y < 0) | (y >= log_p.shape[1])).any()):
                raise ValueError(f"y must be class indices in [0, {log_p.shape[1]})")
            return log_p.gather(1, y[:, None].to(log_p.device))[:, 0]
        if self.target_classes is None:
            raise ValueError("pass y (class per image) or set target_classes")
        if max(self.target_classes) >= log_p.shape[1]:
            raise ValueError(f"target_classes must be class indices in [0, {log_p.shape[1]}), got {self.target_classes}")
        return log_p[:, self.target_classes].max(dim=-1).values
