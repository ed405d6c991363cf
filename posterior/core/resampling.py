"""One draw per row of importance log-weights: the resampling step of sampling-importance-resampling.

Given K proposals per returned sample with log-weights log w = log (target / proposal), keeping proposal k
with probability w_k / sum_j w_j makes each kept sample a draw of the target in the limit of large K (for
finite K its law lies between the proposal's and the target's). A log-weight of -inf is a legal zero weight
(never kept); NaN, or a row whose every weight is zero, raises. Used by ``Posterior.sample(proposals=K)`` (K
proposals per returned sample) and :func:`posterior.evaluation.posterior_resampling.resample_posterior` (one pool).
"""

from __future__ import annotations

import torch
from torch import Tensor


def pick_by_weight(log_w: Tensor, generator: torch.Generator | None = None, *, draws: int | None = None) -> Tensor:
    """Index of the proposal kept in each row of log-weights (..., K) -> (...) int64, drawn with probabilities
    softmax(log_w) along the last dimension; with ``draws`` = n, n indices per row drawn with replacement
    (..., n) (SIR of n samples from one shared pool of K)."""
    if log_w.ndim < 1 or log_w.shape[-1] < 1:
        raise ValueError(f"log_w must have shape (..., K) with K >= 1, got {tuple(log_w.shape)}")
    nan = torch.isnan(log_w)
    if bool(nan.any()):
        raise ValueError(f"{int(nan.sum())} of {log_w.numel()} importance log-weights are NaN (from the reward or "
                         "the sampler's log-densities)")
    if bool((log_w == float("inf")).any()):
        raise ValueError("importance log-weights must be < +inf (a reward of +inf is not a density)")
    rows = log_w.reshape(-1, log_w.shape[-1]).double()
    empty = ~torch.isfinite(rows.max(-1).values)
    if bool(empty.any()):
        raise ValueError(f"{int(empty.sum())} of {rows.shape[0]} samples have zero weight (reward -inf) on every one "
                         f"of their {rows.shape[-1]} proposals: raise proposals")
    probabilities = torch.softmax(rows, -1)
    if generator is not None and generator.device != probabilities.device:
        probabilities = probabilities.to(generator.device)
    if draws is None:
        return torch.multinomial(probabilities, 1, generator=generator)[:, 0].to(log_w.device).reshape(log_w.shape[:-1])
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
    index = torch.multinomial(probabilities, draws, replacement=True, generator=generator)
    return index.to(log_w.device).reshape(log_w.shape[:-1] + (draws,))
