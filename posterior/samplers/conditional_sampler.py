"""Amortized sampler of p(x | y) for every condition y: a diffusion sampler plus a condition encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from torch import Tensor, nn

from posterior.samplers.condition_encoders import make_condition_encoder
from posterior.paths.conditional_path import ConditionalReward, bind_conditions
from posterior.samplers.factory import langevin_per_dimension, make_sampler
from posterior.core.grids import uniform_grid
from posterior.paths.path_target import BoltzmannPath
from posterior.samplers.sampler import DiffusionSampler
from posterior.core.trajectories import Trajectories

if TYPE_CHECKING:
    from posterior.training.history import TrainingHistory


class ConditionalSampler(nn.Module):
    """Diffusion sampler whose drift sees a context computed from the condition y.

    Trajectories of a batch are condition-major: condition i owns rows i*K .. i*K + K - 1.
    Unconditional use is the same class with ``encoder=None`` and ``y=None``.

    Args:
        sampler: the diffusion sampler (its policy takes a (B, hidden) context).
        reward: log R(x, y) (or log R(x) when unconditional); kept by reference, not
            registered as a submodule, so its parameters are never trained or saved.
        encoder: condition encoder y (B, *cond_shape) -> (B, hidden), or None.
        config: the keyword arguments of :func:`build_conditional_sampler` (for saving).
    """

    def __init__(self, sampler: DiffusionSampler, reward: Any, encoder: nn.Module | None = None,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.sampler = sampler
        self.encoder = encoder
        self.config = dict(config or {})
        self._reward = (reward,)  # a tuple keeps a user's nn.Module out of our parameters
        self.training_history: "TrainingHistory | None" = None  # set by `fit`

    @property
    def reward(self) -> Any:
        return self._reward[0]

    def set_reward(self, reward: Any) -> None:
        self._reward = (reward,)

    @property
    def dim(self) -> int:
        return self.sampler.dim

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ trajectories
    def trajectories(self, y: Tensor | None, samples_per_condition: int, times: Tensor, *,
                     explore: float = 0.0, generator: torch.Generator | None = None,
                     differentiable: bool = False, track_gradients: bool = True) -> Trajectories:
        """K = ``samples_per_condition`` trajectories for each condition in y (B_y, *cond_shape).

        Returns:
            Trajectories of B_y * K trajectories, condition-major, with ``context`` set.
        """
        k = int(samples_per_condition)
        if k < 1:
            raise ValueError(f"samples_per_condition must be >= 1, got {samples_per_condition}")
        if y is None:
            if self.encoder is not None:
                raise ValueError("this sampler is conditional: pass conditions y")
            path = BoltzmannPath(self.reward, self.sampler.reference)
            return self.sampler.forward_trajectories(k, times, path, explore=explore, generator=generator,
                                                     differentiable=differentiable, track_gradients=track_gradients)
        if self.encoder is None:
            raise ValueError("this sampler is unconditional: pass y=None")
        y = y.to(self._device())
        cond_shape = tuple(self.config.get("cond_shape", y.shape[1:]))
        if tuple(y.shape[1:]) != cond_shape:
            raise ValueError(f"y must have shape (B, {', '.join(map(str, cond_shape))}), got {tuple(y.shape)}")
        with torch.set_grad_enabled(track_gradients):
            context = self.encoder(y).repeat_interleave(k, 0)
        y_rep = y.repeat_interleave(k, 0)
        path = bind_conditions(self.reward, y_rep, self.sampler.reference)
        return self.sampler.forward_trajectories(y_rep.shape[0], times, path, explore=explore, generator=generator,
                                                 context=context, differentiable=differentiable,
                                                 track_gradients=track_gradients)

    def path_for(self, y: Tensor | None) -> BoltzmannPath:
        """The target path measure with conditions y (B, *cond_shape) bound (None: unconditional)."""
        if y is None:
            return BoltzmannPath(self.reward, self.sampler.reference)
        return bind_conditions(self.reward, y.to(self._device()), self.sampler.reference)

    def backward_trajectories(self, samples: Tensor, y: Tensor | None, times: Tensor, *,
                              generator: torch.Generator | None = None,
                              track_gradients: bool = True) -> Trajectories:
        """Trajectories ending at samples (M, d) with one condition each, y (M, *cond_shape) or None,
        drawn from the reference's backward kernels (off-policy training from a buffer)."""
        if (y is None) != (self.encoder is None):
            raise ValueError("pass y for a conditional sampler and y=None for an unconditional one")
        context = None
        if y is not None:
            if y.shape[0] != samples.shape[0]:
                raise ValueError(f"y must hold one condition per sample: {y.shape[0]} vs {samples.shape[0]}")
            y = y.to(self._device())
            with torch.set_grad_enabled(track_gradients):
                context = self.encoder(y)
        return self.sampler.backward_trajectories(samples, times, self.path_for(y), generator=generator,
                                                  context=context, track_gradients=track_gradients)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample(self, y: Tensor | None, num_samples: int, *, steps: int = 100,
               generator: torch.Generator | None = None, max_trajectories: int = 50_000) -> Tensor:
        """Posterior samples.

        Returns:
            (len(y), num_samples, d), or (num_samples, d) when y is None.
        """
        times = uniform_grid(steps)
        if y is None:
            return self.trajectories(None, num_samples, times, generator=generator, track_gradients=False).samples
        out = []
        for chunk in _chunks(y, num_samples, max_trajectories):
            traj = self.trajectories(chunk, num_samples, times, generator=generator, track_gradients=False)
            out.append(rearrange(traj.samples, "(b k) d -> b k d", k=num_samples))  # condition-major
        return torch.cat(out)


def build_conditional_sampler(*, dim: int, reward: Any, sigma2: float = 1.0, cond_shape: tuple[int, ...] | None = None,
                              encoder: str = "mlp", langevin: bool = False, learn_variance: bool = False,
                              hidden: int = 64, langevin_scale: str = "per-dimension",
                              noising: str = "brownian", num_classes: int | None = None) -> ConditionalSampler:
    """A :class:`ConditionalSampler` from plain settings (recorded for saving; ``langevin_scale``: see
    :func:`posterior.samplers.factory.langevin_per_dimension`; ``noising``: the reference process, "brownian" or
    "vp"; ``num_classes``: integer class labels as conditions, ``cond_shape`` () and ``encoder`` "embedding")."""
    per_dimension = langevin_per_dimension(langevin_scale, langevin)
    config = {"dim": int(dim), "sigma2": float(sigma2), "cond_shape": None if cond_shape is None else list(cond_shape),
              "encoder": encoder, "langevin": bool(langevin), "learn_variance": bool(learn_variance),
              "hidden": int(hidden), "langevin_scale": langevin_scale, "noising": noising, "num_classes": num_classes}
    sampler = make_sampler(dim, sigma2, langevin=langevin, learn_variance=learn_variance, hidden=hidden,
                           langevin_per_dimension=per_dimension, noising=noising)
    enc = None if cond_shape is None else make_condition_encoder(encoder, tuple(cond_shape), hidden, num_classes)
    return ConditionalSampler(sampler, reward, enc, config)


def _chunks(y: Tensor, per_condition: int, max_trajectories: int) -> list[Tensor]:
    size = max(1, max_trajectories // max(1, per_condition))
    return list(torch.split(y, size))


__all__ = ["ConditionalReward", "ConditionalSampler", "build_conditional_sampler"]
