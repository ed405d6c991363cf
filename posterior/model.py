"""`Posterior`: what `fit` returns, whatever it trained, with one contract.

- A sampler in a prior's latent / noise space (a VAE decoder, a generator, a diffusion prior's DDIM
  solve): :meth:`Posterior.sample` gives decoded samples x = f(z), :meth:`Posterior.sample_latent` z.
- A sampler of a density without a prior (a Boltzmann target, conditional or not): samples x.
- A posterior fine-tuned from a diffusion prior in data space: samples x on the prior's schedule.

``sample(y, n, proposals=K)`` keeps each sample from K of the posterior's own trajectories by importance
weight (sampling-importance-resampling with the trained posterior as the proposal: closer to the exact
posterior, at K trajectories and their weights per sample). ``log_z(y, num_samples)`` gives per-condition
estimates of log Z(y) (ELBO, importance-weighted, its standard error, ESS) from the same weights;
``save_pretrained(folder)`` writes ``config.json`` (class, library version, kind, architecture, what the
prior and reward were) and ``model.safetensors``; ``from_pretrained(folder,
prior=..., reward=...)`` rebuilds it in a fresh process from the same prior and reward that went to
`fit`, and refuses others, saying what to pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from einops import rearrange, repeat
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from posterior.core import metrics
from posterior.targets import decoder_prior, describe, sampler_target

KINDS = ("sampler", "diffusion")
MAX_TRAJECTORIES = 50_000  # default bound on the trajectories simulated at once
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


class Posterior(nn.Module):
    """A trained amortized posterior p(x | y) ∝ p(x) r(x, y).

    Args:
        network: a :class:`~posterior.samplers.conditional_sampler.ConditionalSampler` (kind "sampler") or a
            :class:`~posterior.diffusion.diffusion_posterior.DiffusionPosterior` (kind "diffusion").
        prior: the prior passed to `fit` (None for a density without a prior).
        reward: the reward / likelihood passed to `fit`.
        spec: how to rebuild ``network`` (saved in ``config.json``).
        path: a diffusion posterior's target path measure (prior, reward, beta).
        proposal: the Gaussian proposal whose whitened coordinates the sampler runs in (None: none).
    """

    def __init__(self, network: nn.Module, *, prior: Any, reward: Any, spec: dict[str, Any], path: Any = None,
                 proposal: Any = None) -> None:
        super().__init__()
        if spec.get("kind") not in KINDS:
            raise ValueError(f"spec['kind'] must be one of {KINDS}, got {spec.get('kind')!r}")
        self.network = network
        self.spec = dict(spec)
        self._user = (prior, reward, path, proposal)  # not submodules: the user's models are neither trained nor saved
        decoder = decoder_prior(prior, spec.get("latent_dim")) if spec["kind"] == "sampler" else None
        self._decoder = (decoder,)  # a tuple keeps the user's decoder out of this module's parameters
        self.training_history = None  # set by `fit`

    # ------------------------------------------------------------------ what it is
    @property
    def kind(self) -> str:
        return self.spec["kind"]

    @property
    def prior(self) -> Any:
        return self._user[0]

    @property
    def reward(self) -> Any:
        return self._user[1]

    @property
    def conditional(self) -> bool:
        return self.spec.get("cond_shape") is not None

    def _device(self) -> torch.device:
        for tensor in self.network.parameters():
            return tensor.device
        return torch.device("cpu")

    @property
    def num_classes(self) -> int | None:
        """K for a posterior amortized over integer class labels y in [0, K); None otherwise."""
        condition = self.spec.get("network", {}).get("condition") if self.kind == "diffusion" else None
        return self.spec.get("num_classes") if condition is None else condition.get("num_classes")

    def _check_y(self, y: Tensor | None) -> Tensor | None:
        if not self.conditional:
            if y is not None:
                raise ValueError("this posterior is unconditional: pass y=None")
            return None
        classes = self.num_classes
        if y is None:
            expected = f"class labels (B,) in [0, {classes})" if classes is not None else \
                f"y of shape (B, {_shape(self.spec['cond_shape'])})"
            raise ValueError(f"this posterior is conditional: pass {expected}")
        expected = f"(B, {_shape(self.spec['cond_shape'])})"
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"y must be a tensor or array of shape {expected}, got {type(y).__name__}") from None
        if classes is not None:
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim != 1 or y.shape[0] < 1:
                raise ValueError(f"y must be integer class labels of shape (B,) in [0, {classes}) (as the conditions "
                                 f"given to fit), got {y.dtype} of shape {tuple(y.shape)}")
            if bool(((y < 0) | (y >= classes)).any()):
                raise ValueError(f"y must be class labels in [0, {classes}), got values in "
                                 f"[{int(y.min())}, {int(y.max())}]")
            return y.long()
        if not y.is_floating_point():
            raise ValueError(f"y must be floating point (as the conditions given to fit), got {y.dtype}")
        if y.dtype != torch.float32:
            y = y.float()
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y contains NaN or inf: every condition must be finite")
        if self.kind == "diffusion" and (y.ndim < 1 or y.shape[0] < 1 or
                                         tuple(y.shape[1:]) != tuple(self.spec["cond_shape"])):
            raise ValueError(f"y must have shape {expected}, got {tuple(y.shape)}")
        return y

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_latent(self, y: Tensor | None = None, num_samples: int = 1, *, steps: int = 100, proposals: int = 1,
                      generator: torch.Generator | None = None, max_trajectories: int = MAX_TRAJECTORIES) -> Tensor:
        """Samples of the sampler's own state z: (len(y), num_samples, d), or (num_samples, d) without y.
        For a posterior without a latent space (no decoder prior, or data space) this is :meth:`sample`;
        ``proposals`` as there."""
        _check_count(num_samples)
        _check_integer("steps", steps)
        _check_integer("proposals", proposals)
        _check_integer("max_trajectories", max_trajectories)
        if self.kind == "diffusion":
            return self.sample(y, num_samples, proposals=proposals, generator=generator)
        y = self._check_y(y)
        if proposals == 1:
            u = self.network.sample(y, num_samples, steps=steps, generator=generator,
                                    max_trajectories=max_trajectories)
        else:
            u = self._resampled(y, num_samples, proposals, steps, generator, max_trajectories)
        target = self.network.reward
        if not hasattr(target, "to_z"):
            return u
        # the sampler runs in the proposal's whitened coordinates: map every sample to z with its own condition
        flat = rearrange(u, "... d -> (...) d")
        rows = None if y is None else repeat(y.to(u.device), "b ... -> (b k) ...", k=num_samples)
        return target.to_z(flat, rows).reshape(u.shape)

    @torch.no_grad()
    def sample(self, y: Tensor | None = None, num_samples: int = 1, *, steps: int = 100, proposals: int = 1,
               generator: torch.Generator | None = None) -> Tensor:
        """Posterior samples in the user's space: decoded x = f(z) for a latent / noise-space posterior.

        Args:
            steps: time steps of a sampler's grid (a diffusion posterior runs on its prior's schedule).
            proposals: K >= 1 trajectories drawn for every returned sample, of which one is kept with probability
                proportional to its importance weight p(tau) r(x, y) / q(tau) (sampling-importance-resampling with
                this posterior as the proposal). K = 1 gives the posterior's own samples; as K grows the samples
                approach the exact posterior. Each proposal costs a trajectory plus its weight: the reward and the
                prior's density along the path (for a diffusion posterior one more denoiser call per step, so about
                2K times the cost of a plain sample). Every returned sample has its own K proposals,
                so none is a copy of another. A proposal with reward -inf is never kept; a sample whose K proposals
                all have reward -inf raises.

        Returns:
            (len(y), num_samples, *event_shape), or (num_samples, *event_shape) without y.
        """
        _check_count(num_samples)
        _check_integer("steps", steps)
        _check_integer("proposals", proposals)
        if self.kind == "diffusion":
            y = self._check_y(y)
            if proposals == 1:
                return self._sample_diffusion(y, num_samples, generator)
            return self._resampled(y, num_samples, proposals, steps, generator, MAX_TRAJECTORIES)
        z = self.sample_latent(y, num_samples, steps=steps, proposals=proposals, generator=generator)
        decoder = self._decoder[0]
        if decoder is None:
            return z
        x = decoder.decode(rearrange(z, "... d -> (...) d"))  # (rows, *event_shape)
        return x.reshape(z.shape[:-1] + x.shape[1:])

    @torch.no_grad()
    def log_z(self, y: Tensor | None = None, num_samples: int = 2000, *, steps: int = 100,
              generator: torch.Generator | None = None, max_trajectories: int = MAX_TRAJECTORIES) -> dict[str, Tensor]:
        """Per-condition estimates of log Z(y) = log ∫ p(x) r(x, y) dx from ``num_samples`` trajectories each.

        Returns:
            dict of (len(y),) tensors (scalars without y): ``elbo`` (log Ẑ), ``rw`` (importance-weighted
            log Ẑ_RW), ``rw_stderr`` (its delta-method standard error) and ``ess`` (normalized ESS).
            ``max_trajectories`` bounds how many are simulated at once.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(f"num_samples must be an integer >= 2 (a spread of weights needs two), got {num_samples!r}")
        _check_integer("steps", steps)
        _check_integer("max_trajectories", max_trajectories)
        y = self._check_y(y)
        groups = [None] if y is None else torch.split(y, max(1, max_trajectories // num_samples))
        log_w = torch.cat([self._trajectories(rows, num_samples, steps, generator).log_weight.reshape(-1, num_samples)
                           for rows in groups])  # (len(y) or 1, num_samples)
        result = {"elbo": metrics.log_z_elbo(log_w), "rw": metrics.log_z_importance(log_w),
                  "rw_stderr": metrics.log_z_importance_stderr(log_w), "ess": metrics.effective_sample_size(log_w)}
        return {k: v[0] for k, v in result.items()} if y is None else result

    def _trajectories(self, y: Tensor | None, per_condition: int, steps: int,
                      generator: torch.Generator | None) -> Any:
        """``per_condition`` trajectories for each row of checked conditions y (condition-major), or
        ``per_condition`` unconditional ones, scored against the target; no gradients. A sampler's run on a
        uniform grid of ``steps``, a diffusion posterior's on its prior's schedule."""
        if self.kind == "sampler":
            from posterior.core.grids import uniform_grid

            return self.network.trajectories(y, per_condition, uniform_grid(steps), generator=generator,
                                             track_gradients=False)
        path = self._user[2]
        if y is None:
            return self.network.trajectories(per_condition, path, generator=generator, track_gradients=False)
        bound = path.bind(y.to(self._device()).repeat_interleave(per_condition, 0))
        return self.network.trajectories(bound.conditions.shape[0], bound, generator=generator, track_gradients=False)

    def _resampled(self, y: Tensor | None, num_samples: int, proposals: int, steps: int,
                   generator: torch.Generator | None, max_trajectories: int) -> Tensor:
        """Terminal states of the network (z for a sampler, x for a diffusion posterior), one kept of ``proposals``
        per returned sample by its importance weight: (len(y), num_samples, *state) or (num_samples, *state)."""
        from posterior.core.resampling import pick_by_weight

        def kept(rows: Tensor | None, count: int) -> Tensor:  # (R, count, *state), R = len(rows) or 1
            traj = self._trajectories(rows, count * proposals, steps, generator)
            x = traj.samples.reshape((-1, count, proposals) + traj.samples.shape[1:])
            index = pick_by_weight(traj.log_weight.reshape(x.shape[:3]), generator)
            return x[torch.arange(x.shape[0], device=x.device)[:, None], torch.arange(count, device=x.device), index]

        per_chunk = max(1, max_trajectories // proposals)  # returned samples per simulation, over all its rows
        groups = [None] if y is None else torch.split(y, max(1, per_chunk // num_samples))
        x = torch.cat([torch.cat([kept(rows, min(per_chunk, num_samples - start))
                                  for start in range(0, num_samples, per_chunk)], 1) for rows in groups])
        return x[0] if y is None else x

    def _sample_diffusion(self, y: Tensor | None, num_samples: int, generator: torch.Generator | None) -> Tensor:
        """(num_samples, *event_shape), or (len(y), num_samples, *event_shape) from one batch of all of them."""
        network, path = self.network, self._user[2]
        rows = None if y is None else y.to(self._device()).repeat_interleave(num_samples, 0)
        count = num_samples if rows is None else rows.shape[0]
        states = network.prior.sample(count, generator=generator,
                                      model=network.model_for(path if rows is None else path.bind(rows)),
                                      model_steps=network.trained_steps, device=self._device())
        x = states[-1]
        return x if y is None else x.reshape((len(y), num_samples) + x.shape[1:])

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``folder``; a diffusion posterior whose
        denoiser is a ``diffusers`` model also writes it to ``folder/denoiser`` (``UNet2DModel.from_pretrained``
        loads it; amortized over class labels it is a class-conditional UNet, ``num_class_embeds``; over float
        measurements it takes the encoded measurement, ``class_embed_type="identity"``, and the encoder's weights
        are the ``encoder.*`` tensors of ``model.safetensors``; with ``SamplerConfig.class_norms`` or
        ``class_rank`` there is no diffusers equivalent and only ``model.safetensors`` holds it). With LoRA
        (``SamplerConfig.lora_rank``) it writes ``adapter.safetensors`` instead: the trained adapters (and
        condition table / encoder) alone. A guided
        posterior (``SamplerConfig.guidance``) is that denoiser plus its per-step guidance scales (the ``scale``
        tensor) and the reward's gradient: it samples through :meth:`sample`, not through diffusers alone."""
        from posterior import __version__

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = self.network.model if self.kind == "diffusion" else self.network
        state = {k: v.detach().contiguous().cpu() for k, v in weights.state_dict().items()}
        tmp = folder / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp))
        tmp.replace(folder / WEIGHTS_NAME)
        config = {"class": "Posterior", "library": "posterior", "version": __version__, **self.spec,
                  "prior": describe(self.prior), "reward": describe(self.reward), "proposal": describe(self._user[3])}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        from posterior.diffusion.conditional_denoiser import conditional_of, find_unet

        unet = find_unet(self.network.model) if self.kind == "diffusion" else None
        if unet is not None and self.spec["network"].get("lora_rank"):  # the adapters (and a class table) alone
            trained = {k: v for k, v in state.items()
                       if "lora_" in k or "class_embedding" in k or ".class_" in k
                       or k.startswith(("encoder.", "model.encoder.")) or k == "scale"}
            save_file(trained, str(folder / "adapter.safetensors"))
        elif unet is not None and not getattr(conditional_of(self.network.model), "class_layers", None):
            unet.save_pretrained(str(folder / "denoiser"))

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, prior: Any = None, reward: Any = None, proposal: Any = None,
                        device: torch.device | str = "cpu") -> "Posterior":
        """Rebuild a posterior saved with :meth:`save_pretrained`, given the prior and reward that went to
        `fit` (the same classes and sizes as recorded in its config; anything else is refused)."""
        folder = Path(folder)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} not found: folder must be written by Posterior.save_pretrained")
        try:
            config = json.loads((folder / CONFIG_NAME).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{folder / CONFIG_NAME} is not valid JSON: {error}") from None
        if not isinstance(config, dict) or config.get("class") != "Posterior" or config.get("kind") not in KINDS:
            raise ValueError(f"{folder / CONFIG_NAME} was not written by Posterior.save_pretrained "
                             f"(class {config.get('class') if isinstance(config, dict) else None!r})")
        if not isinstance(config.get("network"), dict):
            raise ValueError(f"{folder / CONFIG_NAME} has no 'network' settings (got {config.get('network')!r}): "
                             "folder must be written by Posterior.save_pretrained")
        for role, given in (("prior", prior), ("reward", reward), ("proposal", proposal)):
            saved = config.get(role)
            if saved != describe(given):
                what = "None" if saved is None else f"a {saved['class']} ({', '.join(f'{k}={v}' for k, v in saved.items() if k != 'class') or 'as in fit'})"
                raise ValueError(f"{folder} was trained with {role}={what}; got {role}={describe(given)}: pass the "
                                 f"same {role} that went to fit")
        spec = {k: v for k, v in config.items() if k not in ("class", "library", "version", "prior", "reward", "proposal")}
        state = load_file(str(folder / WEIGHTS_NAME))
        if spec["kind"] == "sampler":
            from posterior.samplers.conditional_sampler import build_conditional_sampler

            target = sampler_target(prior, reward, spec.get("latent_dim"))
            if proposal is not None:
                from posterior.proposals import WhitenedTarget
                target = WhitenedTarget(target, proposal)
            network = build_conditional_sampler(reward=target, **spec["network"])
            network.load_state_dict(state)
            return cls(network, prior=prior, reward=reward, spec=spec, proposal=proposal).to(device)
        from posterior.diffusion.build import diffusion_posterior

        network, path = diffusion_posterior(prior, reward, spec["network"])
        network.model.load_state_dict(state)
        return cls(network, prior=prior, reward=reward, spec=spec, path=path)


def _check_count(num_samples: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")


def _check_integer(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _shape(shape) -> str:
    return ", ".join(str(s) for s in shape)
