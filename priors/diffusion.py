"""A pretrained diffusion model as a prior over trajectories: `diffusers` denoiser + scheduler.

The prior is the ancestral (DDPM) sampler on a strided schedule of N training timesteps
tau_N > ... > tau_1. A trajectory is time-major, states[0] = x_{tau_N} ~ N(0, I) and
states[N] = the sample. Step k goes from timestep t = tau_{N-k} (cumulative alpha a_t) to the
previous one p (a_p; a_p = 1 after the last step):

    p(x_p | x_t) = N(x_p; mu(x_t, x0_hat), var_k I),
    mu = sqrt(a_p) (1 - a_t / a_p) / (1 - a_t) * x0_hat + sqrt(a_t / a_p) (1 - a_p) / (1 - a_t) * x_t,
    var_k = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)          (the DDPM posterior variance, "fixed_small"),
    or var_k = 1 - a_t / a_p                                 (beta of the strided step, "fixed_large"),

as the scheduler's ``variance_type`` says, with x0_hat from the network's epsilon-, v- or
sample-prediction, clipped (``clip_sample``) or dynamically thresholded (``thresholding``) as the
scheduler does. The final step (to a_p = 1) has posterior variance 0, i.e. it is deterministic
(x = x0_hat); so that prior and posterior trajectories have densities, it uses
var = 1 - a_{tau_1} (the forward noise of that step; "fixed_large" gives the same) for both
(``final_variance``). Every posterior built on this prior uses the same variances (so relative
trajectory balance compares two Gaussians with equal variance at every step), unless its model
scales them: a ``model`` with a method ``log_variance_scale(k)`` (e.g.
:class:`posterior.diffusion.learned_variance.LearnedVarianceDenoiser`) has step variance var_k * exp(s_k),
with s_k broadcastable to the event shape.

Loading (:meth:`DiffusionPrior.from_pretrained`, :meth:`DiffusionPrior.from_pipeline`) takes the
scheduler's own timesteps for N steps (``set_timesteps(N)``, so its ``timestep_spacing`` and
``steps_offset`` hold) and refuses, with a ValueError naming the setting, what the prior cannot honour:

* schedulers other than ``DDPMScheduler`` and ``DDIMScheduler``. A DDIM scheduler is read for its
  alphas, timesteps and x0 settings only: the prior is still the ancestral DDPM sampler, whose kernel
  is ``DDIMScheduler.step`` with ``eta=1`` (for the default "leading" spacing; for other spacings
  DDIMScheduler steps to ``t - T // N`` instead of the next listed timestep, the prior to the next
  listed one, as DDPMScheduler does). The DDIM scheduler's default ``eta=0`` update is a
  deterministic map, not this prior's kernel; it is :meth:`DiffusionPrior.ddim_solve`. Its
  ``set_alpha_to_one=False`` (a last step to a_0 instead of 1) is not followed: the last step ends
  at the sample (a_p = 1), as with DDPMScheduler.
* ``variance_type`` "learned" / "learned_range" (a UNet with out_channels = 2 * in_channels: a
  per-pixel variance from the network is not supported) and "fixed_large_log" (DDPMScheduler.step
  draws NaN noise for it; pass ``variance_type="fixed_large"`` for the variance beta_t it stands for).
  "fixed_small_log" is "fixed_small" (DDPMScheduler.step uses the same noise scale for both).
* denoisers other than ``UNet2DModel`` and ``UNet2DConditionModel``, and out_channels != in_channels.

A conditional UNet (a class-conditional ``UNet2DModel`` with ``num_class_embeds`` / ``class_embed_type``, or a
``UNet2DConditionModel``) is the prior p(x | c) at one fixed condition c, given as ``conditioning={"class_labels":
c}`` and / or ``{"encoder_hidden_states": (L, cross_attention_dim)}`` (:mod:`posterior.priors.conditioning`); a
missing or unexpected input is refused at load time, naming it.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from posterior.core.optional import require
from posterior.priors.conditioning import required_conditioning, wrap

LOG_2PI = math.log(2.0 * math.pi)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
DENOISERS = ("UNet2DModel", "UNet2DConditionModel")


def _variance_type(value: str) -> str:
    """The checked ``variance_type`` ("fixed_small_log" reads as "fixed_small")."""
    if value in ("learned", "learned_range"):
        raise ValueError(f"variance_type={value!r} is not supported: a learned-variance UNet (out_channels = "
                         "2 * in_channels, a per-pixel variance from the network) cannot be the prior's kernel")
    if value == "fixed_large_log":
        raise ValueError("variance_type='fixed_large_log' is not supported (diffusers' DDPMScheduler.step draws NaN "
                         "noise for it); pass variance_type='fixed_large' for the variance beta_t it stands for")
    if value not in VARIANCE_TYPES:
        raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {value!r}")
    return "fixed_small" if value == "fixed_small_log" else value


def _check_loadable(unet_class: str, unet_config: Any, scheduler_class: str, scheduler_config: Any,
                    variance_type: str | None) -> tuple[int, ...]:
    """Refuse (ValueError naming the setting) a denoiser / scheduler pair the prior cannot honour;
    return the event shape (C, H, W) from the UNet config."""
    if scheduler_class not in SCHEDULERS:
        raise ValueError(f"scheduler class {scheduler_class} is not supported (supported: {', '.join(SCHEDULERS)})")
    if unet_class not in DENOISERS:
        raise ValueError(f"denoiser class {unet_class} is not supported (supported: {', '.join(DENOISERS)})")
    get = unet_config.get
    vtype = variance_type or scheduler_config.get("variance_type") or "fixed_small"
    channels, out = get("in_channels"), get("out_channels")
    if vtype in ("learned", "learned_range") or (out is not None and out != channels):
        raise ValueError(f"out_channels={out} with in_channels={channels} and variance_type={vtype!r}: a "
                         "learned-variance UNet (out_channels = 2 * in_channels) is not supported; the prior "
                         "needs out_channels == in_channels")
    _variance_type(vtype)
    size = get("sample_size")
    if isinstance(size, int):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise ValueError(f"sample_size must be an int or (height, width), got {size!r}")
    return (int(channels), int(size[0]), int(size[1]))


def denoise(model: nn.Module, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
    """Call a diffusers-style denoiser (``kwargs``: e.g. ``class_labels``); accepts outputs with ``.sample`` or
    plain tensors."""
    out = model(x, t, **kwargs)
    return out.sample if hasattr(out, "sample") else out


class DiffusionPrior(nn.Module):
    """Diffusion prior on a strided schedule.

    Args:
        denoiser: module called as ``denoiser(x, t)`` with x (B, *event_shape) and t (B,) long
            timesteps (e.g. ``diffusers.UNet2DModel``); returns a tensor or an object with ``.sample``.
        scheduler: a diffusers scheduler (DDPM, DDIM, ...) with ``alphas_cumprod`` and
            ``config.num_train_timesteps``; its ``prediction_type``, ``clip_sample``,
            ``thresholding`` and ``variance_type`` are used (see the module docstring).
        num_steps: N, the strided schedule's length (<= num_train_timesteps).
        event_shape: shape of one sample.
        prediction_type: override of the scheduler's ("epsilon", "v_prediction" or "sample").
        clip_sample: clip x0_hat to [-range, range] (default: the scheduler's setting).
        timesteps: explicit descending timesteps (N,) instead of the even stride from
            num_train_timesteps - 1 to 0 (e.g. a diffusers scheduler's ``timesteps`` after
            ``set_timesteps(N)``).
        variance_type: override of the scheduler's ("fixed_small" (default), "fixed_small_log"
            (the same) or "fixed_large"); others are refused with a ValueError.
    """

    def __init__(self, denoiser: nn.Module, scheduler: Any, num_steps: int, event_shape: tuple[int, ...], *,
                 prediction_type: str | None = None, clip_sample: bool | None = None,
                 timesteps: Tensor | None = None, variance_type: str | None = None) -> None:
        super().__init__()
        self.denoiser = denoiser
        for p in self.denoiser.parameters():
            p.requires_grad_(False)
        self.scheduler = scheduler
        config = scheduler.config
        total = int(config.num_train_timesteps)
        if not 1 <= num_steps <= total:
            raise ValueError(f"num_steps must be in [1, {total}], got {num_steps}")
        self.prediction_type = prediction_type or getattr(config, "prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        self.clip_sample = bool(getattr(config, "clip_sample", False) if clip_sample is None else clip_sample)
        self.clip_range = float(getattr(config, "clip_sample_range", 1.0) or 1.0)
        self.variance_type = _variance_type(variance_type or getattr(config, "variance_type", None) or "fixed_small")
        self.thresholding = bool(getattr(config, "thresholding", False))
        if self.thresholding:
            self.threshold_ratio = float(getattr(config, "dynamic_thresholding_ratio", 0.995))
            self.threshold_max = float(getattr(config, "sample_max_value", 1.0))
        self.event_shape = tuple(event_shape)
        self.num_steps = int(num_steps)
        if timesteps is None:  # descending: tau_N = total - 1 ... tau_1 = 0 (evenly spaced, rounded)
            strided = torch.linspace(total - 1, 0, num_steps).round().long()
        else:
            strided = torch.as_tensor(timesteps, dtype=torch.long).flatten().cpu()
            if strided.numel() != num_steps or not bool((strided[1:] < strided[:-1]).all()):
                raise ValueError(f"timesteps must be {num_steps} strictly decreasing values, got {strided.tolist()}")
        alphas = scheduler.alphas_cumprod.double()
        a_t = alphas[strided]
        a_p = torch.cat([alphas[strided[1:]], torch.ones(1, dtype=torch.float64)])
        if self.variance_type == "fixed_large":  # beta of the strided step (the last: 1 - a_t as well)
            var = 1 - a_t / a_p
        else:
            var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
            var[-1] = 1 - a_t[-1]  # the final step: the forward noise variance instead of 0
        # schedule buffers live where the denoiser does (``prior.to(...)`` moves both later)
        device = next(iter(denoiser.parameters()), torch.empty(0)).device
        buffers = {"timesteps": strided, "alpha_t": a_t, "alpha_prev": a_p, "step_var": var,
                   "coef_x0": a_p.sqrt() * (1 - a_t / a_p) / (1 - a_t),
                   "coef_xt": (a_t / a_p).sqrt() * (1 - a_p) / (1 - a_t)}
        for name, value in buffers.items():
            self.register_buffer(name, value.to(device), persistent=False)

    @classmethod
    def from_pretrained(cls, path: str | Path, num_steps: int, **kwargs: Any) -> "DiffusionPrior":
        """Load a local diffusers folder: a pipeline folder (``unet/`` + ``scheduler/``) or one holding
        both ``config.json`` and ``scheduler_config.json``. The classes are those the configs name
        (``_class_name``; UNet2DModel / DDPMScheduler where absent); unsupported classes and settings are
        refused with a ValueError before weights load (see the module docstring). The timesteps are the
        scheduler's own for ``num_steps`` (``set_timesteps``) unless ``timesteps=`` is given; other
        ``kwargs`` go to the constructor, except ``conditioning``: the fixed condition of a conditional UNet
        (``{"class_labels": c}``, ``{"encoder_hidden_states": (L, D)}``; see the module docstring)."""
        diffusers = require("diffusers", "diffusion", "posterior.priors.diffusion.DiffusionPrior.from_pretrained")
        path = Path(path)
        unet_dir = path / "unet" if (path / "unet").is_dir() else path
        sched_dir = path / "scheduler" if (path / "scheduler").is_dir() else path
        configs = []
        for file in (unet_dir / "config.json", sched_dir / "scheduler_config.json"):
            if not file.is_file():
                raise FileNotFoundError(f"no {file.name} in {file.parent} (expected a diffusers folder)")
            configs.append(json.loads(file.read_text()))
        unet_config, sched_config = configs
        unet_class = unet_config.get("_class_name", "UNet2DModel")
        sched_class = sched_config.get("_class_name", "DDPMScheduler")
        shape = _check_loadable(unet_class, unet_config, sched_class, sched_config, kwargs.get("variance_type"))
        conditioning = kwargs.pop("conditioning", None)
        required_conditioning(unet_class, unet_config)  # refuse what cannot be supplied before weights load
        unet = getattr(diffusers, unet_class).from_pretrained(unet_dir, local_files_only=True)
        scheduler = getattr(diffusers, sched_class).from_pretrained(sched_dir, local_files_only=True)
        denoiser = wrap(unet, unet_class, unet_config, conditioning)
        return cls._loaded(denoiser, scheduler, num_steps, shape, kwargs)

    @classmethod
    def from_pipeline(cls, pipeline: Any, num_steps: int, **kwargs: Any) -> "DiffusionPrior":
        """The prior of an in-memory diffusers pipeline (``pipeline.unet``, ``pipeline.scheduler``), with
        the checks and timesteps of :meth:`from_pretrained`. The UNet is shared (its parameters are
        frozen); the scheduler is copied (``set_timesteps`` does not touch the pipeline's)."""
        unet, scheduler = pipeline.unet, copy.deepcopy(pipeline.scheduler)
        shape = _check_loadable(type(unet).__name__, dict(unet.config), type(scheduler).__name__,
                                dict(scheduler.config), kwargs.get("variance_type"))
        denoiser = wrap(unet, type(unet).__name__, dict(unet.config), kwargs.pop("conditioning", None))
        return cls._loaded(denoiser, scheduler, num_steps, shape, kwargs)

    @classmethod
    def _loaded(cls, unet: nn.Module, scheduler: Any, num_steps: int, shape: tuple[int, ...],
                kwargs: dict[str, Any]) -> "DiffusionPrior":
        total = int(scheduler.config.num_train_timesteps)
        if not 1 <= num_steps <= total:
            raise ValueError(f"num_steps must be in [1, {total}], got {num_steps}")
        if kwargs.get("timesteps") is None:
            scheduler.set_timesteps(num_steps)
            kwargs = {**kwargs, "timesteps": scheduler.timesteps}
        return cls(unet, scheduler, num_steps, shape, **kwargs)

    def posterior_copy(self) -> nn.Module:
        """A trainable copy of the denoiser (the starting point of a fine-tuned posterior)."""
        model = copy.deepcopy(self.denoiser)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    # ------------------------------------------------------------------ per-step kernels
    def _b(self, value: Tensor, like: Tensor) -> Tensor:
        return value.to(like).reshape((-1,) + (1,) * (like.ndim - 1))

    def predict_x0(self, x: Tensor, k: int, model: nn.Module | None = None) -> Tensor:
        """x0_hat at step k (0 = first step from pure noise) for states x (B, *event_shape)."""
        model = self.denoiser if model is None else model
        t = self.timesteps[k].to(x.device).expand(x.shape[0])
        out = denoise(model, x, t)
        a = self.alpha_t[k].to(x)
        if self.prediction_type == "epsilon":
            x0 = (x - (1 - a).sqrt() * out) / a.sqrt()
        elif self.prediction_type == "v_prediction":
            x0 = a.sqrt() * x - (1 - a).sqrt() * out
        else:
            x0 = out
        if self.thresholding:  # dynamic thresholding, as diffusers' ``_threshold_sample`` (before clipping)
            flat = x0.flatten(1).abs()
            flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
            s = torch.quantile(flat, self.threshold_ratio, dim=1).clamp(1.0, self.threshold_max)
            s = self._b(s, x0)
            return torch.minimum(torch.maximum(x0, -s), s) / s
        return x0.clamp(-self.clip_range, self.clip_range) if self.clip_sample else x0

    def step_mean(self, x: Tensor, k: int, model: nn.Module | None = None) -> Tensor:
        """Mean of the step-k transition from x (B, *event_shape). A ``model`` with a method
        ``step_mean_shift(x, k)`` (e.g. :class:`posterior.diffusion.guided_denoiser.GuidedDenoiser`) has its
        value added to the mean."""
        x0 = self.predict_x0(x, k, model)
        mean = self.coef_x0[k].to(x) * x0 + self.coef_xt[k].to(x) * x
        shift = getattr(model, "step_mean_shift", None)
        return mean if shift is None else mean + shift(x, k)

    def final_steps_below(self, variance: float) -> int:
        """How many trailing steps of the schedule have a transition variance below ``variance``
        (the near-deterministic end of a strided DDPM schedule, e.g. 111 -> 0 -> sample)."""
        count = 0
        for v in reversed(self.step_var.tolist()):
            if v >= variance:
                break
            count += 1
        return count

    def step_std(self, k: int) -> float:
        return float(self.step_var[k].sqrt())

    def step_variance(self, k: int, model: nn.Module | None = None) -> Tensor | None:
        """The step-k variance of ``model`` where it differs from the prior's: var_k * exp(s_k) of
        shape broadcastable to the event shape, for a model with ``log_variance_scale(k)`` (s_k);
        None for any other model (then the step has the prior's variance var_k)."""
        scale = getattr(model, "log_variance_scale", None)
        if scale is None:
            return None
        s = scale(k)
        return self.step_var[k].to(s) * s.exp()

    def log_prob_step(self, x_next: Tensor, mean: Tensor, k: int, variance: Tensor | None = None) -> Tensor:
        """(B,) log N(x_next; mean, var_k I), or with ``variance`` (broadcastable to the event shape,
        from :meth:`step_variance`) the diagonal Gaussian of that variance."""
        diff = (x_next - mean).flatten(1)
        if variance is None:
            var = self.step_var[k].to(mean.dtype)
            return -0.5 * (diff * diff).sum(-1) / var - 0.5 * diff.shape[1] * (LOG_2PI + var.log())
        var = variance.to(mean.dtype).expand(self.event_shape).flatten()
        return -0.5 * (diff * diff / var).sum(-1) - 0.5 * (LOG_2PI + var.log()).sum()

    # ------------------------------------------------------------------ trajectories
    def initial_log_prob(self, x: Tensor) -> Tensor:
        """(B,) log N(x; 0, I) of the start states."""
        flat = x.flatten(1)
        return -0.5 * (flat * flat).sum(-1) - 0.5 * flat.shape[1] * LOG_2PI

    @torch.no_grad()
    def sample(self, batch_size: int, *, generator: torch.Generator | None = None, model: nn.Module | None = None,
               model_steps: int | None = None, explore: float = 0.0, explore_steps: int | None = None,
               device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32, return_log_probs: bool = False,
               start: Tensor | None = None, first_step: int = 0) -> Tensor | tuple[Tensor, Tensor]:
        """Ancestral trajectories (N + 1, B, *event_shape) under ``model`` (default: the prior),
        with ``explore`` added to the variance of every step, or of the first ``explore_steps``
        (for off-policy exploration). With ``model_steps`` only the first that many steps use
        ``model``, the rest the prior's denoiser.

        With ``return_log_probs`` also the (N, B) per-step log-densities under the un-noised
        model (as :meth:`log_prob_steps` gives, without a second pass of the denoiser).

        ``start`` (B, *event_shape) with ``first_step`` = k continues from given states before step k
        instead of pure noise (on its device and dtype): (N + 1 - k, B, *event_shape), no log-probs.
        """
        if start is None:
            if first_step != 0:
                raise ValueError(f"first_step={first_step} needs start (the states before that step)")
            device = device if device is not None else self.alpha_t.device
            x = torch.randn((batch_size,) + self.event_shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(start.shape[1:]) != tuple(self.event_shape) or not 0 <= first_step <= self.num_steps:
                raise ValueError(f"start must have shape (B, {', '.join(map(str, self.event_shape))}) and first_step "
                                 f"be in [0, {self.num_steps}]; got {tuple(start.shape)} and {first_step}")
            if return_log_probs:
                raise ValueError("return_log_probs is not available for a continuation (start)")
            x, device, dtype = start, start.device, start.dtype
        shape = x.shape
        states, rows = [x], []
        for k in range(first_step, self.num_steps):
            step_model = model if model_steps is None or k < model_steps else None
            mean = self.step_mean(x, k, step_model)
            variance = self.step_variance(k, step_model)
            extra = explore if explore_steps is None or k < explore_steps else 0.0
            std = (math.sqrt(float(self.step_var[k]) + extra) if variance is None else
                   (variance.to(dtype) + extra).sqrt())
            x = mean + std * torch.randn(shape, generator=generator, device=device, dtype=dtype)
            states.append(x)
            if return_log_probs:
                rows.append(self.log_prob_step(x, mean, k, variance))
        trajectories = torch.stack(states)
        if not return_log_probs:
            return trajectories
        rows[0] = rows[0] + self.initial_log_prob(states[0])
        return trajectories, torch.stack(rows)

    def log_prob_steps(self, states: Tensor, model: nn.Module | None = None, *, steps: int | None = None,
                       checkpoint_steps: bool = False) -> Tensor:
        """(N, B) per-step log-densities of trajectories (N + 1, B, *event_shape), or only the first
        ``steps`` rows ((steps, B)); row 0 includes the start density log N(x_0; 0, I). With
        ``checkpoint_steps`` each step's denoiser activations are recomputed in the backward pass
        (gradient checkpointing)."""
        def step(k: int) -> Tensor:
            return self.log_prob_step(states[k + 1], self.step_mean(states[k], k, model), k,
                                      self.step_variance(k, model))

        count = self.num_steps if steps is None else steps
        if not 1 <= count <= self.num_steps:
            raise ValueError(f"steps must be in [1, {self.num_steps}], got {steps}")
        if checkpoint_steps and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint
            rows = [checkpoint(step, k, use_reentrant=False) for k in range(count)]
        else:
            rows = [step(k) for k in range(count)]
        rows[0] = rows[0] + self.initial_log_prob(states[0])
        return torch.stack(rows)

    @torch.no_grad()
    def noise_backward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Trajectories (N + 1, B, *event_shape) ending at x, drawn from the forward noising chain
        q(x_t | x_p) = N(sqrt(a_t / a_p) x_p, (1 - a_t / a_p) I) (replay of terminal states)."""
        states = [x]
        current = x
        for k in range(self.num_steps - 1, -1, -1):
            ratio = float(self.alpha_t[k] / self.alpha_prev[k])
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            current = math.sqrt(ratio) * current + math.sqrt(1 - ratio) * noise
            states.append(current)
        return torch.stack(states[::-1])

    def ddim_solve(self, z: Tensor, model: nn.Module | None = None) -> Tensor:
        """The deterministic DDIM map (eta = 0) from initial noise z (B, *event_shape) to a sample,
        differentiable in z (the generator of noise-space posteriors)."""
        x = z
        for k in range(self.num_steps):
            x0 = self.predict_x0(x, k, model)
            a_t, a_p = self.alpha_t[k].to(x), self.alpha_prev[k].to(x)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            x = a_p.sqrt() * x0 + (1 - a_p).sqrt() * eps
        return x
