"""Seeded network initialization that leaves the caller's global random state as it was."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def seeded_initialization(seed: int) -> Iterator[None]:
    """Inside the block torch's global generator (which ``nn.Module`` initializers draw from) is seeded
    with ``seed``; on exit the global CPU and CUDA random states are restored, so a library call never
    changes what the user's own code draws next."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
