"""The training engine: one loop over (model, objective, batch sources), whatever is trained.

Every iteration takes one batch of trajectories from one source and one optimizer step on the
objective:

- on-policy forward trajectories (with decaying exploration), every iteration by default;
- with a replay buffer (:class:`posterior.training.replay.ReplayTraining`: rank-prioritized buffer,
  MALA local search, adaptive teacher), odd iterations train on backward trajectories ending at
  buffer states;
- with an importance pool (:class:`posterior.training.importance_pool.PoolTraining`), odd iterations
  train on resampled prior paths, or every iteration adds a forward-KL term over them.

The model is a :class:`posterior.training.trainable.SamplerModel` (a diffusion sampler on its own time
grid, conditional or not) or a :class:`posterior.training.trainable.DiffusionPosteriorModel` (a
posterior fine-tuned from a diffusion prior); :class:`Trainer` builds the right one from what it is
given. One implementation of exploration, learning-rate decay, gradient clipping and synchronization,
the weight average (EMA), history, progress, tracker logging, and atomic checkpoints with exact resume.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from posterior.core.checks import check_shape
from posterior.diffusion.diffusion_posterior import DiffusionPosterior
from posterior.objectives.base import Objective
from posterior.objectives.subtrajectory_balance import SubTrajectoryBalance
from posterior.training import checkpoint
from posterior.training.config import RESUMABLE_SETTINGS, TrainConfig
from posterior.training.exploration import LinearDecay
from posterior.training.history import TrainingHistory
from posterior.training.importance_pool import ImportancePool, PoolTraining
from posterior.training.lr_schedule import CosineDecay
from posterior.training.replay import ReplayConfig, ReplayTraining
from posterior.training.trainable import DiffusionPosteriorModel, SamplerModel
from posterior.training.weight_average import WeightAverage

CHECKPOINT_FORMAT = "posterior.trainer/2"

GradientSync = Callable[[list[torch.nn.Parameter]], None]
LogFn = Callable[[dict[str, float], int], None]


class Trainer:
    """Trains a sampler (or a diffusion prior's posterior) with an objective.

    Args:
        model: a :class:`DiffusionSampler` (with ``path``), a :class:`ConditionalSampler` (with
            ``conditions`` for a conditional one), or a :class:`DiffusionPosterior` (with its
            :class:`DiffusionPriorPath` as ``path``).
        objective: the loss (carries log Z / flow parameters).
        config: the run's settings.
        path: the target path measure of a DiffusionSampler or a DiffusionPosterior.
        conditions: (N, *cond_shape) training conditions of a conditional sampler, or of a DiffusionPosterior
            amortized over conditions (a ConditionalDenoiser model and a conditional path).
        replay: a replay buffer (and local search / teacher) for backward updates on odd iterations: a
            :class:`ReplayConfig` (the trainer builds the buffers) or a built :class:`ReplayTraining`.
        pool: an importance pool of prior paths (diffusion-prior posteriors only).
        checkpoint_path: file for atomic checkpoints (None: none); :meth:`load` resumes the same run.
        gradient_sync: called with every trained parameter after each backward pass, to average
            gradients across data-parallel processes (e.g. accelerate's ``reduce``).
        log: called every ``log_every`` iterations with ({"loss", "log_z_batch", "seconds_per_iter"},
            iteration), e.g. ``accelerator.log``.
        log_every: iterations between ``log`` calls.
        dtype: of a diffusion-prior posterior's simulated states.
        problem: what else identifies the problem (JSON-like: the target, prior and reward, a fingerprint of the
            conditions, the architecture); recorded in checkpoints, and a resume with another is refused.
    """

    def __init__(self, model, objective: Objective, config: TrainConfig, *, path=None,
                 conditions: Tensor | None = None,
                 replay: ReplayConfig | ReplayTraining | None = None, pool: PoolTraining | None = None,
                 checkpoint_path: str | Path | None = None, gradient_sync: GradientSync | None = None,
                 log: LogFn | None = None, log_every: int = 50, dtype: torch.dtype = torch.float32,
                 problem: dict | None = None) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be an Objective, got {type(objective).__name__}")
        if isinstance(model, DiffusionPosterior):
            self.model = DiffusionPosteriorModel(model, path, config, conditions=conditions, dtype=dtype)
            if pool is not None and conditions is not None:
                raise ValueError("an importance pool holds prior paths for one reward: it does not train a posterior "
                                 "amortized over conditions")
            if pool is not None:
                check_shape(pool.pool.paths, (model.prior.num_steps + 1, None) + tuple(model.prior.event_shape),
                            "pool.paths")
        else:
            if pool is not None:
                raise ValueError("an importance pool holds a diffusion prior's paths: it trains a DiffusionPosterior")
            self.model = SamplerModel(model, config, path=path, conditions=conditions)
        if objective.differentiable and (config.explore or replay is not None
                                         or (pool is not None and pool.trains_odd_iterations)):
            raise ValueError(f"{type(objective).__name__} trains on the sampler's own reparameterized paths: it takes "
                             "no explore, replay buffer or importance-pool batches (a pool's forward_kl term is fine)")
        if replay is not None and pool is not None:
            raise ValueError("replay and pool are two sources of off-policy batches; use one")
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"log_every must be an integer >= 1, got {log_every!r}")
        if isinstance(replay, ReplayConfig):
            replay = self.model.replay_training(replay)
        elif replay is not None and not isinstance(replay, ReplayTraining):
            raise TypeError(f"replay must be a ReplayConfig or a ReplayTraining, got {type(replay).__name__}")
        self.sampler = model
        self.objective, self.config, self.replay, self.pool = objective, config, replay, pool
        self.device, self.dtype = self.model.device, getattr(self.model, "dtype", dtype)
        lr_flow = config.lr_flow if config.lr_flow is not None else default_flow_lr(objective)
        groups = self.model.parameter_groups()
        param_groups = [{"params": g, "lr": r} for g, r in groups]
        self._decaying_lrs = [r for _, r in groups]  # the sampler's groups; log Z's rate stays
        if objective.flow_parameters():
            param_groups.append({"params": objective.flow_parameters(), "lr": lr_flow})
        self.optimizer = torch.optim.Adam(param_groups)
        self._trained = [p for g, _ in groups for p in g]
        self.ema = WeightAverage(self._trained, config.ema_decay) if config.ema_decay else None
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.exploration = LinearDecay(config.explore, config.explore_horizon or config.iterations,
                                       linear_in=config.explore_decay)
        self.lr_decay = CosineDecay(config.lr_decay_horizon, config.lr_decay_final)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.gradient_sync, self.log, self.log_every = gradient_sync, log, log_every
        self.problem = dict(problem or {})
        self.history = TrainingHistory()
        self.iteration = 0
        self.last_samples: Tensor | None = None  # terminal states of the last forward batch
        self.peak_memory_bytes: int | None = None

    # ------------------------------------------------------------------ conveniences
    @property
    def path(self):
        """The fixed target path measure (None for a conditional sampler)."""
        return self.model.path

    @property
    def policy(self):
        """The policy network of a diffusion sampler."""
        return self.model.policy

    def averaged_weights(self):
        """Context manager: inside it the model holds the moving average of its trained weights
        (``config.ema_decay`` > 0), the weights to sample and evaluate with; without an average it
        changes nothing. Training continues from the trained weights, restored on exit."""
        return contextlib.nullcontext() if self.ema is None else self.ema.applied()

    # ------------------------------------------------------------------ one step
    def _source(self) -> str:
        """Where this iteration's batch comes from: "forward", "replay" or "pool"."""
        if self.replay is not None and self.replay.is_backward_step(self.iteration):
            return "replay"
        if self.pool is not None and self.pool.trains_odd_iterations and self.iteration % 2 == 1:
            return "pool"
        return "forward"

    def step(self) -> tuple[float, float | None]:
        """One optimizer step; returns (loss, the forward batch's ELBO of log Z or None)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.objective.differentiable and isinstance(self.model, DiffusionPosteriorModel):
            loss, log_z_batch = self.model.pathwise(self.objective, self.generator)
        else:
            loss, log_z_batch = self._off_policy_or_forward_step()
        if self.pool is not None and self.pool.forward_kl:
            weight = self.pool.forward_kl_weight(self.iteration)
            if weight:
                states = self.pool.pool.sample(self.model.batch, self.generator)
                loss = loss + self.model.forward_kl(states, weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at iteration {self.iteration}")
        if self.gradient_sync is not None:
            self.gradient_sync(self._all_parameters())
        self._check_gradients()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self._all_parameters(), self.config.grad_clip)
        self._optimizer_step()
        if self.ema is not None:
            self.ema.update()
        return float(loss), log_z_batch

    def _off_policy_or_forward_step(self) -> tuple[Tensor, float | None]:
        source = self._source()
        log_z_batch = None
        if source == "replay":
            samples, conditions = self.replay.backward_batch(self.iteration, self.model.path_for,
                                                             self.model.backward_count(), self.generator)
            traj = self.model.backward(samples, conditions, self.generator)
        elif source == "pool":
            traj = self.model.score(self.pool.pool.sample(self.model.batch, self.generator))
        else:
            differentiable = self.objective.differentiable
            explore = 0.0 if differentiable else self.exploration(self.iteration)
            traj = self.model.forward(explore, self.generator, differentiable=differentiable)
            if self.replay is not None:
                self.replay.observe(traj, self.model.batch_conditions)
            self.last_samples = traj.samples.detach()
            log_z_batch = float(traj.log_weight.detach().mean())
        if self.iteration == 0 and self.config.log_z_init == "batch" and _has_scalar_log_z(self.objective):
            self.objective.warm_start_log_z(traj, average=self._mean_across_processes)
        loss = self.model.backpropagate(self.objective, traj, replayed=source != "forward", generator=self.generator)
        return loss, log_z_batch

    def _mean_across_processes(self, value: Tensor) -> Tensor:
        """Mean of a local tensor over data-parallel processes (through ``gradient_sync``)."""
        if self.gradient_sync is None:
            return value
        carrier = torch.nn.Parameter(torch.zeros_like(value))
        carrier.grad = value.clone()
        self.gradient_sync([carrier])
        return carrier.grad

    def _optimizer_step(self) -> None:
        """Adam step at this iteration's rates (``config.lr_decay_*``); a learned log-variance's
        rows take ``config.log_var_lr_scale`` of theirs."""
        self.lr_decay.set_rates(self.optimizer, self._decaying_lrs, self.iteration)
        scale = self.config.log_var_lr_scale
        rows = self.model.log_variance_rows() if scale != 1.0 else []
        before = [r.clone() for r in rows]
        self.optimizer.step()
        with torch.no_grad():
            for r, b in zip(rows, before):
                r.copy_(b + scale * (r - b))

    def _all_parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _check_gradients(self) -> None:
        named = list(self.model.module.named_parameters()) + [
            ("objective." + n, p) for n, p in self.objective.named_parameters()]
        for name, p in named:
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                raise FloatingPointError(f"non-finite gradient in parameter {name!r} at iteration "
                                         f"{self.iteration}; check the target's log_reward and its gradient")

    # ------------------------------------------------------------------ loop
    def run(self, progress: bool = True) -> TrainingHistory:
        """Train until ``config.iterations`` (resuming from ``self.iteration``); a checkpoint path gets a
        checkpoint every ``config.checkpoint_every`` iterations and when training ends."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = tqdm(total=self.config.iterations, initial=self.iteration, disable=not progress,
                   dynamic_ncols=True, mininterval=1.0)
        while self.iteration < self.config.iterations:
            start = time.perf_counter()
            loss, log_z_batch = self.step()
            self.history.append(self.iteration, loss, log_z_batch, self.objective.log_z(),
                                time.perf_counter() - start)
            self.iteration += 1
            bar.update(1)
            if self.iteration % 20 == 0 or self.iteration == self.config.iterations:
                recent = self.history.recent_log_z_batch(20)
                bar.set_postfix(loss=f"{loss:.3g}", log_z=f"{recent:.3f}" if recent is not None else "-")
            if self.log is not None and self.iteration % self.log_every == 0:
                self._report()
            every = self.config.checkpoint_every
            if self.checkpoint_path and every and self.iteration % every == 0:
                self.save(self.checkpoint_path)
        bar.close()
        if self.checkpoint_path:
            self.save(self.checkpoint_path)
        if self.device.type == "cuda":
            self.peak_memory_bytes = int(torch.cuda.max_memory_allocated(self.device))
        return self.history

    def _report(self) -> None:
        h, last = self.history, self.log_every
        self.log({"loss": h.mean_recent("loss", last), "log_z_batch": h.mean_recent("log_z_batch", last),
                  "seconds_per_iter": h.mean_recent("seconds", last)}, self.iteration)

    # ------------------------------------------------------------------ checkpoints
    def _problem(self) -> dict:
        """What the run trains, recorded in checkpoints so that a resume of another problem is refused."""
        return {"model": type(self.model.module).__name__, "objective": type(self.objective).__name__,
                "replay": None if self.replay is None else asdict(self.replay.config),
                "pool": None if self.pool is None else self.pool.settings(), **self.problem}

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "problem": self._problem(),
            "model": self.model.module.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "iteration": self.iteration,
            "history": asdict(self.history),
            "config": asdict(self.config),
            "replay": None if self.replay is None else self.replay.state_dict(),
            "pool": None if self.pool is None else self.pool.pool.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "extra": self.model.extra_state(),
        }

    def save(self, path: str | Path) -> None:
        checkpoint.save_atomic(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        """Restore everything needed to continue the same run bit for bit."""
        self.load_state_dict(checkpoint.load(path, map_location=self.device), source=str(path))

    def load_state_dict(self, state: dict, source: str = "state") -> None:
        """Restore from :meth:`state_dict` (``source`` names it in errors). Every setting but the budget
        and the checkpoint cadence must match the checkpoint's, and so must the problem (ValueError)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {source} was written by an earlier version of posterior (before the one "
                             f"training engine, format {state.get('format')!r}, expected {CHECKPOINT_FORMAT!r}); "
                             "its settings cannot be checked against this run: start a new run (or train it to the "
                             "end with the version that wrote it)")
        checkpoint.check_same_settings(state["config"], asdict(self.config), asdict(TrainConfig()),
                                       RESUMABLE_SETTINGS, source)
        problem = self._problem()
        changed = sorted(k for k in set(problem) | set(state["problem"]) if state["problem"].get(k) != problem.get(k))
        if changed:
            raise ValueError(f"checkpoint {source} belongs to another problem: "
                             + ", ".join(f"{k}={state['problem'].get(k)!r} (now {problem.get(k)!r})" for k in changed))
        self.model.module.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        checkpoint.restore_generator(self.generator, state["generator"])
        self.iteration = int(state["iteration"])
        self.history = TrainingHistory(**state["history"])
        self.model.load_extra_state(state["extra"])
        if self.ema is not None:  # check_same_settings has made sure the checkpoint has one
            self.ema.load_state_dict(state["ema"])
        if self.replay is not None:
            self.replay.load_state_dict(state["replay"])
        if self.pool is not None:  # the run's own pool, whatever this trainer was built with
            self.pool.pool = ImportancePool.from_state_dict(state["pool"])


def default_flow_lr(objective: Objective) -> float:
    """The paper's learning rate of log Z / flows: 1e-1, or 1e-2 for an objective with a state flow."""
    return 1e-2 if isinstance(objective, SubTrajectoryBalance) else 1e-1


def _has_scalar_log_z(objective: Objective) -> bool:
    return type(objective).warm_start_log_z is not Objective.warm_start_log_z


__all__ = ["Trainer", "TrainConfig", "TrainingHistory", "default_flow_lr"]
