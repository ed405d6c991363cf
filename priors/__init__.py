"""Generative priors behind one small protocol (VAE decoders, diffusion models, generators)."""

__all__: list[str] = []
