"""A small CNN digit classifier (its penultimate layer doubles as the feature space for Fréchet
distances), trainable on a CPU in a minute."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """(B, 1, H, W) in [-1, 1] -> logits (B, classes); ``features`` gives the (B, 64) penultimate layer."""

    def __init__(self, classes: int = 10, channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(3), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(32 * 9, 64), nn.GELU())
        self.head = nn.Linear(64, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_classifier(model: nn.Module, images: Tensor, labels: Tensor, *, epochs: int = 3, batch_size: int = 128,
                     lr: float = 2e-3, generator: torch.Generator | None = None) -> float:
    """Cross-entropy training; returns the final training accuracy."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images and labels disagree: {images.shape[0]} vs {labels.shape[0]}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n = images.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(images[s:s + 1024]).argmax(-1) == labels[s:s + 1024]).sum())
                      for s in range(0, n, 1024))
    return correct / n
