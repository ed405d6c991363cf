"""Sample-set statistics in a feature space: Fréchet distance and diversity."""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from torch import Tensor


def frechet_distance(features: Tensor, reference: Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two (n, f) feature sets."""
    if features.ndim != 2 or reference.ndim != 2 or features.shape[1] != reference.shape[1]:
        raise ValueError(f"features must be (n, f) and (m, f), got {tuple(features.shape)} and {tuple(reference.shape)}")
    a, b = features.detach().double().cpu().numpy(), reference.detach().double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(root):
        root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root))


def mean_pairwise_distance(features: Tensor) -> float:
    """Mean Euclidean distance between distinct pairs of an (n, f) set (a diversity measure)."""
    n = features.shape[0]
    if n < 2:
        raise ValueError("need at least two samples")
    d = torch.cdist(features.double(), features.double())
    return float(d.sum() / (n * (n - 1)))
