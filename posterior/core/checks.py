"""Validation of user-supplied tensors with errors that name the argument."""

from __future__ import annotations

import torch
from torch import Tensor


def check_no_nan(value: Tensor, name: str) -> Tensor:
    """Raise ValueError if ``value`` holds NaN (a bug in the user's model); -inf is allowed."""
    nan = torch.isnan(value)
    if bool(nan.any()):
        rows = nan.reshape(nan.shape[0], -1).any(-1) if nan.ndim > 0 else nan
        first = int(rows.nonzero()[0, 0]) if rows.ndim > 0 else 0
        raise ValueError(f"{name} returned NaN for {int(rows.sum())} of {rows.numel()} inputs "
                         f"(first at batch index {first}); NaN is not a valid log-density, "
                         f"use -inf for zero density")
    return value


def check_finite(value: Tensor, name: str) -> Tensor:
    """Raise ValueError unless every entry is finite."""
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        raise ValueError(f"{name} is not finite in {int(bad.sum())} of {bad.numel()} entries")
    return value


def format_shape(shape) -> str:
    """``(3,)``, ``(B, 2)``: a shape as written in error messages (None prints as B)."""
    inner = ", ".join("B" if e is None else str(e) for e in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def check_shape(value: Tensor, expected: tuple[int | None, ...], name: str) -> Tensor:
    """Raise ValueError unless ``value.shape`` matches ``expected`` (None matches any size)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    ok = value.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, value.shape))
    if not ok:
        raise ValueError(f"{name} must have shape {format_shape(expected)}, got {tuple(value.shape)}")
    return value
