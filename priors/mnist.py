"""The small MNIST diffusion prior that ships with posterior (no download, no training).

A diffusers DDPM pipeline folder (``pretrained/mnist14``): a 651k-parameter ``UNet2DModel`` on 14x14 digits
in [-1, 1] (epsilon prediction, 1000 training timesteps, linear betas, ``clip_sample``), trained by
``python recipes/mnist_prior.py`` on MNIST test digits 0..8999 (digits 9000..9999 held out); its
``training.json`` records the data, settings, loss and time. The matching digit classifier is
:func:`posterior.constraints.digit_classifier.mnist_classifier`.
"""

from __future__ import annotations

from pathlib import Path

from posterior.priors.diffusion import DiffusionPrior

MNIST14 = Path(__file__).resolve().parent / "pretrained" / "mnist14"


def mnist_prior(num_steps: int = 10, **kwargs) -> DiffusionPrior:
    """The shipped 14x14 MNIST DDPM as a :class:`DiffusionPrior` on the scheduler's own ``num_steps`` timesteps
    (event shape (1, 14, 14); ``kwargs`` go to :meth:`DiffusionPrior.from_pretrained`)."""
    if not (MNIST14 / "unet" / "config.json").is_file():
        raise FileNotFoundError(f"the shipped MNIST prior is missing from {MNIST14} (a broken install?); "
                                "recreate it with: python recipes/mnist_prior.py")
    return DiffusionPrior.from_pretrained(MNIST14, num_steps, **kwargs)
