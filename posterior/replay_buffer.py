"""FIFO replay buffer of terminal states, with uniform or rank-prioritized sampling.

Rank prioritization (Tripp et al., used by the diffusion-sampler papers): with N stored
states ranked by log-reward (rank 0 = highest), state of rank r is drawn with probability

    w_r / sum_s w_s,   w_r = 1 / (k * N + r).

The buffer keeps its entries in a ring (oldest overwritten first) and, beside it, the
slot order sorted by log-reward. An add merges the sorted batch into that order and drops
the evicted slots, which is linear in N with tiny constants (no re-sort of the buffer);
a prioritized draw samples ranks by inverting the cumulative weights (cached while N is
unchanged), so both stay cheap at a full 600k capacity.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .checks import check_finite, check_no_nan

Prioritization = Literal["uniform", "rank"]


class ReplayBuffer:
    """Terminal states x (d,), their log-rewards and optional conditions, FIFO.

    Args:
        dim: event size d of the stored states.
        capacity: maximum number of entries (oldest are evicted first).
        prioritization: "rank" (weight 1 / (k N + rank)) or "uniform".
        rank_k: the k of the rank weights (smaller: greedier).
        condition_shape: shape of one stored condition, or None for unconditional problems.
        device, dtype: storage placement (conditions keep ``condition_dtype``).
    """

    def __init__(self, dim: int, capacity: int = 600_000, *, prioritization: Prioritization = "rank",
                 rank_k: float = 0.01, condition_shape: tuple[int, ...] | None = None,
                 condition_dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if prioritization not in ("uniform", "rank"):
            raise ValueError(f"prioritization must be 'uniform' or 'rank', got {prioritization!r}")
        if not rank_k > 0:
            raise ValueError(f"rank_k must be positive, got {rank_k}")
        self.dim, self.capacity = int(dim), int(capacity)
        self.prioritization, self.rank_k = prioritization, float(rank_k)
        self.condition_shape = None if condition_shape is None else tuple(condition_shape)
        self.states = torch.empty(capacity, dim, device=device, dtype=dtype)
        self.log_rewards = torch.empty(capacity, device=device, dtype=dtype)
        self.conditions = (None if condition_shape is None else
                           torch.empty((capacity,) + self.condition_shape, device=device, dtype=condition_dtype))
        self.size = 0
        self._next = 0  # ring position of the next write
        self._order = torch.empty(0, dtype=torch.long, device=device)  # slots, log-reward descending
        self._cumulative: Tensor | None = None  # cumulative rank weights, valid while its length == size

    def __len__(self) -> int:
        return self.size

    # ------------------------------------------------------------------ add
    def add(self, states: Tensor, log_rewards: Tensor, conditions: Tensor | None = None) -> None:
        """Append a batch (the oldest entries are evicted when full).

        Args:
            states: (B, d).
            log_rewards: (B,); -inf is a legal zero density (ranked last), NaN raises.
            conditions: (B, *condition_shape) when the buffer stores conditions, else None.
        """
        if states.ndim != 2 or states.shape[1] != self.dim:
            raise ValueError(f"states must have shape (B, {self.dim}), got {tuple(states.shape)}")
        b = states.shape[0]
        if tuple(log_rewards.shape) != (b,):
            raise ValueError(f"log_rewards must have shape ({b},), got {tuple(log_rewards.shape)}")
        check_no_nan(log_rewards, "log_rewards")
        check_finite(states, "states")
        if (conditions is None) != (self.conditions is None):
            need = "a (B, *condition_shape) tensor" if self.conditions is not None else "None"
            raise ValueError(f"conditions must be {need} for this buffer")
        if conditions is not None and tuple(conditions.shape) != (b,) + self.condition_shape:
            raise ValueError(f"conditions must have shape {(b,) + self.condition_shape}, "
                             f"got {tuple(conditions.shape)}")
        if b == 0:
            return
        if b > self.capacity:  # only the newest `capacity` survive
            states, log_rewards = states[-self.capacity:], log_rewards[-self.capacity:]
            conditions = None if conditions is None else conditions[-self.capacity:]
            b = self.capacity
        slots = (self._next + torch.arange(b, device=self.states.device)) % self.capacity
        order = self._order
        overwritten = self.size + b - self.capacity
        if overwritten > 0:  # drop the evicted slots from the sorted order, O(N)
            evicted = torch.zeros(self.capacity, dtype=torch.bool, device=order.device)
            evicted[slots[:overwritten]] = True
            order = order[~evicted[order]]
        self.states[slots] = states.detach().to(self.states)
        self.log_rewards[slots] = log_rewards.detach().to(self.log_rewards)
        if conditions is not None:
            self.conditions[slots] = conditions.detach().to(self.conditions)
        self._order = self._merge(order, slots)
        self._next = int((self._next + b) % self.capacity)
        self.size = min(self.capacity, self.size + b)

    def _merge(self, order: Tensor, new_slots: Tensor) -> Tensor:
        """Merge ``new_slots`` (sorted here) into ``order`` (sorted by descending log-reward)."""
        # Ascending keys for searchsorted: -log_reward (with -inf rewards last = +inf keys).
        new_keys, perm = torch.sort(-self.log_rewards[new_slots])
        new_slots = new_slots[perm]
        old_keys = -self.log_rewards[order]
        # New entries go after equal old ones (older first among ties).
        positions = torch.searchsorted(old_keys, new_keys, right=True)
        m, b = order.numel(), new_slots.numel()
        merged = order.new_empty(m + b)
        new_positions = positions + torch.arange(b, device=order.device)
        is_new = torch.zeros(m + b, dtype=torch.bool, device=order.device)
        is_new[new_positions] = True
        merged[new_positions] = new_slots
        merged[~is_new] = order
        return merged

    # ------------------------------------------------------------------ sample
    def rank_weights(self) -> Tensor:
        """(N,) unnormalized weights of ranks 0..N-1 (all ones when uniform)."""
        ranks = torch.arange(self.size, device=self.states.device, dtype=torch.float64)
        if self.prioritization == "uniform":
            return torch.ones_like(ranks)
        return 1.0 / (self.rank_k * self.size + ranks)

    def sample(self, batch_size: int, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Draw ``batch_size`` entries with replacement.

        Returns:
            states (batch, d), log_rewards (batch,), conditions (batch, *condition_shape) or None.
        """
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = self.states.device
        if self.prioritization == "uniform":
            ranks = torch.randint(self.size, (batch_size,), generator=generator, device=device)
        else:
            if self._cumulative is None or self._cumulative.numel() != self.size:
                weights = self.rank_weights()
                self._cumulative = weights.cumsum(0) / weights.sum()
            u = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
            ranks = torch.searchsorted(self._cumulative, u, right=True).clamp_(max=self.size - 1)
        slots = self._order[ranks]
        conditions = None if self.conditions is None else self.conditions[slots]
        return self.states[slots], self.log_rewards[slots], conditions

    def sorted_log_rewards(self) -> Tensor:
        """(N,) stored log-rewards in rank order (descending)."""
        return self.log_rewards[self._order]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue the same run (stored entries, ring position, order)."""
        n = self.size
        return {"states": self.states[:n].clone(), "log_rewards": self.log_rewards[:n].clone(),
                "conditions": None if self.conditions is None else self.conditions[:n].clone(),
                "size": n, "next": self._next, "order": self._order.clone()}

    def load_state_dict(self, state: dict) -> None:
        n = int(state["size"])
        if n > self.capacity:
            raise ValueError(f"checkpointed buffer holds {n} entries, capacity is {self.capacity}")
        self.states[:n] = state["states"][:n].to(self.states)
        self.log_rewards[:n] = state["log_rewards"][:n].to(self.log_rewards)
        if self.conditions is not None:
            if state["conditions"] is None:
                raise ValueError("checkpointed buffer has no conditions, this buffer stores them")
            self.conditions[:n] = state["conditions"][:n].to(self.conditions)
        self.size, self._next = n, int(state["next"])
        self._order = state["order"].to(device=self.states.device, dtype=torch.long)
        self._cumulative = None
