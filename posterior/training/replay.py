"""Off-policy training with a replay buffer and MALA local search (Algorithm 1 of
"Improved off-policy training of diffusion samplers").

Even iterations are forward (on-policy, possibly exploratory) updates whose terminal states
enter the replay buffer; odd iterations are backward updates on trajectories drawn from the
backward process ending at buffer states. With local search, every ``ls_every`` iterations
parallel MALA chains start from prioritized buffer states, and the states they accept after
burn-in enter a second (local-search) buffer, from which the backward updates then draw.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from posterior.samplers.mala import AdaptiveMALA
from posterior.paths.path_target import BoltzmannPath
from posterior.training.replay_buffer import Prioritization, ReplayBuffer
from posterior.core.trajectories import Trajectories

PRIORITIZATIONS = ("uniform", "rank")


@dataclass
class ReplayConfig:
    """Buffer and local-search settings (defaults: the paper's).

    Attributes:
        prioritization: "rank" (weight 1 / (k N + rank)) or "uniform" buffer sampling.
        capacity: FIFO capacity of each buffer.
        rank_k: k of the rank weights.
        local_search: run MALA local search and train backward on its buffer.
        ls_every: iterations between local-search rounds.
        ls_steps: MALA steps per round; ls_burn_in: of which the first are not kept.
        ls_chains: parallel chains per round (None: the training batch size).
        ls_beta: tempering of the MALA target exp(beta log R).
        ls_step_size: initial MALA step size (adapted toward acceptance 0.574 and carried over).
    """

    prioritization: Prioritization = "rank"
    capacity: int = 600_000
    rank_k: float = 0.01
    local_search: bool = False
    ls_every: int = 100
    ls_steps: int = 200
    ls_burn_in: int = 100
    ls_chains: int | None = None
    ls_beta: float = 1.0
    ls_step_size: float = 0.01

    def __post_init__(self) -> None:
        if self.prioritization not in PRIORITIZATIONS:
            raise ValueError(f"ReplayConfig.prioritization must be one of {PRIORITIZATIONS}, got {self.prioritization!r}")
        if not isinstance(self.local_search, bool):
            raise ValueError(f"ReplayConfig.local_search must be True or False, got {self.local_search!r}")
        for name, minimum, why in (("capacity", 1, ""), ("ls_every", 2, " (updates alternate forward/backward)"),
                                   ("ls_steps", 1, ""), ("ls_burn_in", 0, "")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"ReplayConfig.{name} must be an integer >= {minimum}{why}, got {value!r}")
        if self.ls_chains is not None and (isinstance(self.ls_chains, bool) or not isinstance(self.ls_chains, int)
                                           or self.ls_chains < 1):
            raise ValueError(f"ReplayConfig.ls_chains must be an integer >= 1 or None (the batch size), "
                             f"got {self.ls_chains!r}")
        for name in ("rank_k", "ls_beta", "ls_step_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"ReplayConfig.{name} must be a finite number > 0, got {value!r}")
        if not self.ls_burn_in < self.ls_steps:
            raise ValueError(f"ReplayConfig.ls_burn_in must satisfy 0 <= ls_burn_in < ls_steps, got "
                             f"{self.ls_burn_in} and {self.ls_steps}")


class ReplayTraining:
    """Buffers, local search and the forward/backward schedule of buffer-based training.

    Args:
        config: buffer and local-search settings.
        dim: event size d.
        device, dtype: buffer storage placement.
        teacher: an adaptive teacher (:class:`posterior.training.teacher.AdaptiveTeacher`) that takes one
            step before every backward update and adds its samples to the buffer; or None
            (unconditional problems only).
        condition_shape: shape of one condition for conditional problems: every stored state keeps
            its condition, and local search runs each chain on its own condition's target.
    """

    def __init__(self, config: ReplayConfig, dim: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, teacher=None,
                 condition_shape: tuple[int, ...] | None = None,
                 condition_dtype: torch.dtype | None = torch.float32) -> None:
        self.config = config
        self.teacher = teacher
        self.teacher_seconds = 0.0
        self.conditional = condition_shape is not None

        def make() -> ReplayBuffer:
            return ReplayBuffer(dim, config.capacity, prioritization=config.prioritization,
                                rank_k=config.rank_k, condition_shape=condition_shape,
                                condition_dtype=condition_dtype or torch.float32, device=device, dtype=dtype)

        self.buffer = make()
        self.ls_buffer = make() if config.local_search else None
        self.ls_step_size = float(config.ls_step_size)
        self.ls_seconds = 0.0
        self.ls_evaluations = 0
        self.ls_rounds = 0
        self.ls_last_acceptance: float | None = None

    @staticmethod
    def is_backward_step(iteration: int) -> bool:
        """Odd iterations train on backward trajectories from the buffer."""
        return iteration % 2 == 1

    def observe(self, traj: Trajectories, conditions: Tensor | None = None) -> None:
        """Add the terminal states of forward trajectories (flattened to (B, d), and their true log-rewards);
        for a conditional problem, ``conditions`` (B, *condition_shape) holds each trajectory's condition."""
        self.buffer.add(traj.samples.detach().flatten(1), traj.log_reward.detach(), conditions)

    def backward_batch(self, iteration: int, path_for: Callable[[Tensor | None], BoltzmannPath], batch_size: int,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        """Terminal states (batch_size, d) and their conditions (or None) for a backward update;
        runs the teacher and local search when due. ``path_for(conditions)`` gives the target path
        with those conditions bound (the fixed path for unconditional problems)."""
        if self.teacher is not None:
            if self.conditional:
                raise ValueError("the adaptive teacher supports unconditional problems only")
            start = time.perf_counter()
            taught = self.teacher.step()
            self.buffer.add(taught, path_for(None).log_reward(taught))
            self.teacher_seconds += time.perf_counter() - start
        if len(self.buffer) == 0:
            raise RuntimeError("backward update before any forward update filled the replay buffer")
        source = self.buffer
        if self.ls_buffer is not None:
            if iteration % self.config.ls_every == 1 or len(self.ls_buffer) == 0:
                self.local_search(path_for, batch_size, generator)
            if len(self.ls_buffer) > 0:  # (empty only if every proposal was rejected)
                source = self.ls_buffer
        states, _, conditions = source.sample(batch_size, generator)
        return states, conditions

    def local_search(self, path_for: Callable[[Tensor | None], BoltzmannPath], batch_size: int,
                     generator: torch.Generator | None = None) -> None:
        """One round of parallel MALA from prioritized buffer states into the local-search buffer
        (each chain on the target of its own condition)."""
        start = time.perf_counter()
        cfg = self.config
        starts, _, conditions = self.buffer.sample(cfg.ls_chains or batch_size, generator)
        path = path_for(conditions)
        mala = AdaptiveMALA(path.log_reward, path.score, step_size=self.ls_step_size, beta=cfg.ls_beta)
        run = mala.run(starts, cfg.ls_steps, burn_in=cfg.ls_burn_in, generator=generator)
        if run.kept_states.shape[0]:
            kept_conditions = None if conditions is None else conditions[run.kept_chains]
            self.ls_buffer.add(run.kept_states, run.kept_log_rewards, kept_conditions)
        self.ls_step_size = run.step_size
        self.ls_evaluations += run.evaluations
        self.ls_rounds += 1
        self.ls_last_acceptance = sum(run.acceptance) / max(1, len(run.acceptance))
        self.ls_seconds += time.perf_counter() - start

    def stats(self) -> dict:
        """Counters for metrics: local-search seconds, evaluations, rounds, step size, buffer sizes."""
        return {"local_search_seconds": self.ls_seconds, "local_search_evaluations": self.ls_evaluations,
                "local_search_rounds": self.ls_rounds, "local_search_step_size": self.ls_step_size,
                "local_search_last_acceptance": self.ls_last_acceptance,
                "teacher_seconds": self.teacher_seconds if self.teacher is not None else None,
                "buffer_size": len(self.buffer),
                "ls_buffer_size": None if self.ls_buffer is None else len(self.ls_buffer)}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict(),
                "ls_buffer": None if self.ls_buffer is None else self.ls_buffer.state_dict(),
                "ls_step_size": self.ls_step_size, "ls_seconds": self.ls_seconds,
                "ls_evaluations": self.ls_evaluations, "ls_rounds": self.ls_rounds,
                "ls_last_acceptance": self.ls_last_acceptance, "teacher_seconds": self.teacher_seconds,
                "teacher": None if self.teacher is None else self.teacher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        if self.ls_buffer is not None:
            if state["ls_buffer"] is None:
                raise ValueError("checkpoint has no local-search buffer but local search is enabled")
            self.ls_buffer.load_state_dict(state["ls_buffer"])
        self.ls_step_size = float(state["ls_step_size"])
        self.ls_seconds = float(state["ls_seconds"])
        self.ls_evaluations = int(state["ls_evaluations"])
        self.ls_rounds = int(state["ls_rounds"])
        self.ls_last_acceptance = state["ls_last_acceptance"]
        self.teacher_seconds = float(state.get("teacher_seconds", 0.0))
        if self.teacher is not None:
            if state.get("teacher") is None:
                raise ValueError("checkpoint has no teacher but this run uses one")
            self.teacher.load_state_dict(state["teacher"])
