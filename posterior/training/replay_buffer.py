"""FIFO replay buffer of terminal states, with uniform or rank-prioritized sampling.

Rank prioritization (Tripp et al., used by the diffusion-sampler papers): with N stored
states ranked by log-reward (rank 0 = highest), state of rank r is drawn with probability

    w_r / sum_s w_s,   w_r = 1 / (k * N + r).

The buffer keeps its entries in a ring (oldest overwritten first) and, for rank
prioritization, the slot order sorted by log-reward. An add merges the sorted batch into
that order and drops the evicted slots, linear in N with small constants (no re-sort);
a prioritized draw samples ranks by inverting the cumulative weights (cached while N is
unchanged), so both stay cheap at a full 600k capacity.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from posterior.core.checks import check_finite, check_no_nan

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
        self._keys = torch.empty(0, device=device, dtype=dtype)  # -log-reward along _order (ascending)
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
        overwritten = self.size + b - self.capacity
        if self.prioritization == "rank" and overwritten > 0:
            self._evict(slots[b - overwritten:])  # the first capacity - size slots are empty
        self.states[slots] = states.detach().to(self.states)
        self.log_rewards[slots] = log_rewards.detach().to(self.log_rewards)
        if conditions is not None:
            self.conditions[slots] = conditions.detach().to(self.conditions)
        if self.prioritization == "rank":
            self._merge(slots)
        self._next = int((self._next + b) % self.capacity)
        self.size = min(self.capacity, self.size + b)

    def _evict(self, slots: Tensor) -> None:
        """Remove ``slots`` (about to be overwritten) from the sorted order, O(N) copies.

        Each slot is found by binary search on its key; among equal keys, by its slot id.
        """
        keys = self._keys
        unique = torch.unique(-self.log_rewards[slots])
        low = torch.searchsorted(keys, unique, right=False).tolist()
        high = torch.searchsorted(keys, unique, right=True).tolist()
        remove: list[int] = []
        for lo, hi in zip(low, high):
            if hi - lo == 1:
                remove.append(lo)
            else:  # ties: match slot ids inside the run of equal keys
                remove.extend((torch.isin(self._order[lo:hi], slots).nonzero()[:, 0] + lo).tolist())
        remove.sort()
        bounds = [-1] + remove + [keys.numel()]
        spans = [(a + 1, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a + 1]
        self._order = torch.cat([self._order[a:b] for a, b in spans]) if spans else self._order[:0]
        self._keys = torch.cat([keys[a:b] for a, b in spans]) if spans else keys[:0]

    def _merge(self, new_slots: Tensor) -> None:
        """Merge ``new_slots`` into the order sorted by descending log-reward, O(N + B log B) with
        contiguous copies only."""
        # Ascending keys -log_reward (a -inf reward is a +inf key, ranked last).
        new_keys, perm = torch.sort(-self.log_rewards[new_slots])
        new_slots = new_slots[perm]
        # New entries go after equal old ones (older first among ties).
        positions = torch.searchsorted(self._keys, new_keys, right=True).tolist()
        orders, keys, prev, start, count = [], [], 0, 0, len(positions)
        for j in range(1, count + 1):  # runs of new entries that share an insertion position
            if j == count or positions[j] != positions[start]:
                pos = positions[start]
                orders += [self._order[prev:pos], new_slots[start:j]]
                keys += [self._keys[prev:pos], new_keys[start:j]]
                prev, start = pos, j
        orders.append(self._order[prev:])
        keys.append(self._keys[prev:])
        self._order, self._keys = torch.cat(orders), torch.cat(keys)

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
        slots = ranks if self.prioritization == "uniform" else self._order[ranks]
        conditions = None if self.conditions is None else self.conditions[slots]
        return self.states[slots], self.log_rewards[slots], conditions

    def sorted_log_rewards(self) -> Tensor:
        """(N,) stored log-rewards in rank order (descending)."""
        if self.prioritization == "uniform":
            return torch.sort(self.log_rewards[: self.size], descending=True).values
        return self.log_rewards[self._order]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue the same run (stored entries, ring position, order)."""
        n = self.size
        return {"states": self.states[:n].clone(), "log_rewards": self.log_rewards[:n].clone(),
                "conditions": None if self.conditions is None else self.conditions[:n].clone(),
                "size": n, "next": self._next, "order": self._order.clone(), "keys": self._keys.clone()}

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
        self._keys = state["keys"].to(self.log_rewards)
        self._cumulative = None
