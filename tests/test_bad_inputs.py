"""The bad-input suite: every bad input through the public API (or a recipe flag) fails at once with an error of
the right type whose message names the argument as the user wrote it and says what was expected.

One table, ``CASES``: (id, callable, exception type, regex searched in the message). Recipe flags run as
subprocesses in ``RECIPE_CASES`` (a usage error before any training: no checkpoint written)."""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import posterior
from posterior import Posterior, ReplayConfig, SamplerConfig, TrainConfig
from posterior.constraints import (BernoulliImageLikelihood, ClassifierLikelihood, Downsample, Funnel,
                                   GaussianObservation, GaussianTarget, Identity, LogGaussianCoxProcess, Manywell,
                                   Mask, make_target)
from posterior.priors import MLPVAE, VAEDecoderPrior

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------------------------------------- problems
def _decoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(2, 3).requires_grad_(False)


def _y(rows: int = 4) -> torch.Tensor:
    return torch.randn(rows, 3, generator=torch.Generator().manual_seed(1))


def _prior() -> VAEDecoderPrior:
    return VAEDecoderPrior(_decoder(), 2)


def _reward() -> GaussianObservation:
    return GaussianObservation(Identity(), 0.5)


def _target() -> GaussianTarget:
    return GaussianTarget(torch.zeros(2), std=torch.ones(2))


CHEAP = TrainConfig(iterations=1, batch_size=2, samples_per_condition=2, steps=2)
SMALL = SamplerConfig(hidden=8, encoder="mlp")


def _fit(**kwargs):
    """fit on the linear decoder problem with cheap settings (override any argument)."""
    args = dict(prior=_prior(), reward=_reward(), conditions=_y(), config=CHEAP, sampler=SMALL, progress=False)
    args.update(kwargs)
    return posterior.fit(**args)


def _fit_target(**kwargs):
    """fit of a Boltzmann target (no prior, no conditions) with cheap settings."""
    args = dict(reward=_target(), objective="tb", config=CHEAP, sampler=SamplerConfig(hidden=8), progress=False)
    args.update(kwargs)
    return posterior.fit(**args)


@functools.cache
def _conditional() -> Posterior:
    return _fit()


@functools.cache
def _unconditional() -> Posterior:
    return _fit_target()


@functools.cache
def _saved() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="posterior-bad-inputs-")) / "saved"
    _conditional().save_pretrained(folder)
    return folder


def _broken_folder(config_text: str | None, weights: bool = True) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="posterior-bad-inputs-"))
    if config_text is not None:
        (folder / "config.json").write_text(config_text)
    if weights:
        (folder / "model.safetensors").write_bytes((_saved() / "model.safetensors").read_bytes())
    return folder


def _load(folder: Path, **kwargs):
    args = dict(prior=_prior(), reward=_reward())
    args.update(kwargs)
    return Posterior.from_pretrained(folder, **args)


def _edited_config(**changes) -> str:
    config = json.loads((_saved() / "config.json").read_text())
    config.update(changes)
    return json.dumps(config)


def _diffusion_prior():
    diffusers = pytest.importorskip("diffusers")
    from posterior.priors.diffusion import DiffusionPrior
    from posterior.priors.gaussian_mixture import MixtureDenoiser, ring_mixture

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    mixture = ring_mixture(4, radius=1.0, std=0.2)
    return DiffusionPrior(MixtureDenoiser(mixture, scheduler.alphas_cumprod).float(), scheduler, 5, (2,))


def _trainer(**kwargs):
    from posterior.objectives import TrajectoryBalance
    from posterior.paths.path_target import BoltzmannPath
    from posterior.samplers.factory import make_sampler

    sampler = make_sampler(2, 1.0, hidden=8)
    args = dict(path=BoltzmannPath(_target(), sampler.reference))
    config = kwargs.pop("config", CHEAP)
    objective = kwargs.pop("objective", TrajectoryBalance())
    args.update(kwargs)
    return posterior.Trainer(sampler, objective, config, **args)


def _classifier():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))


# ---------------------------------------------------------------------------------------------- the table
CASES = []


def case(id_, fn, exc, regex):
    CASES.append(pytest.param(fn, exc, regex, id=id_))


def train(**field):
    return lambda: TrainConfig(**field)


def sampler(**field):
    return lambda: SamplerConfig(**field)


def replay(**field):
    return lambda: ReplayConfig(**field)


# fit: conditions
case("fit-conditions-1d", lambda: _fit(conditions=torch.zeros(5)), ValueError, r"conditions must be .*\(N, \*cond_shape\)")
case("fit-conditions-0d", lambda: _fit(conditions=torch.tensor(1.0)), ValueError, r"conditions must be .*\(N, \*cond_shape\)")
case("fit-conditions-zero-rows", lambda: _fit(conditions=torch.zeros(0, 3)), ValueError, r"conditions .*N >= 1, got \(0, 3\)")
case("fit-conditions-nan", lambda: _fit(conditions=torch.tensor([[0.0, NAN, 1.0]] * 2)), ValueError, r"conditions contain NaN")
case("fit-conditions-posinf", lambda: _fit(conditions=torch.tensor([[0.0, INF, 1.0]] * 2)), ValueError, r"conditions contain \+inf or -inf")
case("fit-conditions-neginf", lambda: _fit(conditions=torch.tensor([[0.0, -INF, 1.0]] * 2)), ValueError, r"conditions contain \+inf or -inf")
case("fit-conditions-int", lambda: _fit(conditions=torch.ones(4, 3, dtype=torch.long)), ValueError, r"conditions must be floating point.*int64")
case("fit-conditions-numpy-int", lambda: _fit(conditions=np.ones((4, 3), dtype=np.int32)), ValueError, r"conditions must be floating point")
case("fit-conditions-bool", lambda: _fit(conditions=torch.ones(4, 3, dtype=torch.bool)), ValueError, r"conditions must be floating point")
case("fit-conditions-list", lambda: _fit(conditions=[[0.0, 1.0, 2.0]]), ValueError, r"conditions must be a tensor or array .*got list")
case("fit-conditions-str", lambda: _fit(conditions="images"), ValueError, r"conditions must be a tensor or array .*got str")
case("fit-conditions-wrong-width", lambda: _fit(conditions=torch.zeros(4, 5)), ValueError, r"conditions.*\(4, 5\)")
# fit: prior, reward, latent_dim
case("fit-prior-str", lambda: _fit(prior="vae"), TypeError, r"prior must be a VAEDecoderPrior.*got str")
case("fit-prior-int", lambda: _fit(prior=3), TypeError, r"prior must be .*got int")
case("fit-reward-none", lambda: _fit(reward=None), TypeError, r"reward must be a likelihood .*got NoneType")
case("fit-reward-int", lambda: _fit(reward=3), TypeError, r"reward must be a likelihood .*got int")
case("fit-reward-wrong-shape", lambda: _fit(reward=lambda x, y: -((x - y) ** 2).sum(-1, keepdim=True)), ValueError,
     r"log_likelihood must return shape \(B,\) = \(2,\), got \(2, 1\)")
case("fit-reward-scalar", lambda: _fit(reward=lambda x, y: -((x - y) ** 2).sum()), ValueError,
     r"log_likelihood must return shape \(B,\)")
case("fit-reward-float", lambda: _fit(reward=lambda x, y: 0.0), ValueError, r"log_likelihood must return shape \(B,\).*got float")
case("fit-reward-nan", lambda: _fit(reward=lambda x, y: torch.full(x.shape[:1], NAN)), ValueError,
     r"log_likelihood returned NaN for 2 of 2 inputs")
case("fit-no-prior-reward-lambda", lambda: _fit(prior=None, reward=lambda x: -(x ** 2).sum(-1), conditions=None),
     ValueError, r"without a prior, reward must have `dim` and `log_reward")
case("fit-no-prior-reward-none", lambda: _fit(prior=None, reward=None, conditions=None), ValueError,
     r"without a prior, reward must have")
case("fit-target-wrong-shape", lambda: _fit_target(reward=_BadTarget(keepdim=True)), ValueError,
     r"reward log-density .* must have shape \(2,\), got \(2, 1\)")
case("fit-target-nan", lambda: _fit_target(reward=_BadTarget(nan=True)), ValueError, r"reward returned NaN")
case("fit-latent-dim-missing", lambda: _fit(prior=_decoder()), ValueError, r"latent_dim is required")
case("fit-latent-dim-mismatch", lambda: _fit(prior=_decoder(), latent_dim=5), ValueError,
     r"latent_dim=5 does not fit the decoder")
case("fit-vae-prior-latent-dim-mismatch", lambda: _fit(prior=VAEDecoderPrior(_decoder(), 4)), ValueError,
     r"latent_dim=4 does not fit the decoder")
case("fit-latent-dim-zero", lambda: _fit(prior=_decoder(), latent_dim=0), ValueError, r"latent_dim must be a positive integer, got 0")
case("fit-latent-dim-float", lambda: _fit(prior=_decoder(), latent_dim=2.5), ValueError, r"latent_dim must be a positive integer, got 2.5")
case("fit-latent-dim-str", lambda: _fit(prior=_decoder(), latent_dim="2"), ValueError, r"latent_dim must be a positive integer, got '2'")
case("fit-latent-dim-disagrees-with-prior", lambda: _fit(latent_dim=3), ValueError,
     r"latent_dim=3 disagrees with the prior's latent_dim=2")
case("fit-latent-dim-without-prior", lambda: _fit_target(latent_dim=3), ValueError, r"latent_dim=3 .*without a prior")
case("fit-proposal-not-callable", lambda: _fit(proposal=3, sampler=SamplerConfig(hidden=8, encoder="mlp", noising="vp")),
     TypeError, r"proposal must be a callable")
case("fit-proposal-brownian", lambda: _fit(proposal=MLPVAE(3, 4, 2).proposal(),
                                           sampler=SamplerConfig(noising="brownian")), ValueError,
     r"a proposal needs the VP reference .*noising='brownian'")
# fit: objective, space, settings objects
case("fit-objective-unknown", lambda: _fit(objective="dpo"), ValueError, r"objective must be one of .*got 'dpo'")
case("fit-objective-none", lambda: _fit(objective=None), ValueError, r"objective must be one of .*got None")
case("fit-objective-case", lambda: _fit(objective="TB"), ValueError, r"objective must be one of .*got 'TB'")
case("fit-objective-rtb-in-noise-space", lambda: _fit(objective="rtb"), ValueError, r"objective must be one of .*got 'rtb'")
case("fit-space-unknown", lambda: _fit(space="latent"), ValueError, r"space must be one of \('noise', 'data'\), got 'latent'")
case("fit-space-none", lambda: _fit(space=None), ValueError, r"space must be one of .*got None")
case("fit-data-space-vae-prior", lambda: _fit(space="data", conditions=None), ValueError,
     r"space='data' needs a posterior.priors.DiffusionPrior, got VAEDecoderPrior")
case("fit-data-space-no-prior", lambda: _fit_target(space="data", objective="rtb"), ValueError,
     r"space='data' needs a posterior.priors.DiffusionPrior, got NoneType")
case("fit-data-space-proposal", lambda: _fit(space="data", proposal=MLPVAE(3, 4, 2).proposal()), ValueError,
     r"proposal is for space='noise'")
case("fit-data-space-conditions-reward-shape", lambda: _fit(prior=_diffusion_prior(), space="data", objective="rtb",
                                                            reward=lambda x, y: -(x ** 2), conditions=torch.zeros(2, 2),
                                                            sampler=None),
     ValueError, r"log_reward\(x, y\) must have shape \(2,\).*while checking the reward log r\(x, y\)")
case("fit-data-space-objective-tb", lambda: _fit(prior=_diffusion_prior(), space="data", objective="tb",
                                                 reward=lambda x: -(x ** 2).sum(-1), conditions=None, sampler=None),
     ValueError, r"objective for space='data' must be one of .*'rtb' is trajectory balance")
case("fit-data-space-guidance-pis", lambda: _fit(prior=_diffusion_prior(), space="data", objective="pis",
                                                 reward=lambda x: -(x ** 2).sum(-1), conditions=None,
                                                 sampler=SamplerConfig(guidance=1.0)),
     ValueError, r"SamplerConfig.guidance=1.0 does not combine with objective 'pis'")
case("fit-data-space-guidance-learn-variance", lambda: _fit(prior=_diffusion_prior(), space="data", objective="rtb",
                                                            reward=lambda x: -(x ** 2).sum(-1), conditions=None,
                                                            sampler=SamplerConfig(guidance=1.0, learn_variance=True)),
     ValueError, r"SamplerConfig.guidance does not combine with learn_variance")
case("fit-data-space-class-norms-unconditional", lambda: _fit(prior=_diffusion_prior(), space="data", objective="rtb",
                                                             reward=lambda x: -(x ** 2).sum(-1), conditions=None,
                                                             sampler=SamplerConfig(class_norms=True)),
     ValueError, r"SamplerConfig.class_norms / class_rank are for a data-space posterior amortized over integer class labels")
case("fit-data-space-class-norms-without-unet", lambda: _fit(prior=_diffusion_prior(), space="data", objective="rtb",
                                                            reward=lambda x, y: -(x ** 2).sum(-1),
                                                            conditions=torch.tensor([0, 1]),
                                                            sampler=SamplerConfig(class_norms=True)),
     ValueError, r"class_norms / class_rank need integer class labels \(num_classes\) and a diffusers UNet denoiser")
case("fit-data-space-freeze-nothing-to-train", lambda: _fit(prior=_diffusion_prior(), space="data", objective="rtb",
                                                           reward=lambda x: -(x ** 2).sum(-1), conditions=None,
                                                           sampler=SamplerConfig(freeze_denoiser=True)),
     ValueError, r"SamplerConfig.freeze_denoiser leaves nothing to train")
case("fit-noise-space-freeze-denoiser", lambda: _fit(sampler=SamplerConfig(hidden=8, freeze_denoiser=True)), ValueError,
     r"SamplerConfig.freeze_denoiser keeps a diffusion prior's denoiser frozen: it is for space='data'")
case("fit-noise-space-class-norms", lambda: _fit(sampler=SamplerConfig(hidden=8, class_norms=True)), ValueError,
     r"SamplerConfig.class_norms / class_rank condition a diffusion prior's UNet on class labels: they are for space='data'")
case("fit-noise-space-class-rank", lambda: _fit(sampler=SamplerConfig(hidden=8, class_rank=2)), ValueError,
     r"SamplerConfig.class_norms / class_rank condition a diffusion prior's UNet on class labels")
case("fit-config-dict", lambda: _fit(config={"iterations": 1}), TypeError, r"config must be a TrainConfig, got dict")
case("fit-config-sampler-config", lambda: _fit(config=SamplerConfig()), TypeError, r"config must be a TrainConfig, got SamplerConfig")
case("fit-sampler-train-config", lambda: _fit(sampler=TrainConfig()), TypeError, r"sampler must be a SamplerConfig, got TrainConfig")
case("fit-noise-space-guidance", lambda: _fit(sampler=SamplerConfig(hidden=8, guidance=1.0)), ValueError,
     r"SamplerConfig.guidance=1.0 guides a diffusion prior's posterior denoiser: it is for space='data'")
case("fit-sampler-dict", lambda: _fit(sampler={"hidden": 8}), TypeError, r"sampler must be a SamplerConfig, got dict")
case("fit-replay-dict", lambda: _fit(replay={"capacity": 10}), TypeError, r"replay must be a ReplayConfig, got dict")
case("fit-replay-true", lambda: _fit(replay=True), TypeError, r"replay must be a ReplayConfig, got bool")
case("fit-vargrad-one-sample", lambda: _fit(objective="vargrad", config=TrainConfig(iterations=1, samples_per_condition=1)),
     ValueError, r"TrainConfig.samples_per_condition=1: VarGrad .* needs samples_per_condition >= 2")
case("fit-pis-explore", lambda: _fit(objective="pis", config=TrainConfig(iterations=1, samples_per_condition=2, explore=0.1)),
     ValueError, r"TrainConfig.explore=0.1: objective 'pis' .* takes no exploration")
case("fit-process-index-negative", lambda: _fit(process_index=-1), ValueError, r"process_index must be an integer >= 0, got -1")
case("fit-process-index-bool", lambda: _fit(process_index=True), ValueError, r"process_index must be an integer >= 0, got True")
case("fit-process-index-float", lambda: _fit(process_index=1.0), ValueError, r"process_index must be an integer >= 0, got 1.0")
case("fit-resume-without-dir", lambda: _fit(resume=True), ValueError, r"resume=True needs checkpoint_dir")
case("fit-device-unknown", lambda: _fit(device="gpu9"), ValueError, r"device must be .*got 'gpu9'")
case("fit-log-every-zero", lambda: _fit(log_every=0), ValueError, r"log_every must be an integer >= 1, got 0")
case("fit-log-not-callable", lambda: _fit(log="wandb"), TypeError, r"log must be a callable .*got str")
case("fit-gradient-sync-not-callable", lambda: _fit(gradient_sync=1), TypeError, r"gradient_sync must be a callable .*got int")

# TrainConfig: every field
for field, value, regex in [
    ("iterations", 0, r"integer >= 1, got 0"), ("iterations", -5, r"integer >= 1, got -5"),
    ("iterations", 2.5, r"integer >= 1, got 2.5"), ("iterations", "100", r"integer >= 1, got '100'"),
    ("iterations", True, r"integer >= 1, got True"), ("iterations", None, r"integer >= 1, got None"),
    ("batch_size", 0, r"integer >= 1, got 0"), ("batch_size", 1.5, r"integer >= 1, got 1.5"),
    ("samples_per_condition", 0, r"integer >= 1, got 0"), ("steps", 0, r"integer >= 1, got 0"),
    ("steps", 2.5, r"integer >= 1, got 2.5"),
    ("lr", -1e-3, r"finite number > 0, got -0.001"), ("lr", 0.0, r"finite number > 0, got 0.0"),
    ("lr", NAN, r"finite number > 0, got nan"), ("lr", INF, r"finite number > 0, got inf"),
    ("lr", "1e-3", r"finite number > 0, got '1e-3'"), ("lr", None, r"finite number > 0, got None"),
    ("lr_flow", -0.1, r"finite number > 0, got -0.1"), ("lr_flow", 0, r"finite number > 0, got 0"),
    ("lr_guidance", -1.0, r"finite number > 0, got -1.0"),
    ("lr_decay_horizon", -1, r"integer >= 0, got -1"), ("lr_decay_horizon", 1.5, r"integer >= 0, got 1.5"),
    ("lr_decay_final", -0.1, r"in \[0, 1\], got -0.1"), ("lr_decay_final", 1.5, r"in \[0, 1\], got 1.5"),
    ("lr_decay_final", "0.1", r"in \[0, 1\], got '0.1'"),
    ("log_var_lr_scale", 0.0, r"finite number > 0, got 0.0"),
    ("grad_clip", -1, r"finite number > 0, got -1"), ("grad_clip", 0.0, r"finite number > 0, got 0.0"),
    ("grad_clip", NAN, r"finite number > 0, got nan"),
    ("ema_decay", 1.0, r"in \[0, 1\).*got 1.0"), ("ema_decay", -0.1, r"in \[0, 1\).*got -0.1"),
    ("ema_decay", NAN, r"in \[0, 1\).*got nan"), ("ema_decay", "0.9", r"in \[0, 1\).*got '0.9'"),
    ("log_z_init", "one", r"one of \('batch', 'zero'\), got 'one'"),
    ("explore", -0.1, r"finite number >= 0.*got -0.1"), ("explore", NAN, r"finite number >= 0.*got nan"),
    ("explore", INF, r"finite number >= 0.*got inf"), ("explore", "0.1", r"finite number >= 0.*got '0.1'"),
    ("explore_horizon", 0, r"integer >= 1, got 0"), ("explore_decay", "linear", r"one of .*got 'linear'"),
    ("seed", -1, r"integer >= 0, got -1"), ("seed", "0", r"integer >= 0, got '0'"),
    ("checkpoint_every", -1, r"integer >= 0, got -1"), ("checkpoint_every", 1.5, r"integer >= 0, got 1.5"),
    ("train_grid", "cosine", r"one of \('uniform', 'random'\), got 'cosine'"),
    ("grid_low", 0.0, r"finite number > 0, got 0.0"), ("grid_low", "1", r"finite number > 0, got '1'"),
    ("grid_high", 0.5, r"0 < grid_low <= grid_high"), ("grid_power", 0.0, r"finite number > 0, got 0.0"),
    ("steps_max", 0, r"integer >= 1, got 0"), ("steps_max", 200, r"needs train_grid='random'"),
    ("per_step", "yes", r"True or False, got 'yes'"),
    ("step_fraction", 0.0, r"in \(0, 1\], got 0.0"), ("step_fraction", 1.5, r"in \(0, 1\], got 1.5"),
    ("step_fraction", NAN, r"in \(0, 1\], got nan"),
]:
    case(f"TrainConfig-{field}-{value!r}", train(**{field: value}), ValueError, rf"TrainConfig\.{field} .*{regex}")
case("TrainConfig-grid-power-random-grid", train(grid_power=2.0, train_grid="random"), ValueError,
     r"TrainConfig.grid_power 2.0 needs train_grid='uniform'")
case("TrainConfig-steps-max-below-steps", train(train_grid="random", steps=10, steps_max=5), ValueError,
     r"TrainConfig.steps_max needs .*steps_max >= steps")

# SamplerConfig: every field
for field, value, regex in [
    ("sigma2", 0.0, r"finite number > 0, got 0.0"), ("sigma2", -1.0, r"finite number > 0, got -1.0"),
    ("sigma2", INF, r"finite number > 0, got inf"), ("sigma2", "1", r"finite number > 0, got '1'"),
    ("langevin", "yes", r"True or False, got 'yes'"), ("langevin", 1, r"True or False, got 1"),
    ("learn_variance", None, r"True or False, got None"),
    ("langevin_scale", "global", r"one of .*got 'global'"),
    ("hidden", 0, r"integer >= 1, got 0"), ("hidden", 2.5, r"integer >= 1, got 2.5"),
    ("hidden", True, r"integer >= 1, got True"),
    ("encoder", "rnn", r"one of \('auto', 'mlp', 'cnn', 'embedding'\), got 'rnn'"),
    ("noising", "ou", r"one of \('auto', 'brownian', 'vp'\), got 'ou'"),
    ("lora_rank", -1, r"integer >= 0 \(0: no LoRA\), got -1"),
    ("guidance", -1.0, r"finite number >= 0 \(0: off\), got -1.0"), ("guidance", NAN, r"finite number >= 0.*got nan"),
    ("guidance", True, r"finite number >= 0.*got True"),
    ("class_norms", 1, r"True or False, got 1"), ("freeze_denoiser", "yes", r"True or False, got 'yes'"),
    ("class_rank", -1, r"integer >= 0 \(0: none\), got -1"), ("class_rank", 1.5, r"integer >= 0 \(0: none\), got 1.5"),
]:
    case(f"SamplerConfig-{field}-{value!r}", sampler(**{field: value}), ValueError, rf"SamplerConfig\.{field} .*{regex}")
case("SamplerConfig-shared-scale-without-langevin", sampler(langevin_scale="shared"), ValueError,
     r"SamplerConfig.langevin_scale='shared' is for the Langevin parametrization: set langevin=True")

# ReplayConfig: every field
for field, value, regex in [
    ("prioritization", "greedy", r"one of \('uniform', 'rank'\), got 'greedy'"),
    ("capacity", 0, r"integer >= 1, got 0"), ("capacity", 2.5, r"integer >= 1, got 2.5"),
    ("rank_k", -0.01, r"finite number > 0, got -0.01"), ("rank_k", NAN, r"finite number > 0, got nan"),
    ("local_search", "yes", r"True or False, got 'yes'"),
    ("ls_every", 1, r"integer >= 2 .*got 1"), ("ls_every", 2.5, r"integer >= 2 .*got 2.5"),
    ("ls_steps", 0, r"integer >= 1, got 0"),
    ("ls_burn_in", -1, r"integer >= 0, got -1"), ("ls_burn_in", 200, r"ls_burn_in < ls_steps.*200 and 200"),
    ("ls_chains", 0, r"integer >= 1 or None .*got 0"),
    ("ls_beta", 0.0, r"finite number > 0, got 0.0"), ("ls_beta", INF, r"finite number > 0, got inf"),
    ("ls_step_size", -0.01, r"finite number > 0, got -0.01"), ("ls_step_size", 0, r"finite number > 0, got 0"),
]:
    case(f"ReplayConfig-{field}-{value!r}", replay(**{field: value}), ValueError, rf"ReplayConfig\.{field} .*{regex}")

# Trainer
case("Trainer-log-every-zero", lambda: _trainer(log_every=0), ValueError, r"log_every must be an integer >= 1, got 0")
case("Trainer-log-every-float", lambda: _trainer(log_every=2.5), ValueError, r"log_every must be an integer >= 1, got 2.5")
case("Trainer-config-dict", lambda: _trainer(config={"iterations": 1}), TypeError, r"config must be a TrainConfig, got dict")
case("Trainer-objective-str", lambda: _trainer(objective="tb"), TypeError, r"objective must be an Objective, got str")
case("Trainer-replay-dict", lambda: _trainer(replay={}), TypeError, r"replay must be a ReplayConfig or a ReplayTraining")

# Posterior.sample / sample_latent / log_z
case("sample-num-samples-0", lambda: _conditional().sample(_y(2), 0), ValueError, r"num_samples must be an integer >= 1, got 0")
case("sample-num-samples-float", lambda: _conditional().sample(_y(2), 2.5), ValueError, r"num_samples must be an integer >= 1, got 2.5")
case("sample-num-samples-negative", lambda: _unconditional().sample(num_samples=-1), ValueError, r"num_samples must be an integer >= 1, got -1")
case("sample-num-samples-str", lambda: _unconditional().sample(num_samples="8"), ValueError, r"num_samples must be an integer >= 1, got '8'")
case("sample-latent-num-samples-0", lambda: _conditional().sample_latent(_y(2), 0), ValueError, r"num_samples must be an integer >= 1, got 0")
case("sample-latent-num-samples-bool", lambda: _unconditional().sample_latent(num_samples=True), ValueError,
     r"num_samples must be an integer >= 1, got True")
case("log-z-num-samples-1", lambda: _conditional().log_z(_y(2), 1), ValueError, r"num_samples must be an integer >= 2 .*got 1")
case("log-z-num-samples-0", lambda: _unconditional().log_z(num_samples=0), ValueError, r"num_samples must be an integer >= 2 .*got 0")
case("log-z-num-samples-float", lambda: _unconditional().log_z(num_samples=2.5), ValueError, r"num_samples must be an integer >= 2 .*got 2.5")
case("sample-y-wrong-width", lambda: _conditional().sample(torch.zeros(2, 4), 3), ValueError, r"y must have shape \(B, 3\), got \(2, 4\)")
case("sample-y-1d", lambda: _conditional().sample(torch.zeros(3), 3), ValueError, r"y must have shape \(B, 3\), got \(3,\)")
case("sample-latent-y-wrong-width", lambda: _conditional().sample_latent(torch.zeros(2, 5), 3), ValueError,
     r"y must have shape \(B, 3\), got \(2, 5\)")
case("log-z-y-wrong-width", lambda: _conditional().log_z(torch.zeros(2, 4), 4), ValueError, r"y must have shape \(B, 3\), got \(2, 4\)")
case("sample-y-missing", lambda: _conditional().sample(None, 3), ValueError, r"this posterior is conditional: pass y of shape \(B, 3\)")
case("log-z-y-missing", lambda: _conditional().log_z(None, 4), ValueError, r"this posterior is conditional: pass y")
case("sample-y-to-unconditional", lambda: _unconditional().sample(torch.zeros(2, 2), 3), ValueError,
     r"this posterior is unconditional: pass y=None")
case("log-z-y-to-unconditional", lambda: _unconditional().log_z(torch.zeros(2, 2), 4), ValueError,
     r"this posterior is unconditional: pass y=None")
case("sample-y-nan", lambda: _conditional().sample(torch.full((2, 3), NAN), 3), ValueError, r"y contains NaN or inf")
case("sample-y-int", lambda: _conditional().sample(torch.ones(2, 3, dtype=torch.long), 3), ValueError,
     r"y must be floating point.*int64")
case("sample-y-str", lambda: _conditional().sample("digit", 3), ValueError, r"y must be a tensor or array of shape \(B, 3\)")
case("sample-steps-0", lambda: _conditional().sample(_y(2), 3, steps=0), ValueError, r"steps must be an integer >= 1, got 0")
case("log-z-steps-float", lambda: _unconditional().log_z(num_samples=4, steps=2.5), ValueError, r"steps must be an integer >= 1, got 2.5")
case("sample-latent-max-trajectories-0", lambda: _conditional().sample_latent(_y(2), 3, max_trajectories=0), ValueError,
     r"max_trajectories must be an integer >= 1, got 0")

# Posterior.from_pretrained
case("load-missing-folder", lambda: _load(Path(tempfile.gettempdir()) / "no-such-posterior-folder"), FileNotFoundError,
     r"config.json not found: folder must be written by Posterior.save_pretrained")
case("load-missing-weights", lambda: _load(_broken_folder(_edited_config(), weights=False)), FileNotFoundError,
     r"model.safetensors not found")
case("load-broken-json", lambda: _load(_broken_folder("{not json")), ValueError, r"config.json is not valid JSON")
case("load-json-list", lambda: _load(_broken_folder("[1, 2]")), ValueError, r"config.json was not written by Posterior.save_pretrained")
case("load-wrong-class", lambda: _load(_broken_folder(_edited_config(**{"class": "Other"}))), ValueError,
     r"was not written by Posterior.save_pretrained \(class 'Other'\)")
case("load-unknown-kind", lambda: _load(_broken_folder(_edited_config(kind="flow"))), ValueError, r"was not written by Posterior")
case("load-missing-network", lambda: _load(_broken_folder(_edited_config(network=None))), ValueError,
     r"config.json .*network")
case("load-prior-none", lambda: _load(_saved(), prior=None), ValueError,
     r"was trained with prior=a posterior.priors.vae.VAEDecoderPrior \(latent_dim=2.*got prior=None: pass the same prior")
case("load-prior-other-latent-dim", lambda: _load(_saved(), prior=VAEDecoderPrior(torch.nn.Linear(3, 3), 3)), ValueError,
     r"trained with prior=.*latent_dim=2.*got prior=.*latent_dim.: 3")
case("load-reward-other-class", lambda: _load(_saved(), reward=BernoulliImageLikelihood()), ValueError,
     r"trained with reward=a posterior.constraints.likelihoods.GaussianObservation .*got reward=.*BernoulliImageLikelihood")
case("load-reward-none", lambda: _load(_saved(), reward=None), ValueError, r"trained with reward=.*got reward=None")
case("load-extra-proposal", lambda: _load(_saved(), proposal=MLPVAE(3, 4, 2).proposal()), ValueError,
     r"trained with proposal=None; got proposal=")

# targets
case("GaussianTarget-mean-nan", lambda: GaussianTarget([NAN, 0.0], std=[1.0, 1.0]), ValueError, r"mean must be finite")
case("GaussianTarget-mean-inf", lambda: GaussianTarget([INF, 0.0], std=[1.0, 1.0]), ValueError, r"mean must be finite")
case("GaussianTarget-mean-2d", lambda: GaussianTarget(torch.zeros(2, 2), std=[1.0, 1.0]), ValueError, r"mean must have shape \(d,\) with d >= 1, got \(2, 2\)")
case("GaussianTarget-mean-empty", lambda: GaussianTarget(torch.zeros(0), std=torch.zeros(0)), ValueError, r"mean must have shape \(d,\) with d >= 1")
case("GaussianTarget-std-zero", lambda: GaussianTarget([0.0, 0.0], std=[1.0, 0.0]), ValueError, r"std must be strictly positive")
case("GaussianTarget-std-negative", lambda: GaussianTarget([0.0, 0.0], std=[-1.0, 1.0]), ValueError, r"std must be strictly positive")
case("GaussianTarget-std-inf", lambda: GaussianTarget([0.0, 0.0], std=[INF, 1.0]), ValueError, r"std must be .*finite")
case("GaussianTarget-std-wrong-shape", lambda: GaussianTarget([0.0, 0.0], std=[1.0, 1.0, 1.0]), ValueError, r"std must have shape \(d,\) = \(2,\)")
case("GaussianTarget-cov-and-std", lambda: GaussianTarget([0.0, 0.0], cov=torch.eye(2), std=[1.0, 1.0]), ValueError, r"exactly one of cov")
case("GaussianTarget-neither", lambda: GaussianTarget([0.0, 0.0]), ValueError, r"exactly one of cov")
case("GaussianTarget-cov-not-pd", lambda: GaussianTarget([0.0, 0.0], cov=-torch.eye(2)), ValueError, r"cov must be symmetric positive definite")
case("GaussianTarget-cov-nan", lambda: GaussianTarget([0.0, 0.0], cov=torch.tensor([[1.0, NAN], [NAN, 1.0]])), ValueError, r"cov must be")
case("GaussianTarget-cov-wrong-shape", lambda: GaussianTarget([0.0, 0.0], cov=torch.eye(3)), ValueError, r"cov must have shape \(d, d\) = \(2, 2\)")
case("GaussianTarget-log-scale-nan", lambda: GaussianTarget([0.0, 0.0], std=[1.0, 1.0], log_scale=NAN), ValueError, r"log_scale must be finite")
case("GaussianTarget-reference-variance-zero", lambda: GaussianTarget([0.0, 0.0], std=[1.0, 1.0], reference_variance=0.0),
     ValueError, r"reference_variance must be a finite number > 0, got 0.0")
case("Funnel-dim-1", lambda: Funnel(dim=1), ValueError, r"Funnel dim must be an integer >= 2, got 1")
case("Funnel-dim-float", lambda: Funnel(dim=2.5), ValueError, r"Funnel dim must be an integer >= 2, got 2.5")
case("Funnel-dim-str", lambda: Funnel(dim="10"), ValueError, r"Funnel dim must be an integer >= 2, got '10'")
case("Manywell-dim-odd", lambda: Manywell(dim=3), ValueError, r"Manywell dim must be an even integer >= 2, got 3")
case("Manywell-dim-zero", lambda: Manywell(dim=0), ValueError, r"Manywell dim must be an even integer >= 2, got 0")
case("Manywell-dim-float", lambda: Manywell(dim=4.0), ValueError, r"Manywell dim must be an even integer >= 2, got 4.0")
case("make-target-unknown", lambda: make_target("rosenbrock"), ValueError, r"unknown target 'rosenbrock'; valid names")
case("make-target-gmm25-dim", lambda: make_target("gmm25", dim=3), ValueError, r"gmm25 is 2-dimensional, got dim=3")
case("make-target-lgcp-not-square", lambda: make_target("lgcp", dim=10, pines_path="x.csv"), ValueError,
     r"lgcp dim must be a perfect square")
case("make-target-lgcp-no-pines", lambda: make_target("lgcp"), ValueError, r"needs pines_path")
case("LGCP-missing-pines", lambda: LogGaussianCoxProcess("/no/such/pines.csv", grid=4), FileNotFoundError,
     r"pines_path='/no/such/pines.csv' does not exist")
case("LGCP-grid-zero", lambda: LogGaussianCoxProcess("/no/such/pines.csv", grid=0), ValueError, r"grid must be a positive integer, got 0")

# likelihoods and priors
case("GaussianObservation-noise-inf", lambda: GaussianObservation(Identity(), noise_std=INF), ValueError,
     r"noise_std must be a finite number > 0, got inf")
case("GaussianObservation-noise-zero", lambda: GaussianObservation(Identity(), noise_std=0.0), ValueError,
     r"noise_std must be a finite number > 0, got 0.0")
case("GaussianObservation-noise-negative", lambda: GaussianObservation(Identity(), noise_std=-1), ValueError,
     r"noise_std must be a finite number > 0, got -1")
case("GaussianObservation-noise-nan", lambda: GaussianObservation(Identity(), noise_std=NAN), ValueError,
     r"noise_std must be a finite number > 0, got nan")
case("GaussianObservation-noise-str", lambda: GaussianObservation(Identity(), noise_std="0.1"), ValueError,
     r"noise_std must be a finite number > 0, got '0.1'")
case("GaussianObservation-operator-str", lambda: GaussianObservation("identity", 0.1), TypeError,
     r"operator must be an ObservationOperator .*got str")
case("GaussianObservation-y-wrong-shape", lambda: _reward().log_likelihood(torch.zeros(2, 3), torch.zeros(2, 4)), ValueError,
     r"y must have the shape of A\(x\), \(B, 3\) with B = 2, got \(2, 4\)")
case("Mask-0d", lambda: Mask(torch.tensor(True)), ValueError, r"mask must have the event shape of x")
case("Mask-non-binary", lambda: Mask(torch.tensor([0.0, 2.0])), ValueError, r"mask must be boolean or hold only 0/1")
case("Mask-x-wrong-shape", lambda: GaussianObservation(Mask(torch.ones(4)), 0.1).log_likelihood(torch.zeros(2, 3), torch.zeros(2, 3)),
     ValueError, r"x must have shape \(B, \*mask.shape\) = \(B, 4\), got \(2, 3\)")
case("Mask-image-wrong-shape", lambda: Mask(torch.ones(1, 4, 4))(torch.zeros(2, 16)), ValueError,
     r"x must have shape \(B, \*mask.shape\) = \(B, 1, 4, 4\), got \(2, 16\)")
case("Downsample-factor-zero", lambda: Downsample(0), ValueError, r"factor must be a positive integer, got 0")
case("Downsample-factor-float", lambda: Downsample(1.5), ValueError, r"factor must be a positive integer, got 1.5")
case("Downsample-not-divisible", lambda: Downsample(2, image_shape=(7, 7)), ValueError, r"image_shape has H, W = \(7, 7\), not divisible by factor 2")
case("Downsample-image-shape-4d", lambda: Downsample(2, image_shape=(1, 1, 4, 4)), ValueError, r"image_shape must be \(C, H, W\) or \(H, W\)")
case("Downsample-x-2d", lambda: Downsample(2)(torch.zeros(2, 16)), ValueError, r"x must have shape \(B, C, H, W\) or \(B, H, W\)")
case("Bernoulli-eps-zero", lambda: BernoulliImageLikelihood(eps=0.0), ValueError, r"eps must lie in \(0, 0.5\), got 0.0")
case("Bernoulli-y-wrong-shape", lambda: BernoulliImageLikelihood().log_likelihood(torch.rand(2, 4), torch.rand(2, 5)), ValueError,
     r"y must have the shape of probs")
case("Classifier-temperature-zero", lambda: ClassifierLikelihood(_classifier(), temperature=0.0), ValueError,
     r"temperature must be a finite number > 0, got 0.0")
case("Classifier-temperature-nan", lambda: ClassifierLikelihood(_classifier(), temperature=NAN), ValueError,
     r"temperature must be a finite number > 0, got nan")
case("Classifier-not-callable", lambda: ClassifierLikelihood("resnet", target_classes=1), TypeError,
     r"classifier must be a callable .*got str")
case("Classifier-negative-class", lambda: ClassifierLikelihood(_classifier(), target_classes=-1), ValueError,
     r"target_classes must be class indices >= 0 .*got \[-1\]")
case("Classifier-class-out-of-range", lambda: ClassifierLikelihood(_classifier(), target_classes=5)(torch.zeros(2, 2, 2)),
     ValueError, r"target_classes must be class indices in \[0, 3\), got \[5\]")
case("Classifier-y-out-of-range", lambda: ClassifierLikelihood(_classifier())(torch.zeros(2, 2, 2), torch.tensor([0, 3])),
     ValueError, r"y must be class indices in \[0, 3\)")
case("VAEDecoderPrior-decoder-int", lambda: VAEDecoderPrior(3, 2), TypeError, r"decoder must be an nn.Module or callable, got int")
case("VAEDecoderPrior-latent-dim-missing", lambda: VAEDecoderPrior(_decoder()), ValueError, r"latent_dim must be given")
case("VAEDecoderPrior-latent-dim-float", lambda: VAEDecoderPrior(_decoder(), 2.5), ValueError,
     r"latent_dim must be a positive integer, got 2.5")
case("VAEDecoderPrior-mlpvae-disagrees", lambda: VAEDecoderPrior(MLPVAE(8, 4, 2), latent_dim=5), ValueError,
     r"latent_dim=5 disagrees with the MLPVAE's latent_dim=2")
case("MLPVAE-latent-dim-zero", lambda: MLPVAE(latent_dim=0), ValueError, r"latent_dim must be a positive integer, got 0")
case("MLPVAE-latent-dim-float", lambda: MLPVAE(latent_dim=2.5), ValueError, r"latent_dim must be a positive integer, got 2.5")
case("MLPVAE-missing-weights", lambda: MLPVAE.from_safetensors("/no/such/vae.safetensors"), FileNotFoundError,
     r"VAE checkpoint not found: /no/such/vae.safetensors")
case("MLPVAE-encode-wrong-width", lambda: MLPVAE(8, 4, 2).encode(torch.zeros(2, 7)), ValueError, r"x must have shape \(B, 8\), got \(2, 7\)")


class _BadTarget:
    """A Boltzmann-style reward (``dim``, ``log_reward``) returning a wrong shape or NaN."""

    dim = 2

    def __init__(self, keepdim: bool = False, nan: bool = False) -> None:
        self.keepdim, self.nan = keepdim, nan

    def log_reward(self, x, y=None):
        value = -(x ** 2).sum(-1, keepdim=self.keepdim)
        return value * NAN if self.nan else value


@pytest.mark.parametrize("fn, exc, regex", CASES)
def test_bad_input_fails_clearly(fn, exc, regex):
    with pytest.raises(exc, match=regex):
        fn()


def test_the_suite_is_wide():
    assert len(CASES) + len(RECIPE_CASES) >= 150


# ---------------------------------------------------------------------------------------------- recipe flags
# Each case: pytest.param(script, flags, flag named in the message[, extra], id=...). ``extra`` are the arguments a
# valid run would also need ("{out}" is the case's output folder, which must stay empty); by default
# ``--out {out} --no-progress``. Scripts without those flags get their own (a JSON report, dummy required paths).
OUT_FLAGS = ("--out", "{out}", "--no-progress")
JSON_FLAGS = ("--json", "{out}/metrics.json")
RECIPE_CASES = [
    pytest.param("boltzmann.py", ["--target", "gmm25", "--iters", "0"], r"--iters", id="boltzmann-iters-0"),
    pytest.param("boltzmann.py", ["--target", "gmm25", "--eval-samples", "0"], r"--eval-samples", id="boltzmann-eval-samples-0"),
    pytest.param("boltzmann.py", ["--target", "gmm25", "--batch", "0"], r"--batch", id="boltzmann-batch-0"),
    pytest.param("boltzmann.py", ["--target", "gmm25", "--threads", "0"], r"--threads", id="boltzmann-threads-0"),
    pytest.param("mnist_vae_posterior.py", ["--eval-k", "0"], r"--eval-k", id="mnist-vae-eval-k-0"),
    pytest.param("mnist_vae_posterior.py", ["--iters", "0"], r"--iters", id="mnist-vae-iters-0"),
    pytest.param("mixture_posterior.py", ["--eval-samples", "0"], r"--eval-samples", id="mixture-eval-samples-0"),
    pytest.param("mixture_posterior.py", ["--threads", "0"], r"--threads", id="mixture-threads-0"),
    pytest.param("mnist_classifier_guidance.py", ["--batch", "0"], r"--batch", id="guidance-batch-0"),
    pytest.param("mnist_classifier_guidance.py", ["--num-samples", "0"], r"--num-samples", id="guidance-num-samples-0"),
    # timing and memory reports (a JSON report, no --out)
    pytest.param("speed.py", ["--iters", "0"], r"--iters", JSON_FLAGS, id="speed-iters-0"),
    pytest.param("speed.py", ["--warmup", "-1"], r"--warmup", JSON_FLAGS, id="speed-warmup-negative"),
    pytest.param("speed.py", ["--batch", "0"], r"--batch", JSON_FLAGS, id="speed-batch-0"),
    pytest.param("speed.py", ["--device", "gpu"], r"--device", JSON_FLAGS, id="speed-device-unknown"),
    pytest.param("speed.py", ["--target", "manywell", "--dim", "3"], r"--dim", JSON_FLAGS, id="speed-dim-odd-manywell"),
    pytest.param("replay_speed.py", ["--capacity", "0"], r"--capacity", JSON_FLAGS, id="replay-speed-capacity-0"),
    pytest.param("replay_speed.py", ["--repeats", "0"], r"--repeats", JSON_FLAGS, id="replay-speed-repeats-0"),
    pytest.param("replay_speed.py", ["--round-batch", "-5"], r"--round-batch", JSON_FLAGS,
                 id="replay-speed-round-batch-negative"),
    pytest.param("w2_floor.py", ["--n", "1"], r"--n", JSON_FLAGS, id="w2-floor-n-1"),
    pytest.param("w2_floor.py", ["--dim", "3"], r"--dim", JSON_FLAGS, id="w2-floor-dim-odd"),
    pytest.param("w2_floor.py", ["--betas", "1,nan"], r"--betas", JSON_FLAGS, id="w2-floor-betas-nan"),
    pytest.param("w2_floor.py", ["--betas", "0,1"], r"--betas", JSON_FLAGS, id="w2-floor-betas-0"),
    pytest.param("rtb_memory.py", ["--iters", "0"], r"--iters", JSON_FLAGS, id="rtb-memory-iters-0"),
    pytest.param("rtb_memory.py", ["--widths", "12", "24"], r"--widths", JSON_FLAGS, id="rtb-memory-widths-not-8"),
    pytest.param("rtb_memory.py", ["--size", "7"], r"--size", JSON_FLAGS, id="rtb-memory-size-odd"),
    pytest.param("rtb_memory.py", ["--modes", "full,everything"], r"--modes", JSON_FLAGS, id="rtb-memory-modes-unknown"),
    pytest.param("rtb_path_kl.py", ["--run", "{out}/run", "--samples", "1"], r"--samples", JSON_FLAGS,
                 id="rtb-path-kl-samples-1"),
    pytest.param("rtb_path_kl.py", ["--run", "{out}/run", "--paths", "0"], r"--paths", JSON_FLAGS,
                 id="rtb-path-kl-paths-0"),
    pytest.param("rtb_path_kl.py", ["--run", "{out}/run", "--frozen-final-steps", "-1"], r"--frozen-final-steps",
                 JSON_FLAGS, id="rtb-path-kl-frozen-negative"),
    pytest.param("rtb_step_gradients.py", ["--prior", "{out}/prior", "--steps", "0"], r"--steps", JSON_FLAGS,
                 id="rtb-step-gradients-steps-0"),
    pytest.param("rtb_step_gradients.py", ["--prior", "{out}/prior", "--batch", "0"], r"--batch", JSON_FLAGS,
                 id="rtb-step-gradients-batch-0"),
    pytest.param("rtb_step_gradients.py", ["--prior", "priors/pretrained/mnist14", "--steps", "5000"], r"--steps",
                 JSON_FLAGS, id="rtb-step-gradients-steps-beyond-the-schedule"),
    # orchestrators of other recipes (--out, no --no-progress)
    pytest.param("variance_sweep.py", ["--iters", "0"], r"--iters", ("--out", "{out}"), id="variance-sweep-iters-0"),
    pytest.param("variance_sweep.py", ["--steps", "8,0"], r"--steps", ("--out", "{out}"), id="variance-sweep-steps-0"),
    pytest.param("variance_sweep.py", ["--log-var-ranges", "4,inf"], r"--log-var-ranges", ("--out", "{out}"),
                 id="variance-sweep-log-var-range-inf"),
    pytest.param("variance_sweep.py", ["--log-var-lr-scales", "0"], r"--log-var-lr-scales", ("--out", "{out}"),
                 id="variance-sweep-lr-scale-0"),
    pytest.param("public_code_pis.py", ["--code-dir", "{out}/code", "--iters", "-1"], r"--iters", ("--out", "{out}"),
                 id="public-code-pis-iters-negative"),
    pytest.param("public_code_pis.py", ["--code-dir", "{out}/code", "--eval-repeats", "0"], r"--eval-repeats",
                 ("--out", "{out}"), id="public-code-pis-eval-repeats-0"),
    pytest.param("public_code_pis.py", ["--code-dir", "{out}/code", "--threads", "0"], r"--threads",
                 ("--out", "{out}"), id="public-code-pis-threads-0"),
    pytest.param("boltzmann_table.py", ["--jobs", "0"], r"--jobs", ("--out", "{out}", "--no-run"),
                 id="boltzmann-table-jobs-0"),
    pytest.param("boltzmann_table.py", ["--iters", "0"], r"--iters", ("--out", "{out}", "--no-run"),
                 id="boltzmann-table-iters-0"),
    pytest.param("boltzmann_table.py", ["--seeds", "0,-1"], r"--seeds", ("--out", "{out}", "--no-run"),
                 id="boltzmann-table-seed-negative"),
    pytest.param("boltzmann_table.py", ["--extra=--batch 0"], r"--extra", ("--out", "{out}", "--no-run"),
                 id="boltzmann-table-extra-batch-0"),
    # MNIST recipes
    pytest.param("mnist_vae_curve.py", ["--images", "0"], r"--images", id="mnist-vae-curve-images-0"),
    pytest.param("mnist_vae_curve.py", ["--samples-per-condition", "1"], r"--samples-per-condition",
                 id="mnist-vae-curve-samples-per-condition-1"),
    pytest.param("mnist_vae_curve.py", ["--reference-k", "1"], r"--reference-k", id="mnist-vae-curve-reference-k-1"),
    pytest.param("mnist_prior.py", ["--ddpm-iters", "0"], r"--ddpm-iters",
                 ("--no-progress", "--prior-dir", "{out}/prior", "--classifier-dir", "{out}/classifier"),
                 id="mnist-prior-ddpm-iters-0"),
    pytest.param("mnist_prior.py", ["--size", "7"], r"--size",
                 ("--no-progress", "--prior-dir", "{out}/prior", "--classifier-dir", "{out}/classifier"),
                 id="mnist-prior-size-odd"),
    pytest.param("mnist_prior.py", ["--classifier-epochs", "0"], r"--classifier-epochs",
                 ("--no-progress", "--prior-dir", "{out}/prior", "--classifier-dir", "{out}/classifier"),
                 id="mnist-prior-classifier-epochs-0"),
    pytest.param("mnist_inpainting.py", ["--iters", "0"], r"--iters", id="inpainting-iters-0"),
    pytest.param("mnist_inpainting.py", ["--lr", "nan"], r"--lr", id="inpainting-lr-nan"),
    pytest.param("mnist_inpainting.py", ["--dps-scale", "-1"], r"--dps-scale", id="inpainting-dps-scale-negative"),
    pytest.param("mnist_inpainting.py", ["--sir-pool", "1"], r"--sir-pool", id="inpainting-sir-pool-1"),
    pytest.param("mnist_inpainting.py", ["--guidance", "-1"], r"--guidance", id="inpainting-guidance-negative"),
    pytest.param("guided_start.py", ["--problem", "classes", "--guidance", "0,-1"], r"--guidance", (),
                 id="guided-start-guidance-negative"),
    pytest.param("guided_start.py", ["--problem", "classes", "--guidance", "a"], r"--guidance", (),
                 id="guided-start-guidance-not-numbers"),
    pytest.param("guided_start.py", ["--problem", "classes", "--trajectories", "0"], r"--trajectories", (),
                 id="guided-start-trajectories-0"),
    pytest.param("mnist_inpainting.py", ["--lr-guidance", "0"], r"--lr-guidance", id="inpainting-lr-guidance-0"),
    pytest.param("mnist_inpainting.py", ["--guidance", "1", "--objective", "pis"], r"--guidance must be 0 with --objective pis",
                 id="inpainting-guidance-pis"),
    pytest.param("mnist_classifier_guidance.py", ["--classes", "0-2", "--class-guidance", "nan"], r"--class-guidance",
                 id="guidance-class-guidance-nan"),
    pytest.param("mnist_classifier_guidance.py", ["--classes", "0-2", "--class-guidance", "1", "--class-objective", "pis"],
                 r"--class-guidance must be 0 with --class-objective pis", id="guidance-class-guidance-pis"),
    pytest.param("mnist_classifier_guidance.py", ["--classes", "0-12"], r"--classes", id="guidance-classes-out-of-range"),
    pytest.param("mnist_classifier_guidance.py", ["--classes", "a,b"], r"--classes", id="guidance-classes-not-digits"),
    pytest.param("mnist_classifier_guidance.py", ["--classes", "0-2", "--class-iters", "0"], r"--class-iters",
                 id="guidance-class-iters-0"),
    pytest.param("mnist_classifier_guidance.py", ["--classes", "0-2", "--class-batch", "0"], r"--class-batch",
                 id="guidance-class-batch-0"),
    pytest.param("mnist_classifier_guidance.py", ["--classes", "0-2", "--samples-per-condition", "0"],
                 r"--samples-per-condition", id="guidance-samples-per-condition-0"),
    pytest.param("mnist_classifier_guidance.py", ["--classes", "0-2", "--eval-k", "1"], r"--eval-k",
                 id="guidance-eval-k-1"),
    pytest.param("mnist_classifier_guidance.py", ["--classes", "0-2", "--class-methods", "amortized,bogus"],
                 r"--class-methods", id="guidance-class-methods-unknown"),
    pytest.param("mnist_classifier_guidance.py", ["--classes", "0-2", "--class-methods", ","], r"--class-methods",
                 id="guidance-class-methods-empty"),
    pytest.param("mnist_classifier_guidance.py", ["--lr", "0"], r"--lr", id="guidance-lr-0"),
    pytest.param("mnist_classifier_guidance.py", ["--beta", "nan"], r"--beta", id="guidance-beta-nan"),
    pytest.param("mnist_classifier_guidance.py", ["--rtb-ema", "1"], r"--rtb-ema", id="guidance-rtb-ema-1"),
    pytest.param("mnist_classifier_guidance.py", ["--classes", "0-9", "--lr-condition", "-1"], r"--lr-condition",
                 id="guidance-lr-condition-negative"),
]
RECIPE_CASES = [case if len(case.values) == 4 else pytest.param(*case.values, OUT_FLAGS, id=case.id, marks=case.marks)
                for case in RECIPE_CASES]


@pytest.mark.parametrize("script, flags, flag, extra", RECIPE_CASES)
def test_recipe_flag_is_a_usage_error_before_training(script, flags, flag, extra, tmp_path, capsys, monkeypatch):
    """Run in this process (``runpy``, as ``python recipes/SCRIPT ...`` would): argparse's usage error is a
    SystemExit(2) with the message on stderr; any other exception is a traceback and fails the test. The thread
    count and the global RNG are restored, whatever the recipe set before refusing."""
    import runpy

    import torch

    out = tmp_path / "out"
    args = [a.replace("{out}", str(out)) for a in (*flags, *extra)]
    monkeypatch.setattr(sys, "argv", [f"recipes/{script}", *args])
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(ROOT)
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(), pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(ROOT / "recipes" / script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, (exit_info.value.code, stderr[-2000:])
    message = (stderr.strip().splitlines() or [""])[-1]  # the error itself, not the usage line's flag list
    assert flag in message and ("must be" in message or "expected" in message), stderr[-2000:]
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    assert not out.exists() or not any(out.rglob("*")), sorted(map(str, out.rglob("*")))  # nothing was written
