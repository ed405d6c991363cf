"""Generative priors behind one small protocol (VAE decoders, diffusion models, generators)."""

from .diffusion import DiffusionPrior
from .gaussian_mixture import GaussianMixture, MixtureDenoiser, ring_mixture
from .vae import MLPVAE, VAEDecoderPrior, train_vae

__all__: list[str] = ["DiffusionPrior", "GaussianMixture", "MLPVAE", "MixtureDenoiser", "VAEDecoderPrior",
                      "ring_mixture", "train_vae"]
