"""Data-parallel training through accelerate: gradients averaged across processes in flat buckets.

Every process runs the same :class:`~posterior.training.engine.Trainer` on its own conditions and noise (the
seed is offset by the process index); after each backward pass the trainer hands its parameters to a
``gradient_sync`` callable, and with the same averaged gradient every process takes the same optimizer step.
:func:`bucketed_gradient_sync` does that with one all-reduce per bucket of about ``bucket_mb`` megabytes (the
way DistributedDataParallel buckets a UNet's gradients), instead of one per parameter.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

GradientSync = Callable[[list[nn.Parameter]], None]


def bucketed_gradient_sync(accelerator: Any, *, bucket_mb: float = 25.0) -> GradientSync | None:
    """A ``gradient_sync`` for :func:`posterior.fit` / the Trainer that averages gradients over
    ``accelerator``'s processes (None for one process: nothing to average).

    Parameters without a gradient are skipped (the optimizer skips them too); every process of one run has
    gradients for the same parameters at the same iteration (the same kind of batch), so all reduce the same
    buckets in the same order.
    """
    if not bucket_mb > 0:
        raise ValueError(f"bucket_mb must be positive, got {bucket_mb}")
    if accelerator.num_processes == 1:
        return None
    limit = int(bucket_mb * 2 ** 20)

    def sync(parameters: list[nn.Parameter]) -> None:
        bucket: list[nn.Parameter] = []
        size = 0
        for p in parameters:
            if p.grad is None:
                continue
            bucket.append(p)
            size += p.numel() * p.element_size()
            if size >= limit:
                _reduce(accelerator, bucket)
                bucket, size = [], 0
        if bucket:
            _reduce(accelerator, bucket)

    return sync


def _reduce(accelerator: Any, bucket: list[nn.Parameter]) -> None:
    flat = torch.cat([p.grad.reshape(-1) for p in bucket])
    flat = accelerator.reduce(flat, reduction="mean")
    offset = 0
    for p in bucket:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def end_run(accelerator: Any) -> None:
    """End a multi-process run cleanly: wait until every process gets here, then close ``accelerator``'s trackers
    and destroy its process group (``Accelerator.end_training``). Without the barrier a process that finishes first
    tears down its gloo connections while another is still using them, which can abort it at exit ("terminate
    called without an active exception"). Call it once on every process, after the last collective."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
