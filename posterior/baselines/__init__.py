"""Baselines a posterior sampler is compared with: training-free guidance (DPS, CG, SIR),
annealed SMC and MALA, and a VAE's own encoder."""
