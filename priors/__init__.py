"""Generative priors behind one small protocol (VAE decoders, diffusion models, generators)."""

from .vae import MLPVAE, VAEDecoderPrior, train_vae

__all__: list[str] = ["MLPVAE", "VAEDecoderPrior", "train_vae"]
