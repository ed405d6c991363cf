"""What the training engine needs from what it trains: batches of trajectories and their gradient.

Two kinds of model go through the one loop of :class:`posterior.training.engine.Trainer`:

- :class:`SamplerModel`: a diffusion sampler (an Euler-Maruyama Gaussian policy) on a time grid of
  its own: a :class:`~posterior.samplers.sampler.DiffusionSampler` with a fixed target path measure
  (Boltzmann densities), or a :class:`~posterior.samplers.conditional_sampler.ConditionalSampler`
  with a set of training conditions (amortized posteriors in latent / noise space).
- :class:`DiffusionPosteriorModel`: a posterior fine-tuned from a diffusion prior (data space) on the
  prior's own schedule, against :class:`~posterior.diffusion.diffusion_posterior.DiffusionPriorPath`, for one
  target or amortized over training conditions (a
  :class:`~posterior.diffusion.conditional_denoiser.ConditionalDenoiser`).

Both give forward (on-policy, optionally exploratory) trajectories, backward trajectories ending at
given states (replay), the target with a batch's conditions bound (local search), and backpropagate an
objective; the diffusion posterior also scores pooled prior paths and can do it one step at a time.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from posterior.core.grids import power_grid, random_grid
from posterior.core.trajectories import Trajectories
from posterior.diffusion.diffusion_posterior import (DiffusionPosterior, DiffusionPriorPath,
                                                     accumulate_gradients_per_step)
from posterior.objectives.base import Objective
from posterior.paths.path_target import BoltzmannPath
from posterior.samplers.conditional_sampler import ConditionalSampler
from posterior.samplers.sampler import DiffusionSampler
from posterior.training.config import (CLASS_LAYERS_LR_FACTOR, CONDITION_LR_FACTOR, DIFFUSION_GRADIENT_SETTINGS,
                                       GRID_SETTINGS, GUIDANCE_LR_FACTOR, TrainConfig)
from posterior.training.replay import ReplayConfig, ReplayTraining


class SamplerModel:
    """A diffusion sampler trained on its own time grid.

    Args:
        sampler: a :class:`DiffusionSampler` (then ``path`` is its target path measure) or a
            :class:`ConditionalSampler` (its reward is bound to each batch's conditions; no ``path``).
        config: the run's settings (grid, batch size).
        path: the fixed target path measure of a :class:`DiffusionSampler`.
        conditions: (N, *cond_shape) training conditions of a conditional sampler (None: unconditional).
    """

    def __init__(self, sampler: DiffusionSampler | ConditionalSampler, config: TrainConfig, *,
                 path: BoltzmannPath | None = None, conditions: Tensor | None = None) -> None:
        changed = sorted(set(config.changed()) & set(DIFFUSION_GRADIENT_SETTINGS))
        if changed:
            raise ValueError(f"TrainConfig.{', '.join(changed)} are settings of a posterior fine-tuned from a diffusion "
                             f"prior; a diffusion sampler does not use them")
        if isinstance(sampler, ConditionalSampler):
            if path is not None:
                raise ValueError("a ConditionalSampler carries its own reward: pass path=None")
            if (conditions is None) != (sampler.encoder is None):
                raise ValueError("conditions must be given for a conditional sampler (one with a condition encoder) "
                                 "and None for an unconditional one")
            self.policy = sampler.sampler.policy
        elif isinstance(sampler, DiffusionSampler):
            if path is None:
                raise ValueError("a DiffusionSampler needs its target path measure: pass path=BoltzmannPath(...)")
            if conditions is not None:
                raise ValueError("conditions need a ConditionalSampler (a DiffusionSampler has no condition encoder)")
            self.policy = sampler.policy
        else:
            raise TypeError(f"sampler must be a DiffusionSampler or a ConditionalSampler, got {type(sampler).__name__}")
        self.module: nn.Module = sampler
        self.path = path
        self.conditions = conditions
        self.samples_per_condition = config.samples_per_condition
        self.config = config
        param = next(sampler.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.times = power_grid(config.steps, config.grid_power, device=self.device, dtype=self.dtype)
        self.batch_conditions: Tensor | None = None  # each trajectory's condition in the last forward batch

    # ------------------------------------------------------------------ what is trained
    def parameter_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, learning rate): the sampler's parameters, one group at ``lr``."""
        return [(list(self.module.parameters()), self.config.lr)]

    def log_variance_rows(self) -> list[Tensor]:
        return self.policy.log_variance_rows()

    def replay_training(self, config: ReplayConfig) -> ReplayTraining:
        """Buffers for this sampler's states (and each state's condition)."""
        conditions = self.conditions
        return ReplayTraining(config, int(self.module.dim), device=self.device, dtype=self.dtype,
                              condition_shape=None if conditions is None else tuple(conditions.shape[1:]),
                              condition_dtype=None if conditions is None else conditions.dtype)

    # ------------------------------------------------------------------ batches
    def train_times(self, generator: torch.Generator) -> Tensor:
        """(N + 1,) grid of this iteration: the fixed (uniform or power) grid, or a fresh random one."""
        cfg = self.config
        if cfg.train_grid == "uniform":
            return self.times
        steps = cfg.steps
        if cfg.steps_max is not None and cfg.steps_max > cfg.steps:
            steps = int(torch.randint(cfg.steps, cfg.steps_max + 1, (1,), generator=generator, device=generator.device))
        return random_grid(steps, low=cfg.grid_low, high=cfg.grid_high, generator=generator,
                           device=self.device, dtype=self.dtype)

    def forward(self, explore: float, generator: torch.Generator, *, differentiable: bool) -> Trajectories:
        """The forward batch of one iteration (``batch_conditions`` records each trajectory's condition)."""
        cfg = self.config
        if isinstance(self.module, DiffusionSampler):
            return self.module.forward_trajectories(cfg.batch_size * cfg.samples_per_condition,
                                                    self.train_times(generator), self.path,
                                                    explore=explore, generator=generator,
                                                    differentiable=differentiable)
        y = None
        if self.conditions is not None:
            idx = torch.randint(self.conditions.shape[0], (cfg.batch_size,), generator=generator,
                                device=generator.device)
            y = self.conditions[idx.to(self.conditions.device)]
        k = self.samples_per_condition if y is not None else cfg.batch_size * self.samples_per_condition
        self.batch_conditions = None if y is None else y.repeat_interleave(k, 0)
        return self.module.trajectories(y, k, self.train_times(generator), explore=explore, generator=generator,
                                        differentiable=differentiable)

    def backward_count(self) -> int:
        """Buffer entries drawn for one backward update."""
        if self.conditions is not None:
            return self.config.batch_size
        return self.config.batch_size * self.samples_per_condition

    def backward(self, samples: Tensor, conditions: Tensor | None, generator: torch.Generator) -> Trajectories:
        """Backward trajectories ending at buffer states; with conditions, each drawn (x, y) is repeated
        K times (different backward noise) so that VarGrad's groups match forward batches."""
        if isinstance(self.module, DiffusionSampler):
            return self.module.backward_trajectories(samples, self.train_times(generator), self.path,
                                                     generator=generator)
        if conditions is not None:
            k = self.samples_per_condition
            samples, conditions = samples.repeat_interleave(k, 0), conditions.repeat_interleave(k, 0)
        return self.module.backward_trajectories(samples, conditions, self.train_times(generator),
                                                 generator=generator)

    def path_for(self, conditions: Tensor | None) -> BoltzmannPath:
        """The target path with ``conditions`` bound (the fixed path of an unconditional sampler)."""
        if isinstance(self.module, DiffusionSampler):
            return self.path
        return self.module.path_for(conditions)

    def backpropagate(self, objective: Objective, traj: Trajectories, *, replayed: bool,
                      generator: torch.Generator) -> Tensor:
        """Backpropagate the objective on ``traj``; returns the loss (detached)."""
        loss = objective.replay_loss(traj) if replayed else objective.loss(traj)
        _check_loss(loss, traj)
        loss.backward()
        return loss.detach()

    # ------------------------------------------------------------------ state beyond the weights
    def extra_state(self) -> dict[str, Any]:
        return {"path_evaluations": None if self.path is None else dict(self.path.evaluations)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.path is not None and state.get("path_evaluations") is not None:
            self.path.evaluations.update(state["path_evaluations"])


class DiffusionPosteriorModel:
    """A posterior fine-tuned from a diffusion prior, on the prior's own schedule.

    Args:
        posterior: the trainable :class:`DiffusionPosterior`.
        path: its :class:`DiffusionPriorPath` (prior, reward, beta).
        config: the run's settings (batch size, per-step gradients, exploration).
        conditions: (N, *cond_shape) training conditions of a posterior amortized over them (its model a
            :class:`~posterior.diffusion.conditional_denoiser.ConditionalDenoiser`, its path conditional): each
            iteration draws ``batch_size`` of them and ``samples_per_condition`` trajectories of each (consecutive,
            the groups of VarGrad). None: one unconditional target.
        dtype: of the simulated states.
    """

    def __init__(self, posterior: DiffusionPosterior, path: DiffusionPriorPath, config: TrainConfig, *,
                 conditions: Tensor | None = None, dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(posterior, DiffusionPosterior):
            raise TypeError(f"posterior must be a DiffusionPosterior, got {type(posterior).__name__}")
        if not isinstance(path, DiffusionPriorPath):
            raise TypeError(f"path must be a DiffusionPriorPath, got {type(path).__name__}")
        changed = sorted(set(config.changed()) & set(GRID_SETTINGS + ("log_var_lr_scale",)))
        if changed:
            raise ValueError(f"TrainConfig.{', '.join(changed)}: a posterior fine-tuned from a diffusion prior runs on "
                             f"the prior's own schedule and has no such setting")
        from posterior.diffusion.conditional_denoiser import conditional_of, separate_parameters

        conditional = conditional_of(posterior.model)
        amortized = conditional is not None
        if (conditions is not None) != amortized or (conditions is not None) != path.conditional:
            raise ValueError("conditions must be given exactly when the posterior's model is (or wraps) a "
                             "ConditionalDenoiser and its path's reward is conditional "
                             "(DiffusionPriorPath(..., conditional=True))")
        self.module: nn.Module = posterior.model
        self.posterior, self.path, self.config, self.dtype = posterior, path, config, dtype
        self.conditions = conditions
        self.device = posterior.prior.alpha_t.device
        self.event_shape = tuple(posterior.prior.event_shape)
        self.batch_conditions = None
        self.guidance, self.condition = separate_parameters(posterior.model)
        self.class_layers = amortized and bool(conditional.class_layers)
        separate = {id(p) for p in self.guidance + self.condition}
        self.trainable = [p for p in posterior.model.parameters() if p.requires_grad and id(p) not in separate]
        if not (self.trainable or self.guidance or self.condition):
            raise ValueError("the posterior model has no trainable parameters")

    def parameter_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, learning rate): the denoiser's trainable parameters at ``lr``, the guidance scales at
        ``lr_guidance``, and a condition table / encoder (and per-class layers) at ``lr_condition`` (each None: a
        multiple of ``lr``)."""
        cfg = self.config
        factor = CLASS_LAYERS_LR_FACTOR if self.class_layers else CONDITION_LR_FACTOR
        lr_condition = cfg.lr_condition if cfg.lr_condition is not None else factor * cfg.lr
        lr_guidance = cfg.lr_guidance if cfg.lr_guidance is not None else GUIDANCE_LR_FACTOR * cfg.lr
        groups = [(self.trainable, cfg.lr), (self.guidance, lr_guidance), (self.condition, lr_condition)]
        return [(params, rate) for params, rate in groups if params]

    def log_variance_rows(self) -> list[Tensor]:
        return []

    def replay_training(self, config: ReplayConfig) -> ReplayTraining:
        """A buffer of terminal states (flattened); local search needs a Boltzmann target's score."""
        if self.conditions is not None:
            raise ValueError("a replay buffer is not supported for a diffusion posterior amortized over conditions")
        if config.local_search:
            raise ValueError("local search (ReplayConfig.local_search) runs MALA on a Boltzmann target; a diffusion "
                             "prior's posterior has no tractable prior density for it")
        return ReplayTraining(config, math.prod(self.event_shape), device=self.device, dtype=self.dtype)

    @property
    def _track(self) -> bool:
        return not self.config.per_step

    def _batch_path(self, generator: torch.Generator) -> DiffusionPriorPath:
        """The path of this iteration: with ``batch_size`` drawn conditions, each repeated
        ``samples_per_condition`` times (``batch_conditions``), for a posterior amortized over conditions."""
        if self.conditions is None:
            return self.path
        idx = torch.randint(self.conditions.shape[0], (self.config.batch_size,), generator=generator,
                            device=generator.device)
        y = self.conditions[idx.to(self.conditions.device)]
        self.batch_conditions = y.repeat_interleave(self.config.samples_per_condition, 0)
        return self.path.bind(self.batch_conditions)

    def forward(self, explore: float, generator: torch.Generator, *, differentiable: bool) -> Trajectories:
        """Posterior trajectories; ``explore`` per unit time is ``explore / N`` per step."""
        return self.posterior.trajectories(self.batch, self._batch_path(generator),
                                           explore=explore / self.posterior.prior.num_steps,
                                           generator=generator, track_gradients=self._track, dtype=self.dtype)

    @property
    def batch(self) -> int:
        """Trajectories per step (one target: ``batch_size * samples_per_condition``)."""
        return self.config.batch_size * self.config.samples_per_condition

    def backward_count(self) -> int:
        return self.batch

    def backward(self, samples: Tensor, conditions: Tensor | None, generator: torch.Generator) -> Trajectories:
        return self.posterior.backward_trajectories(samples.reshape((-1,) + self.event_shape), self.path,
                                                    generator=generator, track_gradients=self._track)

    def score(self, states: Tensor) -> Trajectories:
        """Trajectories of given paths (N + 1, B, *event_shape), e.g. resampled from an importance pool."""
        return self.posterior.score(states.to(self.dtype), self.path, track_gradients=self._track)

    def path_for(self, conditions: Tensor | None) -> DiffusionPriorPath:
        return self.path

    def backpropagate(self, objective: Objective, traj: Trajectories, *, replayed: bool,
                      generator: torch.Generator) -> Tensor:
        """Backpropagate the objective, one denoiser step at a time with ``config.per_step``."""
        if self.config.per_step:
            loss = accumulate_gradients_per_step(self.posterior, traj, objective,
                                                 step_fraction=self.config.step_fraction, generator=generator)
            _check_loss(loss, traj)
            return loss
        loss = objective.replay_loss(traj) if replayed else objective.loss(traj)
        _check_loss(loss, traj)
        loss.backward()
        return loss.detach()

    def pathwise(self, objective: Objective, generator: torch.Generator) -> tuple[Tensor, float]:
        """Backpropagate the pathwise KL of reparameterized posterior paths (a differentiable objective);
        returns (loss, the batch's ELBO of log Z)."""
        from posterior.objectives.pathwise_kl import pathwise_kl

        batch = pathwise_kl(self.posterior, self._batch_path(generator), self.batch, generator=generator, dtype=self.dtype,
                            min_log_reward=objective.min_log_reward)
        if not torch.isfinite(batch.loss):
            raise FloatingPointError(f"pathwise KL loss is {float(batch.loss)}: check the reward and its gradient")
        batch.loss.backward()
        return batch.loss.detach(), float(-batch.log_ratio.mean())

    def forward_kl(self, states: Tensor, weight: float) -> Tensor:
        """Backpropagate weight * mean(-log q(tau)) over given target paths (trained steps only: the
        frozen ones do not depend on the weights); returns the term (detached)."""
        posterior = self.posterior
        log_q = posterior.prior.log_prob_steps(states.to(self.dtype), model=posterior.model_for(self.path),
                                               steps=posterior.trained_steps,
                                               checkpoint_steps=posterior.checkpoint_steps)
        term = -weight * log_q.sum(0).mean()
        term.backward()
        return term.detach()

    def extra_state(self) -> dict[str, Any]:
        return {"path_evaluations": dict(self.path.evaluations)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("path_evaluations") is not None:
            self.path.evaluations.update(state["path_evaluations"])



def _check_loss(loss: Tensor, traj: Trajectories) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"loss is {float(loss)}: log_reward range [{float(traj.log_reward.min())}, {float(traj.log_reward.max())}], "
            f"log_pf range [{float(traj.log_pf.min())}, {float(traj.log_pf.max())}]")
