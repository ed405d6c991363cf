"""The training engine's settings: one typed config, validated where it is defined."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from posterior.training.exploration import EXPLORE_DECAYS
from posterior.training.lr_schedule import CosineDecay

LOG_Z_INITS = ("batch", "zero")
TRAIN_GRIDS = ("uniform", "random")


@dataclass
class TrainConfig:
    """Hyperparameters of :class:`posterior.training.engine.Trainer`, whatever it trains: a sampler
    in latent / noise space or of a Boltzmann density, conditional or not, or a posterior fine-tuned
    from a diffusion prior (data space). Defaults are the diffusion-sampler paper's where it has one.

    Attributes:
        iterations: optimizer steps.
        batch_size: conditions per step for a conditional sampler (each with ``samples_per_condition``
            trajectories); without conditions a step has ``batch_size * samples_per_condition`` trajectories.
        samples_per_condition: K trajectories per drawn condition (VarGrad's groups, conditional log Z).
        lr: Adam learning rate of the sampler (policy, condition encoder, posterior denoiser).
        lr_flow: Adam learning rate of the objective's own parameters (log Z, log Z(y), state flows);
            None: the objective's default (1e-1, or 1e-2 with a learned state flow).
        lr_guidance: a guided posterior's per-step guidance scales (``SamplerConfig.guidance``,
            :class:`posterior.diffusion.guided_denoiser.GuidedDenoiser`); None: ``GUIDANCE_LR_FACTOR`` (100)
            times ``lr`` (1e-2 at lr 1e-4: the scales are O(1) numbers, the weights' rate would leave them fixed).
        lr_condition: the condition table / encoder of a diffusion posterior amortized over conditions
            (:class:`posterior.diffusion.conditional_denoiser.ConditionalDenoiser`): it starts at zero and must
            grow to the scale of the UNet's timestep embedding while the fine-tuned weights move at ``lr``;
            None: ``CONDITION_LR_FACTOR`` (300) times ``lr`` (3e-2 at lr 1e-4; 1e-2 learned a two-class table
            3x slower, 1e-1 faster, in 60-100 iterations on the shipped MNIST prior); with
            ``SamplerConfig.class_norms`` / ``class_rank`` (which train in this group too)
            ``CLASS_LAYERS_LR_FACTOR`` (10) times ``lr``: per-class norm offsets at 3e-2 throw the UNet off
            (batch ELBO −30 against the prior's −13).
        lr_decay_horizon, lr_decay_final: cosine decay of the sampler's learning rates (``lr``, ``lr_guidance``
            and ``lr_condition``, not ``lr_flow``) to ``lr_decay_final`` times their value over the first
            ``lr_decay_horizon`` iterations, constant after (0: no decay).
        log_var_lr_scale: with a learned variance, the log-variance output rows move this much slower
            than the rest of the policy (exactly a learning rate ``lr * log_var_lr_scale`` for them).
        grad_clip: clip the global gradient norm to this (None: off).
        ema_decay: keep an exponential moving average of the sampler's weights,
            e_k = d e_(k-1) + (1 - d) theta_k, to sample and evaluate with (0: off).
        log_z_init: "batch" (default): an objective with a learned scalar log Z (TB, RTB, conditional
            TB's shared offset) starts it at the first batch's estimate mean(log Q - log p_F) instead
            of 0, so that on a target whose log Z is in the hundreds it does not spend thousands of
            iterations climbing at ``lr_flow`` per step; objectives without one have nothing to start.
            "zero": start at 0 (the paper's).
        explore: extra sampling variance per unit time at iteration 0 (decayed to 0 over
            ``explore_horizon``); log-probabilities are always those of the un-noised policy. On a
            diffusion prior's N-step schedule each step gets ``explore / N``.
        explore_horizon: iterations over which exploration decays (None: all of training).
        explore_decay: what decays linearly to 0: "variance", or "std" (the paper's public code).
        seed: seeds the sampling noise (network initialization is seeded by whoever builds them).
        checkpoint_every: with a checkpoint path, write a checkpoint every this many iterations
            (0: only when training ends).
        steps: N, time steps per training trajectory of a diffusion sampler (a posterior fine-tuned
            from a diffusion prior runs on the prior's own schedule instead).
        train_grid: "uniform", or "random" (a fresh coarse grid every iteration with increments drawn
            from U[grid_low, grid_high] and normalized).
        grid_power: with a uniform grid, ``power_grid(steps, grid_power)`` (1: uniform; > 1 refines
            the steps toward t = 1).
        steps_max: with a random grid, draw the number of steps from [steps, steps_max] every iteration.
        per_step: (diffusion-prior posteriors) accumulate the gradient one denoiser step at a time
            (exact, memory-light); False keeps one graph over all steps.
        step_fraction: with ``per_step``, the share of steps used per iteration (unbiased, rescaled).
    """

    iterations: int = 25_000
    batch_size: int = 300
    samples_per_condition: int = 1
    lr: float = 1e-3
    lr_flow: float | None = None
    lr_guidance: float | None = None
    lr_condition: float | None = None
    lr_decay_horizon: int = 0
    lr_decay_final: float = 0.1
    log_var_lr_scale: float = 1.0
    grad_clip: float | None = None
    ema_decay: float = 0.0
    log_z_init: str = "batch"
    explore: float = 0.0
    explore_horizon: int | None = None
    explore_decay: str = "variance"
    seed: int = 0
    checkpoint_every: int = 0
    steps: int = 100
    train_grid: str = "uniform"
    grid_low: float = 1.0
    grid_high: float = 10.0
    grid_power: float = 1.0
    steps_max: int | None = None
    per_step: bool = True
    step_fraction: float = 1.0

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "samples_per_condition", "steps"):
            _integer(self, name, minimum=1)
        for name in ("lr_decay_horizon", "checkpoint_every", "seed"):
            _integer(self, name, minimum=0)
        for name in ("explore_horizon", "steps_max"):
            if getattr(self, name) is not None:
                _integer(self, name, minimum=1)
        _positive(self, "lr")
        for name in ("lr_flow", "lr_guidance", "lr_condition", "grad_clip"):
            if getattr(self, name) is not None:
                _positive(self, name)
        for name in ("log_var_lr_scale", "grid_power", "grid_low", "grid_high"):
            _positive(self, name)
        if not isinstance(self.per_step, bool):
            raise ValueError(f"TrainConfig.per_step must be True or False, got {self.per_step!r}")
        final = self.lr_decay_final
        if isinstance(final, bool) or not isinstance(final, (int, float)) or not 0.0 <= final <= 1.0:
            raise ValueError(f"TrainConfig.lr_decay_final (the final lr multiplier) must be in [0, 1], got {final!r}")
        if not (isinstance(self.explore, (int, float)) and math.isfinite(self.explore) and self.explore >= 0):
            raise ValueError(f"TrainConfig.explore must be a finite number >= 0 (0: no exploration), got {self.explore!r}")
        if not (isinstance(self.ema_decay, (int, float)) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1) (0: no weight average), got {self.ema_decay!r}")
        if not (isinstance(self.step_fraction, (int, float)) and 0.0 < self.step_fraction <= 1.0):
            raise ValueError(f"TrainConfig.step_fraction must be in (0, 1], got {self.step_fraction!r}")
        _choice(self, "log_z_init", LOG_Z_INITS)
        _choice(self, "explore_decay", EXPLORE_DECAYS)
        _choice(self, "train_grid", TRAIN_GRIDS)
        CosineDecay(self.lr_decay_horizon, self.lr_decay_final)
        if not 0 < self.grid_low <= self.grid_high:
            raise ValueError(f"TrainConfig.grid_low and TrainConfig.grid_high must satisfy 0 < grid_low <= grid_high, "
                             f"got {self.grid_low} and {self.grid_high}")
        if self.steps_max is not None and (self.train_grid != "random" or self.steps_max < self.steps):
            raise ValueError(f"TrainConfig.steps_max needs train_grid='random' and steps_max >= steps, got "
                             f"{self.steps_max} with {self.train_grid!r} and steps={self.steps}")
        if self.grid_power != 1 and self.train_grid != "uniform":
            raise ValueError(f"TrainConfig.grid_power {self.grid_power} needs train_grid='uniform' (a random grid "
                             f"has its own steps), got {self.train_grid!r}")

    def changed(self) -> dict[str, object]:
        """The settings that differ from their defaults (for error messages and reports)."""
        default = TrainConfig()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}


# settings that may change when a run is resumed: the budget and the checkpoint cadence
RESUMABLE_SETTINGS = ("iterations", "checkpoint_every")
# settings of a diffusion sampler's own time grid, which a diffusion prior's posterior does not use
GRID_SETTINGS = ("steps", "train_grid", "grid_low", "grid_high", "grid_power", "steps_max")
# settings of the per-step gradient of a diffusion prior's posterior
DIFFUSION_GRADIENT_SETTINGS = ("per_step", "step_fraction", "lr_guidance", "lr_condition")
# lr_condition = CONDITION_LR_FACTOR * lr and lr_guidance = GUIDANCE_LR_FACTOR * lr unless set
CONDITION_LR_FACTOR = 300.0
# with SamplerConfig.class_norms / class_rank (per-class layers, which 3e-2 throws off): lr_condition = 10 * lr
CLASS_LAYERS_LR_FACTOR = 10.0
GUIDANCE_LR_FACTOR = 100.0


def _integer(config: TrainConfig, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"TrainConfig.{name} must be an integer >= {minimum}, got {value!r}")


def _positive(config: TrainConfig, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"TrainConfig.{name} must be a finite number > 0, got {value!r}")


def _choice(config: TrainConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"TrainConfig.{name} must be one of {choices}, got {value!r}")
