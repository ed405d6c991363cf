"""FIFO replay buffer of terminal states, with uniform or rank-prioritized sampling.

Rank prioritization (Tripp et al., used by the diffusion-sampler papers): with N stored
states ranked by log-reward (rank 0 = highest), state of rank r is drawn with probability

    w_r / sum_s w_s,   w_r = 1 / (k * N + r).

The buffer keeps its entries in a ring (oldest overwritten first) and, for rank
prioritization, the slot order sorted by log-reward. An add merges the sorted batch into
that order and drops the evicted slots in a few vectorized passes, linear in N (no re-sort,
no Python loop over states: 17k states into a full 600k buffer take ~15 ms of one CPU core);
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
        self._work: dict = {}  # scratch buffers of the rank order updates (see _reorder)

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
        removed = None  # ranks of the entries about to be overwritten (the first capacity - size slots are empty)
        if self.prioritization == "rank" and overwritten > 0:
            removed = self._ranks_of(slots[b - overwritten:])
        self.states[slots] = states.detach().to(self.states)
        self.log_rewards[slots] = log_rewards.detach().to(self.log_rewards)
        if conditions is not None:
            self.conditions[slots] = conditions.detach().to(self.conditions)
        if self.prioritization == "rank":
            self._reorder(slots, removed)
        self._next = int((self._next + b) % self.capacity)
        self.size = min(self.capacity, self.size + b)

    def _ranks_of(self, slots: Tensor) -> Tensor:
        """Ascending positions in ``_order`` of the stored ``slots`` (distinct); reads their keys,
        so call it before they are overwritten."""
        order, keys = self._order, self._keys
        if 128 * slots.numel() <= order.numel():  # few slots: binary search by key
            wanted = -self.log_rewards[slots]
            low = torch.searchsorted(keys, wanted)
            if bool((torch.searchsorted(keys, wanted, right=True) - low == 1).all()):
                return low.sort().values  # each key is stored once, so it is that slot's
        # many slots or ties: one pass over the order
        gone = self._workspace("gone", self.capacity, torch.bool)
        gone.index_fill_(0, slots, True)
        ranks = torch.index_select(gone, 0, order, out=self._workspace("hit", order.numel(), torch.bool)).nonzero()
        gone.index_fill_(0, slots, False)  # (kept all-False between adds)
        return ranks[:, 0]

    def _reorder(self, new_slots: Tensor, removed: Tensor | None) -> None:
        """Drop the ranks ``removed`` (ascending, see _ranks_of) from the order sorted by descending
        log-reward and merge ``new_slots`` (already written) into it, keeping every survivor's
        relative order.

        Vectorized and O(N + B log B): the batch is sorted, each new entry's place found by binary
        search, and a single gather (its index built by one cumulative sum) lays out the merged
        order; no re-sort of the stored entries and no Python loop over states. Outputs go to
        preallocated buffers (ping-pong), which on CPU avoids page-faulting fresh megabytes on
        every add.
        """
        order, keys = self._order, self._keys
        n = order.numel()
        device = order.device
        if removed is None:
            removed = order.new_empty(0)
        e = removed.numel()
        # Ascending keys -log_reward (a -inf reward is a +inf key, ranked last).
        new_keys, perm = torch.sort(-self.log_rewards[new_slots])
        new_slots = new_slots[perm]
        b = new_keys.numel()
        m = n - e + b  # merged length (<= capacity)
        # New entries go after equal old ones (older first among ties): new entry j (in sorted
        # order) follows the p_j surviving old keys <= its key and the j new ones before it.
        p = torch.searchsorted(keys, new_keys, right=True)
        p -= torch.searchsorted(removed, p)  # count survivors only
        new_ranks = p + torch.arange(b, device=device)
        # Every other merged rank t holds survivor k = t - #(new ranks < t), whose old rank is
        # k + #(removed ranks before it). Both counts are steps, so source = cumsum(steps): +1 per
        # rank, -1 after each new rank, +1 at the merged rank of the first survivor after each
        # removed rank (survivor r_i - i, preceded by the new entries with p_j <= r_i - i).
        after = removed - torch.arange(e, device=device)
        after += torch.searchsorted(p, after, right=True)
        steps = self._workspace("steps", m, torch.long).fill_(1)
        steps[0] = 0
        ends = new_ranks + 1
        ends = ends[ends < m]
        steps.index_add_(0, ends, torch.full_like(ends, -1))
        after = after[after < m]
        steps.index_add_(0, after, torch.ones_like(after))
        source = steps.cumsum_(0)
        source.index_fill_(0, new_ranks, 0)  # any valid index: overwritten below
        self._order, self._keys = self._spare("order", order, m), self._spare("keys", keys, m)
        if n > 0:
            torch.index_select(order, 0, source, out=self._order)
            torch.index_select(keys, 0, source, out=self._keys)
        self._order.index_copy_(0, new_ranks, new_slots)
        self._keys.index_copy_(0, new_ranks, new_keys)

    def _workspace(self, name: str, length: int, dtype: torch.dtype) -> Tensor:
        """The first ``length`` entries of a preallocated scratch buffer of ``capacity`` entries."""
        buffer = self._work.get(name)
        if buffer is None:
            buffer = self._work[name] = torch.zeros(self.capacity, dtype=dtype, device=self.states.device)
        return buffer[:length]

    def _spare(self, name: str, current: Tensor, length: int) -> Tensor:
        """``length`` entries of whichever of two scratch buffers does not hold ``current``."""
        pair = self._work.setdefault(name, [])
        for buffer in pair:
            if buffer.untyped_storage().data_ptr() != current.untyped_storage().data_ptr():
                return buffer[:length]
        pair.append(torch.empty(self.capacity, dtype=current.dtype, device=current.device))
        return pair[-1][:length]

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
        order, keys = state["order"], state["keys"]
        if self.prioritization == "rank" and (order.numel() != n or keys.numel() != n):
            raise ValueError(f"checkpointed buffer holds {n} entries but its rank order has {order.numel()} "
                             f"(and {keys.numel()} keys); was it written by a uniform buffer?")
        self.size, self._next = n, int(state["next"])
        self._order = order.to(device=self.states.device, dtype=torch.long)
        self._keys = keys.to(self.log_rewards)
        self._cumulative = None
