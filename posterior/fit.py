"""`posterior.fit`: train an amortized sampler of p(x | y) ∝ p(x) r(x, y) in one call."""

from __future__ import annotations

import inspect
import math

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn

from posterior.core.checks import check_no_nan, check_shape
from posterior.training.cpu_allocator import retain_freed_memory
from posterior.samplers.conditional_sampler import ConditionalSampler, build_conditional_sampler
from posterior.objectives.factory import OBJECTIVES, default_flow_lr, make_objective
from posterior.training.replay import ReplayConfig, ReplayTraining
from posterior.objectives import TrajectoryBalance, VarGrad
from posterior.objectives.log_partition import ConditionalLogZ
from posterior.objectives.base import Objective
from posterior.samplers.networks import PISPolicy
from posterior.paths.path_target import BoltzmannPath
from posterior.training.engine import Trainer, TrainingConfig
from posterior.core.trajectories import Trajectories

if TYPE_CHECKING:
    from posterior.diffusion.diffusion_posterior import DiffusionPosterior


class ConditionalTrainer(Trainer):
    """Trainer whose every step draws ``config.batch_size`` conditions from a fixed set,
    with ``samples_per_condition`` trajectories each (VarGrad groups, conditional log Z)."""

    def __init__(self, model: ConditionalSampler, objective: Objective, conditions: Tensor | None,
                 config: TrainingConfig, samples_per_condition: int,
                 checkpoint_path: str | Path | None = None,
                 gradient_sync: Callable[[list[nn.Parameter]], None] | None = None,
                 replay: ReplayTraining | None = None) -> None:
        super().__init__(model, objective, None, config, checkpoint_path, gradient_sync, replay=replay)
        self.conditions = conditions
        self.samples_per_condition = int(samples_per_condition)

    @property
    def policy(self) -> PISPolicy:
        return self.sampler.sampler.policy

    def trajectories(self, explore: float) -> Trajectories:
        y = None
        if self.conditions is not None:
            idx = torch.randint(self.conditions.shape[0], (self.config.batch_size,), generator=self.generator,
                                device=self.generator.device)
            y = self.conditions[idx.to(self.conditions.device)]
        k = self.samples_per_condition if y is not None else self.config.batch_size * self.samples_per_condition
        self.batch_conditions = None if y is None else y.repeat_interleave(k, 0)
        return self.sampler.trajectories(y, k, self.train_times(), explore=explore, generator=self.generator,
                                         differentiable=self.objective.differentiable)

    def path_for(self, conditions: Tensor | None) -> BoltzmannPath:
        return self.sampler.path_for(conditions)

    def backward_count(self) -> int:
        if self.conditions is None:
            return self.config.batch_size * self.samples_per_condition
        return self.config.batch_size

    def backward_trajectories(self, samples: Tensor, conditions: Tensor | None) -> Trajectories:
        """Each drawn (x, y) is repeated K times (different backward noise), so that VarGrad's
        groups and the batch size match forward batches."""
        if conditions is not None:
            k = self.samples_per_condition
            samples, conditions = samples.repeat_interleave(k, 0), conditions.repeat_interleave(k, 0)
        return self.sampler.backward_trajectories(samples, conditions, self.train_times(), generator=self.generator)


class _CallableLikelihood:
    """Wrap a plain callable (x, y) -> (B,) as a likelihood."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn = fn

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        return self.fn(x, y)


def _posterior_reward(prior: Any, reward: Any, latent_dim: int | None) -> Any:
    """log p(z) + log r(decode(z), y) for a decoder prior (a diffusion prior decodes by its DDIM
    solve); the reward itself otherwise."""
    from posterior.constraints.likelihoods import LatentPosteriorReward
    from posterior.priors.vae import VAEDecoderPrior

    if prior is None:
        if not hasattr(reward, "dim") or not hasattr(reward, "log_reward"):
            raise ValueError("without a prior, reward must have `dim` and `log_reward(x, y)` (the full log-density)")
        return reward
    from posterior.priors.diffusion import DiffusionPrior

    if isinstance(prior, DiffusionPrior):  # noise space: z is the initial noise, f the DDIM solve
        shape, prior_ddim = tuple(prior.event_shape), prior.ddim_solve
        prior = VAEDecoderPrior(lambda z: prior_ddim(z.reshape((z.shape[0],) + shape)), math.prod(shape))
    elif not isinstance(prior, VAEDecoderPrior):
        if not isinstance(prior, nn.Module) and not callable(prior):
            raise TypeError(f"prior must be a VAEDecoderPrior, an nn.Module decoder or a callable, got {type(prior).__name__}")
        if latent_dim is None:
            raise ValueError("latent_dim is required when prior is a plain decoder")
        prior = VAEDecoderPrior(prior, latent_dim)
    likelihood = reward if hasattr(reward, "log_likelihood") else _CallableLikelihood(reward)
    if not callable(getattr(likelihood, "log_likelihood", None)):
        raise TypeError("reward must be a likelihood with log_likelihood(x, y) or a callable (x, y) -> (B,)")
    return LatentPosteriorReward(prior, likelihood)


def _validate(reward: Any, conditions: Tensor | None, device: torch.device) -> None:
    """Evaluate the reward once on two points so that shape and NaN problems surface before training."""
    dim = int(reward.dim)
    x = torch.zeros(2, dim, device=device)
    if conditions is None:
        value = reward.log_reward(x)
    else:
        value = reward.log_reward(x, conditions[:1].expand(2, *conditions.shape[1:]))
    check_shape(value, (2,), "reward log-density (log_reward(x, y))")
    check_no_nan(value, "reward")


def fit(*, reward: Any, prior: Any = None, conditions: Tensor | None = None, objective: str = "vargrad",
        space: str = "noise",
        iterations: int = 5000, batch_size: int = 32, samples_per_condition: int = 10, steps: int = 100,
        sigma2: float = 1.0, langevin: bool = False, langevin_scale: str = "per-dimension",
        learn_variance: bool = False, log_var_lr_scale: float = 1.0,
        explore: float = 0.0, log_z_init: str = "zero",
        encoder: str = "auto", hidden: int = 64, latent_dim: int | None = None,
        lr_policy: float = 1e-3, lr_flow: float | None = None, lr_decay_horizon: int = 0,
        lr_decay_final: float = 0.1, ema_decay: float = 0.0, seed: int = 0,
        device: torch.device | str | None = None, checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 0, resume: bool = False, progress: bool = True,
        process_index: int = 0, gradient_sync: Callable[[list[nn.Parameter]], None] | None = None,
        log: Callable[[dict[str, float], int], None] | None = None, log_every: int = 50,
        replay: ReplayConfig | None = None,
        retain_cpu_memory: bool = True) -> "ConditionalSampler | DiffusionPosterior":
    """Train an amortized sampler of p(x | y) ∝ p(x) r(x, y) for every condition y.

    Args:
        reward: with a ``prior``: a likelihood (``log_likelihood(x, y) -> (B,)``) or a callable
            (x, y) -> (B,); without: the full conditional log-density (``dim``, ``log_reward(x, y)``).
        prior: a :class:`posterior.priors.VAEDecoderPrior`, a decoder / generator ``nn.Module`` z -> x (then
            pass ``latent_dim``), or a :class:`posterior.priors.DiffusionPrior`.
        space: "noise": the sampler runs in the prior's latent / noise space with target
            N(z; 0, I) r(f(z), y) (f: the decoder, or a diffusion prior's deterministic DDIM solve);
            "data" (diffusion priors, unconditional): fine-tune the prior into the posterior with
            relative trajectory balance (objective "rtb" or "tb"), VarGrad ("vargrad") or the
            pathwise KL through the reward's gradient ("pis"; on-policy, no explore) (see
            :func:`posterior.training.rtb_training.RTBTrainer`), which returns a
            :class:`posterior.diffusion.diffusion_posterior.DiffusionPosterior`. It uses
            iterations, batch_size, lr_policy, lr_flow (log Z's rate), explore, the lr decay, ema_decay, seed,
            device (must be the prior's), checkpoint_dir / checkpoint_every / resume, progress and
            learn_variance (then each step's variance is learned too, per step and dimension:
            :class:`posterior.diffusion.learned_variance.LearnedVarianceDenoiser`);
            the noise-space sampler's settings (steps, langevin, hidden, replay, ...) are refused
            when not at their defaults.
        conditions: (N, *cond_shape) training conditions, or None for an unconditional target.
        objective: one of "tb" (conditional TB with a learned log Z(y)), "vargrad", "subtb",
            "fl-subtb", "pis".
        batch_size: conditions per iteration; ``samples_per_condition`` trajectories each.
        encoder: "mlp", "cnn" or "auto" (cnn for image-shaped conditions).
        langevin: Langevin parametrization of the drift (NN1(x, t) + NN2(t) * clipped score);
            ``langevin_scale`` "per-dimension" (NN2 has d outputs) or "shared" (one output, the
            paper's public code's default).
        log_var_lr_scale: with ``learn_variance``, the log-variance's learning rate relative to
            ``lr_policy`` (see :class:`posterior.training.engine.TrainingConfig`).
        lr_decay_horizon, lr_decay_final: cosine decay of ``lr_policy`` to ``lr_decay_final`` times
            its value over the first ``lr_decay_horizon`` iterations (0: constant rate).
        ema_decay: keep an exponential moving average of the trained weights with this decay (e.g.
            0.999; 0: off) and return the model with the average in place of the last weights; the
            checkpoint keeps both, so a resumed run continues from the last weights.
        log_z_init: "tb" only: "zero", or "batch" to start log Z (the shared offset of log Z(y)) at
            the first batch's estimate; use it with ``learn_variance`` and ``explore`` (see
            :class:`posterior.training.engine.TrainingConfig`).
        checkpoint_dir: folder for ``checkpoint.pt`` every ``checkpoint_every`` iterations;
            ``resume=True`` continues the same run from it.
        process_index, gradient_sync: for data-parallel training (one call per process): every
            process builds the same initial networks from ``seed``, draws its own conditions and
            noise (generator seeded with ``seed`` and ``process_index``), and ``gradient_sync``
            averages gradients so that all processes take the same steps. Process k > 0 writes
            ``checkpoint-k.pt`` and shows no progress bar.
        log: called every ``log_every`` iterations with ({"loss", "log_z_batch", "seconds_per_iter"},
            iteration), e.g. ``accelerator.log`` for TensorBoard or other trackers.
        replay: a :class:`ReplayConfig` to alternate forward updates with backward updates from a
            replay buffer (and MALA local search); every stored sample keeps its condition.
        retain_cpu_memory: on the CPU, keep freed tensor memory in the process heap for reuse
            (:func:`posterior.training.cpu_allocator.retain_freed_memory`, a process-wide glibc setting)
            instead of page-faulting fresh buffers every iteration; False leaves malloc as it is.
    Returns:
        the trained :class:`ConditionalSampler` (``sample``, ``log_z``, ``save_pretrained``).
    """
    if space not in ("noise", "data"):
        raise ValueError(f"space must be 'noise' or 'data', got {space!r}")
    if space == "data":
        noise_space_settings = dict(samples_per_condition=samples_per_condition, steps=steps, sigma2=sigma2,
                                    langevin=langevin, langevin_scale=langevin_scale,
                                    log_var_lr_scale=log_var_lr_scale, log_z_init=log_z_init, encoder=encoder,
                                    hidden=hidden, latent_dim=latent_dim, process_index=process_index,
                                    gradient_sync=gradient_sync, log=log, log_every=log_every, replay=replay)
        ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
        return _fit_relative(prior, reward, conditions, objective, iterations, batch_size, lr_policy, lr_flow,
                             explore, seed, progress, lr_decay_horizon, lr_decay_final, ema_decay,
                             None if device is None else torch.device(device), ckpt, checkpoint_every, resume,
                             retain_cpu_memory, noise_space_settings, learn_variance)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if retain_cpu_memory and device.type == "cpu":
        retain_freed_memory()
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if conditions is not None:
        if not isinstance(conditions, Tensor) or conditions.ndim < 2 or conditions.shape[0] < 1:
            raise ValueError(f"conditions must be a tensor of shape (N, *cond_shape), got "
                             f"{getattr(conditions, 'shape', type(conditions).__name__)}")
        check_no_nan(conditions.reshape(conditions.shape[0], -1), "conditions")
        conditions = conditions.to(device)
    target = _posterior_reward(prior, reward, latent_dim)
    _validate(target, conditions, device)
    cond_shape = None if conditions is None else tuple(conditions.shape[1:])
    if encoder == "auto":
        encoder = "cnn" if cond_shape is not None and (len(cond_shape) == 3 or _is_square(cond_shape)) else "mlp"
    torch.manual_seed(seed)  # network initialization; sampling noise uses the trainer's generator
    model = build_conditional_sampler(dim=int(target.dim), reward=target, sigma2=sigma2, cond_shape=cond_shape,
                                      encoder=encoder, langevin=langevin, langevin_scale=langevin_scale,
                                      learn_variance=learn_variance, hidden=hidden).to(device)
    obj = _make_objective(objective, model, target, conditional=conditions is not None,
                          samples_per_condition=samples_per_condition, hidden=hidden).to(device)
    config = TrainingConfig(iterations=iterations, batch_size=batch_size, steps=steps, lr_policy=lr_policy,
                            lr_flow=lr_flow if lr_flow is not None else default_flow_lr(objective),
                            explore=explore, log_var_lr_scale=log_var_lr_scale, log_z_init=log_z_init,
                            lr_decay_horizon=lr_decay_horizon, lr_decay_final=lr_decay_final,
                            ema_decay=ema_decay, seed=seed + 1_000_003 * process_index,
                            checkpoint_every=checkpoint_every)
    name = "checkpoint.pt" if process_index == 0 else f"checkpoint-{process_index}.pt"
    ckpt = Path(checkpoint_dir) / name if checkpoint_dir is not None else None
    buffers = None if replay is None else ReplayTraining(replay, int(target.dim), device=device,
                                                         condition_shape=cond_shape,
                                                         condition_dtype=None if conditions is None else conditions.dtype)
    trainer = ConditionalTrainer(model, obj, conditions, config, samples_per_condition, checkpoint_path=ckpt,
                                 gradient_sync=gradient_sync, replay=buffers)
    if resume and ckpt is not None and ckpt.exists():
        trainer.load(ckpt)

    def report(t: Trainer) -> None:
        h = t.history
        recent = slice(-log_every, None)
        log({"loss": sum(h.loss[recent]) / len(h.loss[recent]),
             "log_z_batch": sum(h.log_z_batch[recent]) / len(h.log_z_batch[recent]),
             "seconds_per_iter": sum(h.seconds[recent]) / len(h.seconds[recent])}, t.iteration)

    trainer.run(progress=progress and process_index == 0, callback=report if log is not None else None,
                callback_every=log_every)
    if ckpt is not None:
        trainer.save(ckpt)
    if trainer.ema is not None:
        trainer.ema.copy_to_parameters()
    model.training_history = trainer.history
    model.replay = buffers
    return model


def _refuse_noise_space_settings(given: dict[str, Any]) -> None:
    """space="data" fine-tunes the prior's own denoiser: refuse the noise-space sampler's settings
    (``given``: fit's argument name -> value) that differ from fit's defaults, instead of ignoring them."""
    defaults = inspect.signature(fit).parameters
    changed = [name for name, value in given.items() if value != defaults[name].default]
    if changed:
        raise ValueError(f"space='data' fine-tunes the diffusion prior itself and does not use {', '.join(changed)} "
                         f"(settings of the noise-space sampler): leave them at their defaults or use space='noise'")


def _fit_relative(prior: Any, reward: Any, conditions: Tensor | None, objective: str, iterations: int,
                  batch_size: int, lr: float, lr_log_z: float | None, explore: float, seed: int, progress: bool,
                  lr_decay_horizon: int, lr_decay_final: float, ema_decay: float, device: torch.device | None,
                  checkpoint_path: Path | None, checkpoint_every: int, resume: bool, retain_cpu_memory: bool,
                  noise_space_settings: dict[str, Any], learn_variance: bool):
    """space="data": RTB (or VarGrad, or the pathwise KL) fine-tuning of a diffusion prior toward prior x reward, on the
    prior's device (``device``, when given, must be that one); ``lr_log_z`` None keeps RTBConfig's default."""
    from posterior.priors.diffusion import DiffusionPrior

    from posterior.diffusion.diffusion_posterior import NEAR_DETERMINISTIC_VARIANCE, DiffusionPosterior, DiffusionPriorPath
    from posterior.objectives import PathIntegral, RelativeTrajectoryBalance
    from posterior.training.rtb_training import RTBConfig, RTBTrainer

    if not isinstance(prior, DiffusionPrior):
        raise ValueError(f"space='data' needs a posterior.priors.DiffusionPrior, got {type(prior).__name__}; "
                         "use space='noise' for decoders and generators")
    _refuse_noise_space_settings(noise_space_settings)
    if conditions is not None:
        raise ValueError("space='data' trains one unconditional posterior (a class-conditional posterior "
                         "denoiser is not supported yet): pass conditions=None, or use space='noise'")
    if objective not in ("tb", "rtb", "vargrad", "pis"):
        raise ValueError(f"objective for space='data' must be 'rtb' (alias 'tb'), 'vargrad' or 'pis' (the pathwise "
                         f"KL), got {objective!r}")
    prior_device = prior.alpha_t.device
    if device is not None and (device.type != prior_device.type
                               or (device.index is not None and device.index != prior_device.index)):
        raise ValueError(f"device {device} differs from the diffusion prior's device {prior_device}: space='data' "
                         f"fine-tunes a copy of the prior where it is; move the prior (prior.to(device)) first")
    if retain_cpu_memory and prior_device.type == "cpu":
        retain_freed_memory()
    log_r = reward.log_likelihood if hasattr(reward, "log_likelihood") else reward
    torch.manual_seed(seed)
    model = prior.posterior_copy()
    if not any(True for _ in model.parameters()):  # an analytic denoiser: learn a residual correction
        if len(prior.event_shape) != 1:
            raise ValueError("the prior's denoiser has no parameters to fine-tune; pass a DiffusionPosterior "
                             "with your own trainable model")
        from posterior.diffusion.residual_denoiser import ResidualDenoiser
        model = ResidualDenoiser(prior.denoiser, prior.event_shape[0])
    if learn_variance:
        from posterior.diffusion.learned_variance import LearnedVarianceDenoiser
        model = LearnedVarianceDenoiser(model, prior)
    # the near-deterministic end of the schedule stays the prior's (see DiffusionPosterior)
    posterior = DiffusionPosterior(prior, model, frozen_final_steps=prior.final_steps_below(NEAR_DETERMINISTIC_VARIANCE))
    obj = {"vargrad": VarGrad, "pis": PathIntegral}.get(objective, RelativeTrajectoryBalance)()
    log_z_lr = {} if lr_log_z is None else {"lr_log_z": lr_log_z}
    trainer = RTBTrainer(posterior, DiffusionPriorPath(prior, log_r), obj,
                         RTBConfig(iterations=iterations, batch_size=batch_size, lr=lr, explore=explore, seed=seed,
                                   lr_decay_horizon=lr_decay_horizon, lr_decay_final=lr_decay_final,
                                   ema_decay=ema_decay, checkpoint_every=checkpoint_every, **log_z_lr),
                         checkpoint_path=checkpoint_path)
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        trainer.load(checkpoint_path)
    trainer.run(progress=progress)  # writes the final checkpoint (last weights and their average)
    if trainer.ema is not None:
        trainer.ema.copy_to_parameters()
    posterior.training_history = trainer.history
    return posterior


def _make_objective(name: str, model: ConditionalSampler, target: Any, *, conditional: bool,
                    samples_per_condition: int, hidden: int) -> Objective:
    """Conditional variants: TB learns log Z(y) from the condition context, VarGrad groups the
    trajectories of each condition; SubTB flows see the context; FL-SubTB reads each batch's
    bound path measure from its trajectories."""
    if name == "tb":
        return TrajectoryBalance(conditional_log_z=ConditionalLogZ(hidden) if conditional else None)
    if name == "vargrad":
        return VarGrad(group_size=samples_per_condition if conditional else None)
    path = None if conditional else BoltzmannPath(target, model.sampler.reference)
    return make_objective(name, path, hidden=hidden, dim=int(target.dim))


def _is_square(shape: tuple[int, ...]) -> bool:
    if len(shape) != 1:
        return False
    side = int(round(shape[0] ** 0.5))
    return side * side == shape[0] and side >= 8
