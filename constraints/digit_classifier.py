"""A small CNN digit classifier (its penultimate layer doubles as the feature space for Fréchet
distances), trainable on a CPU in a minute."""

from __future__ import annotations

import json
from pathlib import Path

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


CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def save_classifier(model: SmallCNN, folder: str | Path, *, image_size: int | None = None) -> None:
    """Write ``config.json`` (class name, classes, channels, image size) and ``model.safetensors``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "SmallCNN", "classes": model.head.out_features,
              "channels": model.conv[0].in_channels, "image_size": image_size, "input_range": [-1.0, 1.0]}
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def load_classifier(folder: str | Path) -> SmallCNN:
    """A :class:`SmallCNN` from a folder written by :func:`save_classifier` (safetensors: no code runs), in eval
    mode with frozen weights."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder} (expected a folder written by save_classifier)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from None
    if config.get("_class_name") != "SmallCNN":
        raise ValueError(f"{config_file} describes a {config.get('_class_name')!r}, not a SmallCNN")
    model = SmallCNN(classes=int(config["classes"]), channels=int(config["channels"]))
    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


MNIST14_CLASSIFIER = Path(__file__).resolve().parent / "pretrained" / "mnist14_classifier"


def mnist_classifier() -> SmallCNN:
    """The digit classifier that ships with posterior, matching :func:`posterior.priors.mnist.mnist_prior`
    (14x14 digits in [-1, 1]; trained by ``python recipes/mnist_prior.py`` on MNIST test digits 0..8999;
    ``training.json`` beside its weights records the accuracies)."""
    if not (MNIST14_CLASSIFIER / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"the shipped MNIST classifier is missing from {MNIST14_CLASSIFIER} (a broken "
                                "install?); recreate it with: python recipes/mnist_prior.py")
    return load_classifier(MNIST14_CLASSIFIER)
