"""Generative priors behind one small protocol (VAE decoders, diffusion models, generators)."""

from posterior.priors.diffusion import DiffusionPrior
from posterior.priors.mnist import mnist_prior
from posterior.priors.gaussian_mixture import GaussianMixture, MixtureDenoiser, ring_mixture
from posterior.priors.vae import MLPVAE, EncoderProposal, VAEDecoderPrior, train_vae

__all__: list[str] = ["DiffusionPrior", "EncoderProposal", "GaussianMixture", "MLPVAE", "MixtureDenoiser", "VAEDecoderPrior",
                      "mnist_prior", "ring_mixture", "train_vae"]
