"""Build samplers and their reference processes from names (used by the recipes and `fit`)."""

from __future__ import annotations

from posterior.samplers.learned_backward import LearnedBackward
from posterior.samplers.networks import PISPolicy
from posterior.paths.reference import BrownianBridge, GaussianReference, VPNoising
from posterior.samplers.sampler import DiffusionSampler


NOISING = ("brownian", "vp")
LANGEVIN_SCALES = ("per-dimension", "shared")  # the Langevin score scale: one per dimension, or one for all


def make_reference(dim: int, sigma2: float, noising: str = "brownian", *, learn_backward: bool = False,
                   hidden: int = 64) -> GaussianReference:
    """The noising process by name (:data:`NOISING`), optionally with a learned backward correction."""
    if noising == "brownian":
        reference: GaussianReference = BrownianBridge(sigma2)
    elif noising == "vp":
        reference = VPNoising(sigma2)
    else:
        raise ValueError(f"noising must be one of {NOISING}, got {noising!r}")
    return LearnedBackward(reference, dim, hidden=hidden) if learn_backward else reference


def make_sampler(dim: int, sigma2: float, *, langevin: bool = False, learn_variance: bool = False,
                 hidden: int = 64, harmonics: int = 64, joint_layers: int = 2, noising: str = "brownian",
                 learn_backward: bool = False, log_var_range: float = 4.0,
                 langevin_per_dimension: bool = True) -> DiffusionSampler:
    """PIS-architecture diffusion sampler for a d-dimensional target, on the named noising process
    (``log_var_range``: with a learned variance, its log lies within ± this of log sigma2;
    ``langevin_per_dimension``: with ``langevin``, a time-dependent scale of the score per
    dimension, or one shared by all dimensions as in the paper's public code's default)."""
    policy = PISPolicy(dim, hidden=hidden, harmonics=harmonics, joint_layers=joint_layers,
                       learn_variance=learn_variance, langevin=langevin,
                       langevin_per_dimension=langevin_per_dimension)
    reference = make_reference(dim, sigma2, noising, learn_backward=learn_backward, hidden=hidden)
    return DiffusionSampler(policy, sigma2, reference=reference, log_var_range=log_var_range)


def langevin_per_dimension(langevin_scale: str, langevin: bool) -> bool:
    """Whether the Langevin scale has one entry per dimension, from its name (:data:`LANGEVIN_SCALES`).

    "shared" is the paper's public code's default; it needs ``langevin`` (the scale is part of the
    Langevin parametrization), so asking for it without raises instead of being ignored.
    """
    if langevin_scale not in LANGEVIN_SCALES:
        raise ValueError(f"langevin_scale must be one of {LANGEVIN_SCALES}, got {langevin_scale!r}")
    if langevin_scale != "per-dimension" and not langevin:
        raise ValueError(f"langevin_scale={langevin_scale!r} is for the Langevin parametrization: pass langevin=True")
    return langevin_scale == "per-dimension"
