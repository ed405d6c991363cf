"""Training loop for relative trajectory balance (or VarGrad) on a diffusion prior.

Each iteration draws posterior trajectories (with extra exploration variance that decays
linearly; log-probs are always under the un-noised posterior) or, on every other iteration, either
backward trajectories (forward noising) from high-reward replay-buffer samples or prior trajectories
resampled by reward from an importance pool (:class:`posterior.training.importance_pool.ImportancePool`). The
gradient is exact either way: through one graph over all steps, or accumulated one step at a
time (``per_step``, the memory-light default), optionally on a random subset of steps.

With a differentiable objective (:class:`posterior.objectives.PathIntegral`) each iteration instead
simulates reparameterized posterior paths and descends their pathwise KL
(:func:`posterior.objectives.pathwise_kl.pathwise_kl`): on-policy only, through one graph over the path.

``forward_kl`` > 0 adds a mass-covering term to every iteration, with any objective: lambda times the
posterior's mean negative log-likelihood -log q(tau) of a batch of paths resampled from the importance
pool, a Monte Carlo gradient of lambda KL(target || q) (up to the pool's resampling error). The
reverse KL that RTB, VarGrad and the pathwise KL fit is mode-seeking; the forward term penalizes
target paths the posterior under-covers. Both vanish at q = target, so the optimum is unchanged
(lambda = 1: the symmetric Jeffreys divergence). The pool then feeds only this term. Its weight can
decay on a cosine (``forward_kl_decay_horizon``), so that the reverse KL alone shapes the end of the run.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from posterior.training import checkpoint
from posterior.core.checks import check_shape
from posterior.diffusion.diffusion_posterior import DiffusionPosterior, DiffusionPriorPath, accumulate_gradients_per_step
from posterior.training.exploration import LinearDecay
from posterior.training.importance_pool import ImportancePool
from posterior.training.lr_schedule import CosineDecay
from posterior.objectives.base import Objective
from posterior.objectives.pathwise_kl import pathwise_kl
from posterior.training.replay_buffer import ReplayBuffer
from posterior.training.weight_average import WeightAverage


@dataclass
class RTBConfig:
    """Attributes:
        iterations, batch_size: optimizer steps and trajectories per step.
        lr: Adam learning rate of the posterior model; lr_log_z: of log Z; lr_guidance: of a
            guided model's per-step guidance scales (``model.guidance_parameters()``; None: lr).
        explore: extra per-step variance at iteration 0 (decays linearly to 0).
        per_step: accumulate the gradient one step at a time (exact, low memory).
        step_fraction: with per_step, the share of steps used per iteration (rescaled, unbiased).
        replay: keep a rank-prioritized buffer of terminal states and train on backward
            (noised) trajectories from it on odd iterations.
        buffer_size, rank_k: buffer capacity and rank weight k.
        seed: seeds all sampling noise.
        checkpoint_every: with a checkpoint path, write a checkpoint every this many iterations
            (and at the end of :meth:`RTBTrainer.run`); 0: only at the end.
        lr_decay_horizon, lr_decay_final: cosine decay of the posterior's learning rates (lr and
            lr_guidance; not lr_log_z) to ``lr_decay_final`` times their value over the first
            ``lr_decay_horizon`` iterations, constant after; horizon 0: no decay.
        ema_decay: keep an exponential moving average of the posterior's trained weights
            (:class:`posterior.training.weight_average.WeightAverage`) to sample with (0: off).
        forward_kl: weight lambda of the mass-covering term lambda * mean(-log q(tau)) over a batch
            of ``batch_size`` paths resampled from the trainer's ``trajectory_pool`` (needed), added
            to every iteration's loss (0: off; the pool then trains on odd iterations instead).
        forward_kl_decay_horizon, forward_kl_decay_final: cosine decay of that weight to
            ``forward_kl_decay_final`` times ``forward_kl`` over the first ``forward_kl_decay_horizon``
            iterations, constant after (:class:`posterior.training.lr_schedule.CosineDecay`); horizon 0: constant.
    """

    iterations: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    lr_log_z: float = 1e-1
    lr_guidance: float | None = None
    explore: float = 0.0
    per_step: bool = True
    step_fraction: float = 1.0
    replay: bool = False
    buffer_size: int = 100_000
    rank_k: float = 0.01
    seed: int = 0
    checkpoint_every: int = 0
    lr_decay_horizon: int = 0
    lr_decay_final: float = 0.1
    ema_decay: float = 0.0
    forward_kl: float = 0.0
    forward_kl_decay_horizon: int = 0
    forward_kl_decay_final: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no weight average), got {self.ema_decay}")
        if not self.forward_kl >= 0.0:
            raise ValueError(f"forward_kl must be >= 0 (0: off), got {self.forward_kl}")
        if self.forward_kl_decay_horizon < 0:
            raise ValueError(f"forward_kl_decay_horizon must be >= 0 (0: constant), got {self.forward_kl_decay_horizon}")
        if not 0.0 <= self.forward_kl_decay_final <= 1.0:
            raise ValueError(f"forward_kl_decay_final must be in [0, 1], got {self.forward_kl_decay_final}")
        if self.forward_kl_decay_horizon and not self.forward_kl:
            raise ValueError(f"forward_kl_decay_horizon={self.forward_kl_decay_horizon} decays the forward_kl "
                             "weight, which is 0 (off)")

    def forward_kl_weight(self, iteration: int) -> float:
        """The forward-KL weight lambda at ``iteration`` (after its cosine decay)."""
        decay = CosineDecay(self.forward_kl_decay_horizon, self.forward_kl_decay_final)
        return self.forward_kl * decay(iteration)


# settings that may change when a run is resumed: the budget and the checkpoint cadence
_RESUMABLE_CHANGES = ("iterations", "checkpoint_every")


@dataclass
class RTBHistory:
    """Per-iteration records. ``batch_log_z`` is mean(log Q - log p_F) over the iteration's forward
    batch, log Q = log p_prior(tau) + beta log r (an ELBO of log Z when the batch is on-policy;
    None for iterations that trained on backward trajectories from the buffer)."""

    loss: list[float] = field(default_factory=list)
    log_z: list[float | None] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    batch_log_z: list[float | None] = field(default_factory=list)

    def median_seconds(self, skip: int = 3) -> float:
        values = self.seconds[skip:] or self.seconds
        return statistics.median(values) if values else float("nan")

    def recent_batch_log_z(self, last: int = 50) -> float | None:
        """Median of the last ``last`` forward batches' log Z estimates (None if there were none)."""
        values = [v for v in self.batch_log_z if v is not None][-last:]
        return statistics.median(values) if values else None

    def batch_log_z_curve(self, window: int = 100) -> list[tuple[int, float]]:
        """(iterations done, median batch log Z of the forward batches in that window) for each
        complete window of ``window`` iterations."""
        curve = []
        for end in range(window, len(self.batch_log_z) + 1, window):
            values = [v for v in self.batch_log_z[end - window:end] if v is not None]
            if values:
                curve.append((end, statistics.median(values)))
        return curve


class RTBTrainer:
    """Fine-tunes ``posterior`` toward p_prior(x) r(x)^beta.

    Args:
        posterior: the trainable :class:`DiffusionPosterior`.
        path: the :class:`DiffusionPriorPath` (prior, reward, beta).
        objective: :class:`RelativeTrajectoryBalance` or :class:`VarGrad` (any trajectories: explored,
            replayed or pooled ones too), or :class:`PathIntegral` (the pathwise KL of on-policy
            paths; needs a differentiable reward).
        config: hyperparameters.
        checkpoint_path: file for atomic checkpoints (None: none); :meth:`load` resumes the same run.
        trajectory_pool: an :class:`ImportancePool` of prior trajectories weighted by r^beta; odd
            iterations then train on paths resampled from it, or with ``config.forward_kl`` every
            iteration adds their negative log-likelihood. Not with ``config.replay``. Checkpoints
            keep the pool, and :meth:`load` restores it.
    """

    def __init__(self, posterior: DiffusionPosterior, path: DiffusionPriorPath, objective: Objective,
                 config: RTBConfig, *, dtype: torch.dtype = torch.float32,
                 checkpoint_path: str | Path | None = None, trajectory_pool: ImportancePool | None = None) -> None:
        if config.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {config.checkpoint_every}")
        if trajectory_pool is not None and config.replay:
            raise ValueError("trajectory_pool and config.replay are two sources of off-policy trajectories; use one")
        if config.forward_kl and trajectory_pool is None:
            raise ValueError(f"forward_kl={config.forward_kl} needs a trajectory_pool (the target's paths)")
        if objective.differentiable and (config.explore or config.replay or
                                         (trajectory_pool is not None and not config.forward_kl)):
            raise ValueError(f"{type(objective).__name__} trains on the posterior's own reparameterized paths: "
                             "it takes no explore, replay or trajectory_pool (except for forward_kl)")
        if trajectory_pool is not None:
            check_shape(trajectory_pool.paths, (posterior.prior.num_steps + 1, None) + tuple(posterior.prior.event_shape),
                        "trajectory_pool.paths")
        self.trajectory_pool = trajectory_pool
        self.posterior, self.path, self.objective, self.config = posterior, path, objective, config
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        guidance = getattr(posterior.model, "guidance_parameters", None)
        guidance = list(guidance()) if guidance is not None and config.lr_guidance is not None else []
        separate = {id(p) for p in guidance}
        trainable = [p for p in posterior.model.parameters() if p.requires_grad and id(p) not in separate]
        if not trainable and not guidance:
            raise ValueError("the posterior model has no trainable parameters")
        groups = [{"params": trainable, "lr": config.lr}] if trainable else []
        if guidance:
            groups.append({"params": guidance, "lr": config.lr_guidance})
        self._decaying_lrs = [group["lr"] for group in groups]  # the posterior's groups; log Z's rate stays
        if list(objective.parameters()):
            groups.append({"params": list(objective.parameters()), "lr": config.lr_log_z})
        self.optimizer = torch.optim.Adam(groups)
        self.ema = WeightAverage(trainable + guidance, config.ema_decay) if config.ema_decay else None
        self.lr_decay = CosineDecay(config.lr_decay_horizon, config.lr_decay_final)
        self.device = posterior.prior.alpha_t.device
        self.dtype = dtype
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.exploration = LinearDecay(config.explore, config.iterations)
        self.buffer = (ReplayBuffer(_flat_size(posterior.prior.event_shape), config.buffer_size, rank_k=config.rank_k,
                                    device=self.device, dtype=dtype) if config.replay else None)
        self.iteration = 0
        self.last_batch_log_z: float | None = None
        self.history = RTBHistory()
        self.peak_memory_bytes: int | None = None

    @property
    def _pool_iterations(self) -> bool:
        """Whether odd iterations train on pool paths (a pool without forward_kl)."""
        return self.trajectory_pool is not None and not self.config.forward_kl

    def step(self) -> float:
        """One optimizer step; returns the loss."""
        if self.objective.differentiable:
            return self._pathwise_step()
        cfg = self.config
        has_source = self._pool_iterations or (self.buffer is not None and len(self.buffer) > 0)
        backward = has_source and self.iteration % 2 == 1
        keep_graph = not cfg.per_step
        if backward and self._pool_iterations:
            states = self.trajectory_pool.sample(cfg.batch_size, self.generator).to(self.dtype)
            traj = self.posterior.score(states, self.path, track_gradients=keep_graph)
        elif backward:
            flat = self.buffer.sample(cfg.batch_size, self.generator)[0]
            samples = flat.reshape((-1,) + tuple(self.posterior.prior.event_shape))
            traj = self.posterior.backward_trajectories(samples, self.path, generator=self.generator,
                                                        track_gradients=keep_graph)
        else:
            traj = self.posterior.trajectories(cfg.batch_size, self.path, explore=self.exploration(self.iteration),
                                               generator=self.generator, track_gradients=keep_graph,
                                               dtype=self.dtype)
            if self.buffer is not None:
                self.buffer.add(traj.samples.detach().flatten(1), traj.log_reward.detach())
        with torch.no_grad():
            self.last_batch_log_z = None if backward else float(-self.objective.residual(traj).mean())
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.per_step:
            loss = accumulate_gradients_per_step(self.posterior, traj, self.objective,
                                                 step_fraction=cfg.step_fraction, generator=self.generator)
        else:
            loss = self.objective.loss(traj)
            loss.backward()
        return self._apply_gradients(loss.detach() + self._forward_kl_backward())

    def _pathwise_step(self) -> float:
        batch = pathwise_kl(self.posterior, self.path, self.config.batch_size, generator=self.generator,
                            dtype=self.dtype, min_log_reward=self.objective.min_log_reward)
        self.last_batch_log_z = float(-batch.log_ratio.mean())
        self.optimizer.zero_grad(set_to_none=True)
        batch.loss.backward()
        return self._apply_gradients(batch.loss.detach() + self._forward_kl_backward())

    def _forward_kl_backward(self) -> torch.Tensor:
        """With ``config.forward_kl``: accumulate the gradient of lambda * mean(-log q(tau)) (lambda at
        this iteration, after its decay) over a batch of pool paths (trained steps only: the frozen ones
        do not depend on the weights) and return that term (detached); otherwise 0."""
        lam = self.config.forward_kl_weight(self.iteration)
        if not lam:
            return torch.zeros((), device=self.device, dtype=self.dtype)
        states = self.trajectory_pool.sample(self.config.batch_size, self.generator).to(self.dtype)
        log_q = self.posterior.prior.log_prob_steps(states, model=self.posterior.model,
                                                    steps=self.posterior.trained_steps,
                                                    checkpoint_steps=self.posterior.checkpoint_steps)
        term = -lam * log_q.sum(0).mean()
        term.backward()
        return term.detach()

    def _apply_gradients(self, loss: torch.Tensor) -> float:
        """Check the loss and the gradients, then take the optimizer (and weight-average) step."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"RTB loss is {float(loss)} at iteration {self.iteration}")
        for name, p in self.posterior.model.named_parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                raise FloatingPointError(f"non-finite gradient in posterior parameter {name!r}")
        self.lr_decay.set_rates(self.optimizer, self._decaying_lrs, self.iteration)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        return float(loss.detach())

    def averaged_weights(self):
        """Context manager: inside it the posterior holds the moving average of its trained weights
        (``config.ema_decay`` > 0), the weights to sample with; without an average it changes nothing."""
        return contextlib.nullcontext() if self.ema is None else self.ema.applied()

    def run(self, progress: bool = False) -> RTBHistory:
        from tqdm.auto import tqdm

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = tqdm(total=self.config.iterations, initial=self.iteration, disable=not progress, mininterval=1.0)
        while self.iteration < self.config.iterations:
            start = time.perf_counter()
            loss = self.step()
            self.history.seconds.append(time.perf_counter() - start)
            self.history.loss.append(loss)
            self.history.log_z.append(self.objective.log_z())
            self.history.batch_log_z.append(self.last_batch_log_z)
            self.iteration += 1
            bar.update(1)
            if self.iteration % 20 == 0:
                bar.set_postfix(loss=f"{loss:.3g}")
            every = self.config.checkpoint_every
            if self.checkpoint_path and every and self.iteration % every == 0:
                self.save(self.checkpoint_path)
        bar.close()
        if self.checkpoint_path:
            self.save(self.checkpoint_path)
        if self.device.type == "cuda":
            self.peak_memory_bytes = int(torch.cuda.max_memory_allocated(self.device))
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"model": self.posterior.model.state_dict(), "objective": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "iteration": self.iteration, "history": asdict(self.history), "config": asdict(self.config),
                "buffer": None if self.buffer is None else self.buffer.state_dict(),
                "trajectory_pool": None if self.trajectory_pool is None else self.trajectory_pool.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict()}

    def save(self, path) -> None:
        checkpoint.save_atomic(self.state_dict(), path)

    def load(self, path) -> None:
        """Resume from a checkpoint of the same run: every setting but the budget and the
        checkpoint cadence must match (a ValueError names the ones that differ)."""
        state = checkpoint.load(path, map_location=self.device)
        checkpoint.check_same_settings(state["config"], asdict(self.config), asdict(RTBConfig()),
                                       _RESUMABLE_CHANGES, str(path))
        stored_pool = state.get("trajectory_pool")
        if (stored_pool is None) != (self.trajectory_pool is None):
            raise ValueError(f"{path}: the checkpoint was written {'with' if stored_pool is not None else 'without'} "
                             f"a trajectory_pool and this trainer has {'one' if self.trajectory_pool else 'none'}")
        self.posterior.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        checkpoint.restore_generator(self.generator, state["generator"])
        self.iteration = int(state["iteration"])
        self.history = RTBHistory(**state["history"])
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        if stored_pool is not None:  # the run's own pool, whatever this trainer was built with
            self.trajectory_pool = ImportancePool.from_state_dict(stored_pool)
        if self.ema is not None:  # check_same_settings has made sure the checkpoint has one
            self.ema.load_state_dict(state["ema"])


def _flat_size(shape: tuple[int, ...]) -> int:
    size = 1
    for s in shape:
        size *= int(s)
    return size
