"""Train a small DDPM (epsilon prediction) on images, e.g. the CPU-sized MNIST prior of the
classifier-guidance recipe."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from posterior.core.optional import require


def small_unet(sample_size: int, channels: int = 1, widths: tuple[int, ...] = (32, 64)) -> nn.Module:
    """A diffusers ``UNet2DModel`` small enough to train on a CPU (sample_size divisible by
    2^(len(widths) - 1))."""
    UNet2DModel = require("diffusers", "diffusion", "posterior.priors.ddpm_training.small_unet").UNet2DModel

    if sample_size % (2 ** (len(widths) - 1)):
        raise ValueError(f"sample_size {sample_size} must be divisible by {2 ** (len(widths) - 1)}")
    return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                       block_out_channels=widths, layers_per_block=1,
                       down_block_types=("DownBlock2D",) * len(widths), up_block_types=("UpBlock2D",) * len(widths),
                       norm_num_groups=8)


def train_ddpm(unet: nn.Module, scheduler: Any, images: Tensor, *, iterations: int = 3000, batch_size: int = 128,
               lr: float = 1e-3, generator: torch.Generator | None = None, progress: bool = True) -> dict:
    """Epsilon-prediction DDPM training: || eps - unet(sqrt(a_t) x + sqrt(1 - a_t) eps, t) ||^2.

    Args:
        images: (N, C, H, W) in the model's range (e.g. [-1, 1]).
    Returns:
        {"loss": final average loss, "seconds": wall time}.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    device = next(unet.parameters()).device
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=images.dtype)
    total = int(scheduler.config.num_train_timesteps)
    optimizer = torch.optim.Adam(unet.parameters(), lr=lr)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    start, running = time.perf_counter(), []
    unet.train()
    for it in tqdm(range(iterations), disable=not progress, mininterval=2.0):
        idx = torch.randint(images.shape[0], (batch_size,), generator=generator)
        x0 = images[idx].to(device)
        t = torch.randint(total, (batch_size,), generator=generator).to(device)
        eps = torch.randn(x0.shape, generator=generator).to(device=device, dtype=x0.dtype)
        a = alphas[t].view(-1, 1, 1, 1)
        out = unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t)
        loss = F.mse_loss(out.sample if hasattr(out, "sample") else out, eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        running.append(float(loss.detach()))
    unet.eval()
    return {"loss": sum(running[-100:]) / len(running[-100:]), "seconds": time.perf_counter() - start}
