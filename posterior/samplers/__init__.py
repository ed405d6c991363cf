"""Samplers and their networks: the Euler-Maruyama Gaussian policy (log p_F), its PIS-style
networks, condition encoders, a learned backward process and MALA kernels."""
