"""The architecture of a diffusion sampler built by `fit`: one typed config, validated where defined."""

from __future__ import annotations

import math
from dataclasses import dataclass

from posterior.samplers.factory import LANGEVIN_SCALES

ENCODERS = ("auto", "mlp", "cnn", "embedding")
NOISINGS = ("auto", "brownian", "vp")
# the settings a data-space posterior (fine-tuned from a diffusion prior) takes; the others are refused there
DATA_SPACE_SETTINGS = ("learn_variance", "encoder", "lora_rank", "guidance", "class_norms", "class_rank",
                       "freeze_denoiser")


@dataclass
class SamplerConfig:
    """Settings of the Euler-Maruyama sampler that `fit` trains in latent / noise space (or on a
    Boltzmann density). A posterior fine-tuned from a diffusion prior (``space="data"``) is the prior's
    own denoiser and uses only ``learn_variance``, ``encoder`` (of float conditions), ``lora_rank``, ``guidance``
    ``class_norms``, ``class_rank`` and ``freeze_denoiser``.

    Attributes:
        sigma2: variance per unit time of the reference (Brownian) process.
        langevin: the Langevin parametrization of the drift, NN1(x, t) + NN2(t) * clipped score of the target.
        langevin_scale: "per-dimension" (NN2 has d outputs) or "shared" (one, the paper's public code's).
        learn_variance: learn each step's variance (per dimension) besides its mean.
        hidden: width of the policy (and of the condition encoder and learned log Z(y)).
        encoder: condition encoder: "mlp", "cnn", "embedding" (integer class labels), or "auto" (cnn for
            image-shaped conditions, embedding for labels).
        noising: the reference process: "brownian" (a bridge pinned at 0), "vp" (variance-preserving OU,
            stationary N(0, sigma2 I)), or "auto": "vp" with a proposal (whose whitened coordinates it keeps
            at N(0, I), so that the untrained sampler is the proposal), "brownian" without.
        lora_rank: data space: train rank-r LoRA adapters (:mod:`posterior.diffusion.lora`) on a frozen copy of
            the prior's denoiser instead of all its weights (0: fine-tune all of them).
        guidance: data space: g > 0 adds learned per-step reward guidance to the posterior's step means,
            w_k var_k grad_x log r(x0_prior(x_k)[, y]) with w_k starting at g * alpha_bar_k
            (:class:`posterior.diffusion.guided_denoiser.GuidedDenoiser`): training starts from the guided
            sampler instead of the prior, and amortized over conditions every y is guided from the first
            iteration. Each step then also differentiates the prior's denoiser and the reward (sampling too);
            the reward must be differentiable in x. 0: off.
        class_norms: data space, amortized over integer labels with a diffusers UNet prior: every GroupNorm of
            the posterior's UNet gets a per-class scale and shift (started at zero, trained at
            ``TrainConfig.lr_condition`` with the class table), so each label steers every block directly
            (:class:`posterior.diffusion.class_layers.ClassGroupNorm`).
        class_rank: likewise, r > 0: every Conv2d and Linear of the UNet gets a rank-r adapter per class (one low-rank
            update per label, started at zero, trained at ``lr_condition``;
            :class:`posterior.diffusion.class_layers.ClassLoRA`); 0: none. Rank 8 with ``class_norms``,
            ``freeze_denoiser`` and ``lr_condition`` 5e-4 is the measured best over ten MNIST classes.
        freeze_denoiser: data space: keep the posterior's copy of the prior's denoiser frozen and train only the
            parameters that read y (class table, ``class_norms``, ``class_rank``, condition encoder) and the
            guidance scales. Amortized over many labels this is the faster start: while the conditioning does
            not yet tell the labels apart, the shared weights follow the sum over labels c of KL(q || p(. | c)),
            whose label-blind minimizer is p(x) prod_c r(x, c)^(1/K), inputs ambiguous among the labels; those
            updates first undo what the prior knows (BENCHMARKS.md, ten classes).
    """

    sigma2: float = 1.0
    langevin: bool = False
    langevin_scale: str = "per-dimension"
    learn_variance: bool = False
    hidden: int = 64
    encoder: str = "auto"
    noising: str = "auto"
    lora_rank: int = 0
    guidance: float = 0.0
    class_norms: bool = False
    class_rank: int = 0
    freeze_denoiser: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.sigma2, bool) or not isinstance(self.sigma2, (int, float)) \
                or not (math.isfinite(self.sigma2) and self.sigma2 > 0):
            raise ValueError(f"SamplerConfig.sigma2 must be a finite number > 0, got {self.sigma2!r}")
        for name in ("langevin", "learn_variance", "class_norms", "freeze_denoiser"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SamplerConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.langevin_scale not in LANGEVIN_SCALES:
            raise ValueError(f"SamplerConfig.langevin_scale must be one of {LANGEVIN_SCALES}, got {self.langevin_scale!r}")
        if self.langevin_scale != "per-dimension" and not self.langevin:
            raise ValueError(f"SamplerConfig.langevin_scale={self.langevin_scale!r} is for the Langevin "
                             "parametrization: set langevin=True")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
            raise ValueError(f"SamplerConfig.hidden must be an integer >= 1, got {self.hidden!r}")
        if isinstance(self.class_rank, bool) or not isinstance(self.class_rank, int) or self.class_rank < 0:
            raise ValueError(f"SamplerConfig.class_rank must be an integer >= 0 (0: none), got {self.class_rank!r}")
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(f"SamplerConfig.lora_rank must be an integer >= 0 (0: no LoRA), got {self.lora_rank!r}")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) \
                or not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"SamplerConfig.guidance must be a finite number >= 0 (0: off), got {self.guidance!r}")
        if self.noising not in NOISINGS:
            raise ValueError(f"SamplerConfig.noising must be one of {NOISINGS}, got {self.noising!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"SamplerConfig.encoder must be one of {ENCODERS}, got {self.encoder!r}")
