"""Data-space posteriors fine-tuned from a diffusion prior (RTB), their parametrizations
(LoRA, residual, guided, learned variance, amortized over conditions) and the noise-space target of a generator."""
