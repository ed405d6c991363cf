"""Training loop for a diffusion sampler on a target path measure."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from posterior.training import checkpoint
from posterior.training.exploration import EXPLORE_DECAYS, LinearDecay
from posterior.core.grids import power_grid, random_grid
from posterior.training.lr_schedule import CosineDecay
from posterior.training.replay import ReplayTraining
from posterior.objectives.base import Objective
from posterior.paths.path_target import BoltzmannPath
from posterior.samplers.networks import PISPolicy
from posterior.samplers.sampler import DiffusionSampler
from posterior.training.weight_average import WeightAverage


@dataclass
class TrainingConfig:
    """Hyperparameters (defaults: the diffusion-sampler paper's).

    Attributes:
        iterations: optimizer steps.
        batch_size: trajectories per step.
        steps: N, time steps per training trajectory.
        train_grid: "uniform", or "random" (a fresh coarse grid every iteration whose
            increments are drawn from U[grid_low, grid_high] and normalized).
        grid_power: with ``train_grid`` "uniform", the fixed grid is ``power_grid(steps, grid_power)``:
            1 is uniform, > 1 shortens the steps toward t = 1 (see :func:`posterior.core.grids.power_grid`).
        steps_max: with a random grid, draw the number of steps uniformly from
            [steps, steps_max] every iteration (None: always ``steps``).
        lr_policy: Adam learning rate of the policy.
        lr_flow: Adam learning rate of log Z / state flows (1e-1 for TB, 1e-2 for SubTB).
        explore: extra sampling variance per unit time at iteration 0, decayed linearly.
        explore_horizon: iterations over which exploration decays (None: all of training).
        explore_decay: what decays linearly to 0: "variance" (the extra variance) or "std" (its
            standard deviation, so the variance decays quadratically: the paper's public code).
        grad_clip: clip the global gradient norm (None: off).
        log_var_lr_scale: with a learned variance, the log-variance output rows move this much
            slower than the rest of the policy (Adam's update is elementwise, so this is exactly a
            learning rate ``lr_policy * log_var_lr_scale`` for them). 1 is the paper's setting.
            A small scale (0.01) slows the run-away described under ``log_z_init``, at some cost
            in how fast the variance is learned.
        log_z_init: "zero" keeps the objective's initial log Z (0, the paper's); "batch" sets it
            from the first training batch, mean(log Q - log p_F), before the first step (TB only).
            TB's gradient contains mean(delta) * mean(d log p_F / d theta); under exploration the
            second factor is not zero (for the log-variance it grows with T * d * explore), so
            while log Z lags behind the batch (it moves at most ``lr_flow`` per step) a learned
            variance is pushed to its lower bound and the sampler collapses (25GMM, T >= 32).
            Starting log Z at the batch estimate removes that lag; use it for TB with a learned
            variance and exploration.
        lr_decay_horizon, lr_decay_final: cosine decay of the policy's learning rate to
            ``lr_decay_final`` times ``lr_policy`` over the first ``lr_decay_horizon`` iterations,
            constant after (horizon 0: no decay). log Z and flows keep ``lr_flow``.
        ema_decay: keep an exponential moving average of the sampler's weights,
            e_k = d * e_(k-1) + (1 - d) * theta_k after every step k (e_1 = theta_1), for sampling and
            evaluation (0: off). It averages out the optimizer's noise over about 1 / (1 - d) steps
            without slowing training, which a learning-rate decay does; the raw weights keep training.
        seed: seeds the noise generator (the same seed gives the same run).
        checkpoint_every: write a checkpoint every this many iterations (0: never).
    """

    iterations: int = 25_000
    batch_size: int = 300
    steps: int = 100
    train_grid: str = "uniform"
    grid_low: float = 1.0
    grid_high: float = 10.0
    grid_power: float = 1.0
    steps_max: int | None = None
    lr_policy: float = 1e-3
    lr_flow: float = 1e-1
    explore: float = 0.0
    explore_horizon: int | None = None
    explore_decay: str = "variance"
    grad_clip: float | None = None
    log_var_lr_scale: float = 1.0
    log_z_init: str = "zero"
    lr_decay_horizon: int = 0
    lr_decay_final: float = 0.1
    ema_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        CosineDecay(self.lr_decay_horizon, self.lr_decay_final)  # validates both
        for name in ("iterations", "batch_size", "steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.explore < 0:
            raise ValueError(f"explore must be >= 0, got {self.explore}")
        if self.explore_decay not in EXPLORE_DECAYS:
            raise ValueError(f"explore_decay must be one of {EXPLORE_DECAYS}, got {self.explore_decay!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no weight average), got {self.ema_decay}")
        if not self.log_var_lr_scale > 0:
            raise ValueError(f"log_var_lr_scale must be > 0, got {self.log_var_lr_scale}")
        if self.log_z_init not in ("zero", "batch"):
            raise ValueError(f"log_z_init must be 'zero' or 'batch', got {self.log_z_init!r}")
        if self.train_grid not in ("uniform", "random"):
            raise ValueError(f"train_grid must be 'uniform' or 'random', got {self.train_grid!r}")
        if self.steps_max is not None and (self.train_grid != "random" or self.steps_max < self.steps):
            raise ValueError(f"steps_max needs train_grid='random' and steps_max >= steps, got "
                             f"{self.steps_max} with {self.train_grid!r} and steps={self.steps}")
        if not (math.isfinite(self.grid_power) and self.grid_power > 0):
            raise ValueError(f"grid_power must be a finite number > 0, got {self.grid_power}")
        if self.grid_power != 1 and self.train_grid != "uniform":
            raise ValueError(f"grid_power {self.grid_power} needs train_grid='uniform' (a random grid has its own "
                             f"steps), got {self.train_grid!r}")


# settings that may change when a run is resumed: the budget and the checkpoint cadence
_RESUMABLE_CHANGES = ("iterations", "checkpoint_every")


@dataclass
class TrainingHistory:
    """Per-iteration records: loss, batch ELBO of log Z, the objective's log Z, seconds."""

    iteration: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    log_z_batch: list[float] = field(default_factory=list)
    log_z_learned: list[float | None] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def median_seconds(self, skip: int = 5) -> float:
        times = self.seconds[skip:] if len(self.seconds) > skip else self.seconds
        return statistics.median(times) if times else float("nan")


class Trainer:
    """Runs the optimization, with progress, exact resume and atomic checkpoints.

    Args:
        sampler: the diffusion sampler to train.
        objective: loss (carries log Z / flow parameters).
        path: target path measure.
        config: hyperparameters.
        checkpoint_path: file for checkpoints (None: no checkpoints).
        gradient_sync: called with all trained parameters after every backward pass, to
            average gradients across data-parallel processes (e.g. with accelerate).
        replay: replay buffer (and local search) for alternating forward / backward updates;
            None trains on forward trajectories only.
    """

    def __init__(self, sampler: DiffusionSampler, objective: Objective, path: BoltzmannPath | None,
                 config: TrainingConfig, checkpoint_path: str | Path | None = None,
                 gradient_sync: Callable[[list[torch.nn.Parameter]], None] | None = None,
                 replay: ReplayTraining | None = None) -> None:
        if replay is not None and objective.differentiable:
            raise ValueError("a replay buffer needs an off-policy objective (tb, vargrad, subtb, fl-subtb), "
                             "not a simulation-based one")
        if config.log_z_init == "batch" and type(objective).warm_start_log_z is Objective.warm_start_log_z:
            raise ValueError(f"log_z_init='batch' needs an objective with a learned scalar log Z (tb), "
                             f"got {type(objective).__name__}")
        self.sampler, self.objective, self.path, self.config = sampler, objective, path, config
        self.replay = replay
        param = next(sampler.parameters())
        self.device, self.dtype = param.device, param.dtype
        groups = [{"params": list(sampler.parameters()), "lr": config.lr_policy}]
        flow_params = objective.flow_parameters()
        if flow_params:
            groups.append({"params": flow_params, "lr": config.lr_flow})
        self.optimizer = torch.optim.Adam(groups)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.exploration = LinearDecay(config.explore, config.explore_horizon or config.iterations,
                                       linear_in=config.explore_decay)
        self.lr_decay = CosineDecay(config.lr_decay_horizon, config.lr_decay_final)
        self.times = power_grid(config.steps, config.grid_power, device=self.device, dtype=self.dtype)
        self.history = TrainingHistory()
        self.iteration = 0
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.gradient_sync = gradient_sync
        self.last_samples: torch.Tensor | None = None  # terminal states of the last step's batch
        self.ema = WeightAverage(sampler.parameters(), config.ema_decay) if config.ema_decay else None

    # ------------------------------------------------------------------ one step
    def step(self) -> tuple[float, float]:
        """One optimizer step on fresh on-policy (possibly exploratory) trajectories, or with a
        replay buffer on odd iterations, on backward trajectories from buffer states.

        Returns:
            (loss, batch ELBO of log Z).
        """
        replayed = self.replay is not None and self.replay.is_backward_step(self.iteration)
        if replayed:
            samples, conditions = self.replay.backward_batch(self.iteration, self.path_for, self.backward_count(),
                                                             self.generator)
            traj = self.backward_trajectories(samples, conditions)
        else:
            explore = 0.0 if self.objective.differentiable else self.exploration(self.iteration)
            traj = self.trajectories(explore)
            if self.replay is not None:
                self.replay.observe(traj, self.batch_conditions)
        if self.iteration == 0 and self.config.log_z_init == "batch":
            self.objective.warm_start_log_z(traj, average=self._mean_across_processes)
        loss = self.objective.replay_loss(traj) if replayed else self.objective.loss(traj)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {float(loss)} at iteration {self.iteration}: log_reward range "
                f"[{float(traj.log_reward.min())}, {float(traj.log_reward.max())}], "
                f"log_pf range [{float(traj.log_pf.min())}, {float(traj.log_pf.max())}]")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.gradient_sync is not None:
            self.gradient_sync(self._all_parameters())
        self._check_gradients()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self._all_parameters(), self.config.grad_clip)
        self._optimizer_step()
        if self.ema is not None:
            self.ema.update()
        self.last_samples = traj.samples.detach()
        log_z_batch = float(traj.log_weight.detach().mean())
        return float(loss.detach()), log_z_batch

    def _mean_across_processes(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a local tensor over data-parallel processes (through ``gradient_sync``)."""
        if self.gradient_sync is None:
            return value
        carrier = torch.nn.Parameter(torch.zeros_like(value))
        carrier.grad = value.clone()
        self.gradient_sync([carrier])
        return carrier.grad

    # hooks that conditional training overrides
    batch_conditions = None  # conditions (B, *cond_shape) of the last forward batch, for the buffer

    def path_for(self, conditions: torch.Tensor | None) -> BoltzmannPath:
        """The target path with ``conditions`` bound (unconditional: the fixed path)."""
        return self.path

    def backward_count(self) -> int:
        """Buffer entries drawn for one backward update."""
        return self.config.batch_size

    def backward_trajectories(self, samples: torch.Tensor, conditions: torch.Tensor | None):
        """Backward trajectories ending at buffer states (override for conditional batches)."""
        return self.sampler.backward_trajectories(samples, self.train_times(), self.path, generator=self.generator)

    def trajectories(self, explore: float):
        """The batch of trajectories for one step (override for conditional batches)."""
        return self.sampler.forward_trajectories(
            self.config.batch_size, self.train_times(), self.path, explore=explore,
            generator=self.generator, differentiable=self.objective.differentiable)

    def train_times(self) -> torch.Tensor:
        """(N + 1,) grid of this iteration: the fixed (uniform or power) grid, or a fresh random one."""
        cfg = self.config
        if cfg.train_grid == "uniform":
            return self.times
        steps = cfg.steps
        if cfg.steps_max is not None and cfg.steps_max > cfg.steps:
            steps = int(torch.randint(cfg.steps, cfg.steps_max + 1, (1,), generator=self.generator,
                                      device=self.generator.device))
        return random_grid(steps, low=cfg.grid_low, high=cfg.grid_high, generator=self.generator,
                           device=self.device, dtype=self.dtype)

    @property
    def policy(self) -> PISPolicy:
        """The policy network being trained."""
        return self.sampler.policy

    def averaged_weights(self):
        """Context manager: inside it the sampler holds the moving average of its weights
        (``config.ema_decay`` > 0), the weights to sample and evaluate with; without an average
        it changes nothing. Training continues from the trained weights, restored on exit."""
        return contextlib.nullcontext() if self.ema is None else self.ema.applied()

    def _optimizer_step(self) -> None:
        """Adam step at this iteration's policy rate (``config.lr_decay_*``); the learned
        log-variance rows take ``config.log_var_lr_scale`` of theirs."""
        self.lr_decay.set_rates(self.optimizer, [self.config.lr_policy], self.iteration)
        scale = self.config.log_var_lr_scale
        rows = self.policy.log_variance_rows() if scale != 1.0 else []
        before = [r.clone() for r in rows]
        self.optimizer.step()
        with torch.no_grad():
            for r, b in zip(rows, before):
                r.copy_(b + scale * (r - b))

    def _all_parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _check_gradients(self) -> None:
        named = list(self.sampler.named_parameters()) + [
            ("objective." + n, p) for n, p in self.objective.named_parameters()]
        for name, p in named:
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                raise FloatingPointError(f"non-finite gradient in parameter {name!r} at iteration "
                                         f"{self.iteration}; check the target's log_reward and its gradient")

    # ------------------------------------------------------------------ loop
    def run(self, progress: bool = True,
            callback: Callable[["Trainer"], None] | None = None, callback_every: int = 0) -> TrainingHistory:
        """Train until ``config.iterations``; resumes from ``self.iteration``."""
        bar = tqdm(total=self.config.iterations, initial=self.iteration, disable=not progress,
                   dynamic_ncols=True, mininterval=1.0)
        while self.iteration < self.config.iterations:
            start = time.perf_counter()
            loss, log_z_batch = self.step()
            elapsed = time.perf_counter() - start
            h = self.history
            h.iteration.append(self.iteration)
            h.loss.append(loss)
            h.log_z_batch.append(log_z_batch)
            h.log_z_learned.append(self.objective.log_z())
            h.seconds.append(elapsed)
            self.iteration += 1
            bar.update(1)
            if self.iteration % 20 == 0 or self.iteration == self.config.iterations:
                bar.set_postfix(loss=f"{loss:.3g}", log_z=f"{log_z_batch:.3f}")
            if callback is not None and callback_every and self.iteration % callback_every == 0:
                callback(self)
            every = self.config.checkpoint_every
            if self.checkpoint_path and every and self.iteration % every == 0:
                self.save(self.checkpoint_path)
        bar.close()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "sampler": self.sampler.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "iteration": self.iteration,
            "history": asdict(self.history),
            "config": asdict(self.config),
            "replay": None if self.replay is None else self.replay.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "path_evaluations": None if self.path is None else dict(self.path.evaluations),
        }

    def save(self, path: str | Path) -> None:
        checkpoint.save_atomic(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        """Restore everything needed to continue the same run bit for bit."""
        self.load_state_dict(checkpoint.load(path, map_location=self.device), source=str(path))

    def load_state_dict(self, state: dict, source: str = "state") -> None:
        """Restore from :meth:`state_dict` (``source`` names it in error messages). Every setting
        but the budget and the checkpoint cadence must match the checkpoint's (ValueError)."""
        checkpoint.check_same_settings(state["config"], asdict(self.config), asdict(TrainingConfig()),
                                       _RESUMABLE_CHANGES, source)
        self.sampler.load_state_dict(state["sampler"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        checkpoint.restore_generator(self.generator, state["generator"])
        self.iteration = int(state["iteration"])
        self.history = TrainingHistory(**state["history"])
        if self.path is not None and state.get("path_evaluations") is not None:
            self.path.evaluations.update(state["path_evaluations"])
        if self.ema is not None:  # check_same_settings has made sure the checkpoint has one
            self.ema.load_state_dict(state["ema"])
        if self.replay is not None:
            if state.get("replay") is None:
                raise ValueError(f"checkpoint {source} has no replay buffer but this run uses one")
            self.replay.load_state_dict(state["replay"])
