"""Shared check for trainers with a learning-rate decay."""

from __future__ import annotations

import pytest


def assert_rates_follow_decay(trainer, iterations: int, base_lr: float, decay, fixed_lr: float) -> None:
    """Step ``trainer`` ``iterations`` times; after each step its first parameter group's rate is
    ``base_lr * decay(i)`` and its second group's (log Z) stays ``fixed_lr``."""
    for i in range(iterations):
        trainer.step()
        trainer.iteration += 1
        decayed_group, fixed_group = trainer.optimizer.param_groups
        assert decayed_group["lr"] == pytest.approx(base_lr * decay(i), rel=1e-12)
        assert fixed_group["lr"] == fixed_lr
