"""Parameter-efficient fine-tuning of a frozen denoiser on vector data: the posterior's output is
the prior's plus a small time-conditioned correction whose last layer starts at zero (so training
starts exactly at the prior)."""

from __future__ import annotations

from torch import Tensor, nn

from posterior.priors.diffusion import denoise

from posterior.samplers.networks import FourierMLP


class ResidualDenoiser(nn.Module):
    """``base(x, t) + correction(x, t / num_train_timesteps)`` for x (B, d), t (B,) timesteps.

    Args:
        base: the frozen prior denoiser (called as ``base(x, t)``; ``.sample`` outputs accepted).
        dim: d.
        num_train_timesteps: scale of the integer timesteps.
        hidden, harmonics: width of the correction and its time embedding.
    """

    def __init__(self, base: nn.Module, dim: int, num_train_timesteps: int = 1000, *, hidden: int = 64,
                 harmonics: int = 32) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.scale = float(num_train_timesteps)
        self.time_embed = FourierMLP(harmonics, hidden, hidden)
        self.state_embed = nn.Linear(dim, hidden)
        last = nn.Linear(hidden, dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.correction = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                        nn.Linear(hidden, hidden), nn.GELU(), last)

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        """``context`` (B, hidden): an encoded condition added to the correction's input (conditional posteriors)."""
        out = denoise(self.base, x, t)
        h = self.state_embed(x) + self.time_embed(t.to(x.dtype) / self.scale)
        if context is not None:
            h = h + context.to(h.dtype)
        return out + self.correction(h)
