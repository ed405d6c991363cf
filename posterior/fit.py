"""`posterior.fit`: train an amortized sampler of p(x | y) ∝ p(x) r(x, y) in one call."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from posterior.core.checks import check_no_nan, check_shape
from posterior.model import Posterior
from posterior.objectives import TrajectoryBalance, VarGrad
from posterior.objectives.base import Objective
from posterior.objectives.factory import OBJECTIVES, make_objective
from posterior.objectives.log_partition import ConditionalLogZ
from posterior.paths.path_target import BoltzmannPath
from posterior.samplers.condition_encoders import auto_encoder_kind
from posterior.samplers.conditional_sampler import ConditionalSampler, build_conditional_sampler
from posterior.samplers.config import DATA_SPACE_SETTINGS, SamplerConfig
from posterior.proposals import WhitenedTarget
from posterior.targets import describe, sampler_target
from posterior.training.config import TrainConfig
from posterior.training.engine import Trainer
from posterior.training.replay import ReplayConfig
from posterior.training.seeding import seeded_initialization

SPACES = ("noise", "data")
DATA_OBJECTIVES = ("rtb", "vargrad", "pis")
# what `fit` trains with when no config is given
NOISE_DEFAULTS = TrainConfig(iterations=5000, batch_size=32, samples_per_condition=10)
DATA_DEFAULTS = TrainConfig(iterations=5000, batch_size=32)
DATA_CONDITIONAL_DEFAULTS = TrainConfig(iterations=5000, batch_size=8, samples_per_condition=4)


def fit(prior: Any = None, reward: Any = None, conditions: Tensor | np.ndarray | None = None, *,
        objective: str = "vargrad", space: str = "noise", config: TrainConfig | None = None,
        sampler: SamplerConfig | None = None, replay: ReplayConfig | None = None, proposal: Any = None,
        latent_dim: int | None = None,
        device: torch.device | str | None = None, checkpoint_dir: str | Path | None = None, resume: bool = False,
        progress: bool = True, process_index: int = 0,
        gradient_sync: Callable[[list[nn.Parameter]], None] | None = None,
        log: Callable[[dict[str, float], int], None] | None = None, log_every: int = 50) -> Posterior:
    """Train an amortized sampler of p(x | y) ∝ p(x) r(x, y) for every condition y.

    Args:
        prior: a :class:`posterior.priors.VAEDecoderPrior`, a decoder / generator ``nn.Module`` z -> x (then
            pass ``latent_dim``), a :class:`posterior.priors.DiffusionPrior`, or None (then ``reward`` is the
            full log-density: ``dim`` and ``log_reward(x[, y])``, e.g. a Boltzmann target).
        reward: the likelihood r: ``log_likelihood(x, y) -> (B,)`` or a callable (x, y) -> (B,); without
            conditions ``log_likelihood(x)``. A log-likelihood of -inf is a legal zero; NaN raises.
        conditions: (N, *cond_shape) training conditions (a tensor or NumPy array; other float dtypes are
            cast to float32), integer class labels (N,) (the reward gets them as integers), or None for one
            unconditional target.
        objective: noise space: "vargrad" (default), "tb" (conditional TB with a learned log Z(y)),
            "subtb", "fl-subtb", "pis". Data space: "rtb" (relative TB), "vargrad", "pis" (the pathwise KL).
        space: "noise": the sampler runs in the prior's latent / noise space with target N(z; 0, I) r(f(z), y)
            (f: the decoder, or a diffusion prior's deterministic DDIM solve). "data": fine-tune a diffusion
            prior's own denoiser into the posterior; with conditions one denoiser for every y (labels through a
            class embedding, float measurements through an encoder, both added at zero so that the untrained
            posterior is the prior; RTB learns log Z(y), VarGrad groups the trajectories of each y;
            :mod:`posterior.diffusion.conditional_denoiser`).
        config: the training settings (:class:`TrainConfig`); default :data:`NOISE_DEFAULTS` (5000 iterations,
            32 conditions of 10 trajectories), :data:`DATA_DEFAULTS` (5000 iterations of 32 trajectories) or, in
            data space with conditions, :data:`DATA_CONDITIONAL_DEFAULTS` (8 conditions of 4 trajectories).
        sampler: the sampler's architecture (:class:`SamplerConfig`); in data space only ``learn_variance``
            (unconditional), ``encoder`` (of float conditions), ``lora_rank``, ``guidance`` (start from the
            reward-guided sampler; for amortized posteriors the strongest start, see :class:`SamplerConfig`) and
            ``class_norms`` / ``class_rank`` (per-class GroupNorm offsets / adapters for a posterior amortized over
            labels) and ``freeze_denoiser`` (train only what reads y and the guidance scales).
        replay: a replay buffer (and local search) for backward updates on odd iterations (noise space).
        proposal: an amortized Gaussian the user already has, y -> (mean, log_std) of q(z | y) (e.g.
            ``vae.proposal()``, the VAE's encoder; :class:`posterior.proposals.FixedGaussian` without
            conditions). The sampler then runs in its whitened coordinates with the VP reference, so that the
            untrained sampler is the proposal (its ELBO and IWAE) and training learns the correction
            (:mod:`posterior.proposals`). Samples and estimates stay in the user's space.
        latent_dim: the size of z for a plain decoder prior.
        device: where to train (default CPU; in data space the prior's device).
        checkpoint_dir: folder for ``checkpoint.pt`` (every ``config.checkpoint_every`` iterations and at the
            end); ``resume=True`` continues the same run from it (and warns when there is none yet).
        progress: show a progress bar.
        process_index, gradient_sync: data-parallel training (one call per process, either space): every
            process builds the same initial networks, draws its own conditions and noise (seed and
            ``process_index``), and ``gradient_sync`` averages gradients so that all take the same steps.
            Process k > 0 writes ``checkpoint-k.pt`` and shows no progress bar.
        log: called every ``log_every`` iterations with ({"loss", "log_z_batch", "seconds_per_iter"}, iteration),
            e.g. ``accelerator.log``.

    Returns:
        the trained :class:`Posterior` (``sample``, ``sample_latent``, ``log_z``, ``save_pretrained``), with the
        weight average in place of the last weights when ``config.ema_decay`` > 0, and ``training_history``.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if sampler is not None and not isinstance(sampler, SamplerConfig):
        raise TypeError(f"sampler must be a SamplerConfig, got {type(sampler).__name__}")
    if replay is not None and not isinstance(replay, ReplayConfig):
        raise TypeError(f"replay must be a ReplayConfig, got {type(replay).__name__}")
    for name, value in (("resume", resume), ("progress", progress)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if isinstance(process_index, bool) or not isinstance(process_index, int) or process_index < 0:
        raise ValueError(f"process_index must be an integer >= 0, got {process_index!r}")
    for name, fn in (("gradient_sync", gradient_sync), ("log", log)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be a callable or None, got {type(fn).__name__}")
    if device is not None and not isinstance(device, torch.device):
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device must be a torch.device or a device string such as 'cpu' or 'cuda:0', "
                             f"got {device!r}") from None
    sampler = sampler if sampler is not None else SamplerConfig()
    conditions = _conditions(conditions)
    if space == "data":
        if proposal is not None:
            raise ValueError("proposal is for space='noise' (a Gaussian over the prior's latent / noise space)")
        default = DATA_DEFAULTS if conditions is None else DATA_CONDITIONAL_DEFAULTS
        return _fit_data_space(prior, reward, conditions, objective, config or default, sampler, replay,
                               latent_dim, device, checkpoint_dir, resume, progress, process_index, gradient_sync, log,
                               log_every)
    config = config or NOISE_DEFAULTS
    device = torch.device(device) if device is not None else torch.device("cpu")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES} in noise space, got {objective!r}")
    if sampler.lora_rank:
        raise ValueError(f"SamplerConfig.lora_rank={sampler.lora_rank} adapts a diffusion prior's denoiser: it is for "
                         "space='data'")
    if sampler.guidance:
        raise ValueError(f"SamplerConfig.guidance={sampler.guidance} guides a diffusion prior's posterior denoiser: it "
                         "is for space='data' (in noise space use SamplerConfig.langevin)")
    if sampler.freeze_denoiser:
        raise ValueError("SamplerConfig.freeze_denoiser keeps a diffusion prior's denoiser frozen: it is for "
                         "space='data'")
    if sampler.class_norms or sampler.class_rank:
        raise ValueError("SamplerConfig.class_norms / class_rank condition a diffusion prior's UNet on class labels: "
                         "they are for space='data' (in noise space labels go through "
                         "SamplerConfig.encoder='embedding')")
    if objective == "pis" and config.explore:
        raise ValueError(f"TrainConfig.explore={config.explore}: objective 'pis' trains on the sampler's own "
                         "reparameterized paths and takes no exploration noise")
    if objective == "vargrad" and config.samples_per_condition < 2 and conditions is not None:
        raise ValueError(f"TrainConfig.samples_per_condition={config.samples_per_condition}: VarGrad compares the "
                         "trajectories of each condition, so it needs samples_per_condition >= 2")
    if conditions is not None:
        conditions = conditions.to(device)
    target = sampler_target(prior, reward, latent_dim)
    noising = sampler.noising if sampler.noising != "auto" else ("vp" if proposal is not None else "brownian")
    if proposal is not None:
        if noising != "vp" or sampler.sigma2 != 1.0:
            raise ValueError(f"a proposal needs the VP reference with sigma2 = 1 (SamplerConfig(noising='vp' or 'auto', "
                             f"sigma2=1.0)): its stationary law N(0, I) makes the untrained sampler the proposal; got "
                             f"noising={sampler.noising!r}, sigma2={sampler.sigma2}")
        target = WhitenedTarget(target, proposal)
    _validate(target, conditions, device)
    cond_shape = None if conditions is None else tuple(conditions.shape[1:])
    encoder, num_classes = sampler.encoder, None
    if conditions is not None and not conditions.is_floating_point():  # class labels: a learned table
        if encoder not in ("auto", "embedding"):
            raise ValueError(f"SamplerConfig.encoder={encoder!r}: integer class labels go through encoder 'embedding' "
                             "(or 'auto')")
        encoder, num_classes = "embedding", _num_classes(conditions, reward)
    if encoder == "auto":
        encoder = auto_encoder_kind(cond_shape) if cond_shape is not None else "mlp"
    elif encoder == "embedding" and num_classes is None:
        raise ValueError("SamplerConfig.encoder='embedding' is for integer class labels (N,) as conditions")
    architecture = dict(dim=int(target.dim), sigma2=sampler.sigma2, cond_shape=cond_shape, encoder=encoder,
                        langevin=sampler.langevin, langevin_scale=sampler.langevin_scale,
                        learn_variance=sampler.learn_variance, hidden=sampler.hidden, noising=noising,
                        num_classes=num_classes)
    with seeded_initialization(config.seed):  # network initialization; the user's global RNG is left as it was
        model = build_conditional_sampler(reward=target, **architecture).to(device)
        obj = _make_objective(objective, model, target, conditional=conditions is not None,
                              samples_per_condition=config.samples_per_condition, hidden=sampler.hidden).to(device)
    run_config = replace(config, seed=config.seed + 1_000_003 * process_index)
    name = "checkpoint.pt" if process_index == 0 else f"checkpoint-{process_index}.pt"
    ckpt = Path(checkpoint_dir) / name if checkpoint_dir is not None else None
    problem = {"prior": describe(prior), "reward": describe(reward), "proposal": describe(proposal),
               "conditions": fingerprint(conditions), "architecture": {**architecture, "cond_shape": _list(cond_shape)}}
    trainer = Trainer(model, obj, run_config, conditions=conditions, replay=replay, checkpoint_path=ckpt,
                      gradient_sync=gradient_sync, log=log, log_every=log_every, problem=problem)
    _maybe_resume(trainer, ckpt, resume)
    trainer.run(progress=progress and process_index == 0)
    if trainer.ema is not None:
        trainer.ema.copy_to_parameters()
    spec = {"kind": "sampler", "objective": objective, "latent_dim": latent_dim, "cond_shape": _list(cond_shape),
            "num_classes": num_classes,
            "network": {**architecture, "cond_shape": _list(cond_shape)}, "proposal": describe(proposal)}
    result = Posterior(model, prior=prior, reward=reward, spec=spec, proposal=proposal).to(device)
    result.training_history = trainer.history
    result.replay = trainer.replay
    return result


def _fit_data_space(prior: Any, reward: Any, conditions: Tensor | None, objective: str, config: TrainConfig,
                    sampler: SamplerConfig, replay: ReplayConfig | None, latent_dim: int | None, device: Any,
                    checkpoint_dir: Any, resume: bool, progress: bool, process_index: int,
                    gradient_sync: Any, log: Any, log_every: int) -> Posterior:
    """space="data": RTB (or VarGrad, or the pathwise KL) fine-tuning of a diffusion prior toward prior x reward,
    one posterior for every condition when ``conditions`` are given."""
    from posterior.diffusion.build import diffusion_posterior
    from posterior.priors.diffusion import DiffusionPrior

    if not isinstance(prior, DiffusionPrior):
        raise ValueError(f"space='data' needs a posterior.priors.DiffusionPrior, got {type(prior).__name__}; "
                         "use space='noise' for decoders and generators")
    refused = {"replay": replay is not None, "latent_dim": latent_dim is not None}
    changed = {f"sampler.{k}" for k, v in vars(sampler).items()
               if k not in DATA_SPACE_SETTINGS and v != getattr(SamplerConfig(), k)}
    refused_names = sorted([k for k, v in refused.items() if v] + list(changed))
    if refused_names:
        raise ValueError(f"space='data' fine-tunes the diffusion prior's own denoiser and does not take "
                         f"{', '.join(refused_names)}: leave them unset or use space='noise'")
    if objective not in DATA_OBJECTIVES:
        hint = " ('rtb' is trajectory balance against the prior's own path measure)" if objective == "tb" else ""
        raise ValueError(f"objective for space='data' must be one of {DATA_OBJECTIVES}, got {objective!r}{hint}")
    if sampler.guidance and objective == "pis":
        raise ValueError(f"SamplerConfig.guidance={sampler.guidance} does not combine with objective 'pis' (the pathwise "
                         "KL differentiates through every step's mean, and the guidance term is computed without a "
                         "graph): use 'rtb' or 'vargrad'")
    if conditions is not None and objective == "vargrad" and config.samples_per_condition < 2:
        raise ValueError(f"TrainConfig.samples_per_condition={config.samples_per_condition}: VarGrad compares the "
                         "trajectories of each condition, so it needs samples_per_condition >= 2")
    prior_device = getattr(getattr(prior, "alpha_t", None), "device", None)
    if device is not None and prior_device is not None:
        device = torch.device(device)
        if device.type != prior_device.type or (device.index is not None and device.index != prior_device.index):
            raise ValueError(f"device {device} differs from the diffusion prior's device {prior_device}: space='data' "
                             f"fine-tunes a copy of the prior where it is; move the prior (prior.to(device)) first")
    condition = None
    if conditions is not None:
        from posterior.diffusion.conditional_denoiser import condition_spec

        conditions = conditions.to(prior_device)
        condition = {**condition_spec(conditions), "encoder": sampler.encoder}
        if condition["num_classes"] is not None:
            condition["num_classes"] = _num_classes(conditions, reward)
        if sampler.class_norms:  # recorded only when on (runs from before the settings still resume)
            condition["class_norms"] = True
        if sampler.class_rank:
            condition["class_rank"] = sampler.class_rank
    if (sampler.class_norms or sampler.class_rank) and (conditions is None or condition["num_classes"] is None):
        raise ValueError("SamplerConfig.class_norms / class_rank are for a data-space posterior amortized over "
                         "integer class labels (conditions (N,) integers)")
    spec_network = {"learn_variance": sampler.learn_variance, "beta": 1.0, "frozen_final_steps": None,
                    "condition": condition, "lora_rank": sampler.lora_rank}
    if sampler.guidance:  # recorded only when on, so that runs from before the setting existed still resume
        spec_network["guidance"] = float(sampler.guidance)
    if sampler.freeze_denoiser:
        spec_network["freeze_denoiser"] = True
    with seeded_initialization(config.seed):  # the user's global RNG is left as it was
        network, path = diffusion_posterior(prior, reward, spec_network)
        if condition is not None:
            _validate_data_reward(prior, path, conditions)
        obj = _data_objective(objective, condition, config.samples_per_condition)
    spec_network["frozen_final_steps"] = network.frozen_final_steps
    run_config = replace(config, seed=config.seed + 1_000_003 * process_index)
    name = "checkpoint.pt" if process_index == 0 else f"checkpoint-{process_index}.pt"
    ckpt = Path(checkpoint_dir) / name if checkpoint_dir is not None else None
    problem = {"prior": describe(prior), "reward": describe(reward), "network": spec_network,
               "conditions": fingerprint(conditions)}
    trainer = Trainer(network, obj, run_config, path=path, conditions=conditions, checkpoint_path=ckpt,
                      gradient_sync=gradient_sync, log=log, log_every=log_every, problem=problem)
    _maybe_resume(trainer, ckpt, resume)
    trainer.run(progress=progress and process_index == 0)
    if trainer.ema is not None:
        trainer.ema.copy_to_parameters()
    cond_shape = None if condition is None else ([] if condition["num_classes"] is not None else condition["cond_shape"])
    # (integer labels: cond_shape [] and the number of classes in network.condition)
    result = Posterior(network, prior=prior, reward=reward, path=path,
                       spec={"kind": "diffusion", "objective": objective, "cond_shape": cond_shape,
                             "network": spec_network})
    result.training_history = trainer.history
    return result


def _data_objective(name: str, condition: dict | None, samples_per_condition: int) -> Objective:
    """RTB (a learned log Z(y) per condition when amortized), VarGrad (grouped per condition), the pathwise KL."""
    from posterior.objectives import PathIntegral, RelativeTrajectoryBalance

    if name == "pis":
        return PathIntegral()
    if name == "vargrad":
        return VarGrad(group_size=samples_per_condition if condition is not None else None)
    if condition is None:
        return RelativeTrajectoryBalance()
    features = condition["num_classes"] if condition["num_classes"] is not None else int(np.prod(condition["cond_shape"]))
    return RelativeTrajectoryBalance(conditional_log_z=ConditionalLogZ(min(features, 256), in_features=features))


def _validate_data_reward(prior: Any, path: Any, conditions: Tensor) -> None:
    """Evaluate the conditional reward once on two prior samples with conditions[:1], so that shape and NaN
    problems surface before training, naming the conditions."""
    x = prior.sample(2, generator=torch.Generator(device=prior.alpha_t.device).manual_seed(0))[-1]
    y = conditions[:1].expand(2, *conditions.shape[1:])
    try:
        path.bind(y).log_reward(x)
    except (ValueError, TypeError, RuntimeError, IndexError) as error:
        raise type(error)(f"{error} (while checking the reward log r(x, y) on two prior samples x of shape "
                          f"{tuple(x.shape)} and conditions[:1] of shape {tuple(conditions[:1].shape)}, "
                          f"dtype {conditions.dtype})") from error


def fingerprint(conditions: Tensor | None) -> str | None:
    """SHA-256 of the conditions' shape and values (None without conditions): a resumed run must train on the
    same ones."""
    if conditions is None:
        return None
    import hashlib

    flat = conditions.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(flat.shape)}{flat.dtype}".encode())
    digest.update(flat.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _maybe_resume(trainer: Trainer, ckpt: Path | None, resume: bool) -> None:
    if not resume:
        return
    if ckpt is None:
        raise ValueError("resume=True needs checkpoint_dir (the folder of the run to continue)")
    if ckpt.exists():
        trainer.load(ckpt)
    else:
        warnings.warn(f"resume=True but {ckpt} does not exist yet: starting a new run", stacklevel=3)


def _conditions(conditions: Any) -> Tensor | None:
    """Conditions as a float tensor (N, *cond_shape), validated: NumPy arrays and other float dtypes are
    converted; integers, NaN and infinities are refused naming the argument."""
    if conditions is None:
        return None
    if isinstance(conditions, np.ndarray):
        conditions = torch.from_numpy(conditions)
    if isinstance(conditions, Tensor) and conditions.ndim == 1 and conditions.shape[0] >= 1 and (
            not conditions.is_floating_point() and not conditions.is_complex() and conditions.dtype != torch.bool):
        if bool((conditions < 0).any()):
            raise ValueError(f"conditions: integer class labels must be >= 0, got {int(conditions.min())}")
        return conditions.long()  # class labels (N,): an embedding, and the reward gets them as integers
    if not isinstance(conditions, Tensor) or conditions.ndim < 2 or conditions.shape[0] < 1:
        raise ValueError(f"conditions must be a tensor or array of shape (N, *cond_shape) or integer class labels "
                         f"(N,), with N >= 1, got "
                         f"{tuple(conditions.shape) if hasattr(conditions, 'shape') else type(conditions).__name__}")
    if not conditions.is_floating_point():
        raise ValueError(f"conditions must be floating point (observations or features) of shape (N, *cond_shape), "
                         f"or integer class labels of shape (N,); got {conditions.dtype} of shape "
                         f"{tuple(conditions.shape)}")
    conditions = conditions.float() if conditions.dtype != torch.float32 else conditions
    nan_rows = torch.isnan(conditions).reshape(conditions.shape[0], -1).any(-1)
    if bool(nan_rows.any()):
        raise ValueError(f"conditions contain NaN in {int(nan_rows.sum())} of {conditions.shape[0]} rows (first at row "
                         f"{int(nan_rows.nonzero()[0, 0])}): every condition must be finite")
    if not bool(torch.isfinite(conditions).all()):
        raise ValueError("conditions contain +inf or -inf: every condition must be finite")
    return conditions


def _validate(target: Any, conditions: Tensor | None, device: torch.device) -> None:
    """Evaluate the target (and a proposal) once on two points so that shape and NaN problems surface before
    training."""
    dim = int(target.dim)
    x = torch.zeros(2, dim, device=device)
    decoder = getattr(getattr(target, "target", target), "prior", None)  # (a proposal wraps the target)
    if hasattr(decoder, "decode") and hasattr(decoder, "latent_dim"):
        try:
            decoder.decode(x)
        except (RuntimeError, ValueError) as error:  # e.g. 'mat1 and mat2 shapes cannot be multiplied'
            raise ValueError(f"latent_dim={dim} does not fit the decoder ({getattr(decoder, '_name', 'decoder')}): "
                             f"decoding z of shape (2, {dim}) failed: {error}; pass the size of the decoder's "
                             "input z as latent_dim") from error
    try:
        value = target.log_reward(x) if conditions is None else target.log_reward(
            x, conditions[:1].expand(2, *conditions.shape[1:]))
    except (ValueError, TypeError, RuntimeError) as error:
        if conditions is None or type(error) not in (ValueError, TypeError, RuntimeError):
            raise
        raise type(error)(f"{error} (while checking the reward on conditions[:1] of shape "
                          f"{tuple(conditions[:1].shape)}, conditions of shape {tuple(conditions.shape)})") from error
    check_shape(value, (2,), "reward log-density (log_reward(x, y))")
    check_no_nan(value, "reward")


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


def _num_classes(labels: Tensor, reward: Any) -> int:
    """K for integer class labels: the reward's ``num_classes`` when it says (a classifier's), else max + 1."""
    seen = int(labels.max()) + 1
    declared = getattr(reward, "num_classes", None)
    if isinstance(declared, int) and not isinstance(declared, bool):
        if seen > declared:
            raise ValueError(f"conditions: class label {seen - 1} is out of range for the reward's {declared} classes")
        return declared
    return seen


def _list(shape: tuple[int, ...] | None) -> list[int] | None:
    return None if shape is None else [int(s) for s in shape]
