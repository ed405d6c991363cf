"""Build samplers and objectives from names (used by the recipes and `fit`)."""

from __future__ import annotations

from .learned_backward import LearnedBackward
from .networks import PISFlow, PISPolicy
from .objectives import PathIntegral, SubTrajectoryBalance, TrajectoryBalance, VarGrad
from .objectives.base import Objective
from .path_target import BoltzmannPath
from .reference import BrownianBridge, GaussianReference, VPNoising
from .sampler import DiffusionSampler

OBJECTIVES = ("tb", "vargrad", "subtb", "fl-subtb", "pis")
STATE_FLOW_OBJECTIVES = ("subtb", "fl-subtb")  # objectives with a learned state flow


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


def make_objective(name: str, path: BoltzmannPath | None, *, subtb_lambda: float = 2.0,
                   hidden: int = 64, group_size: int | None = None, dim: int | None = None,
                   flow_embeddings: PISPolicy | None = None, separate_replay_log_z: bool = False) -> Objective:
    """Objective by name: one of :data:`OBJECTIVES`.

    ``path`` is used by FL-SubTB only (log R at intermediate states; None: each batch's own
    ``Trajectories.path``); ``dim`` defaults to ``path.dim``. ``flow_embeddings``: (SubTB)
    a policy whose state and time embeddings the state flow shares (see :class:`PISFlow`).
    ``separate_replay_log_z``: (TB) a second learned log Z for replayed backward batches (see
    :class:`TrajectoryBalance`).
    """
    dim = dim if dim is not None else (path.dim if path is not None else None)
    if flow_embeddings is not None and name not in STATE_FLOW_OBJECTIVES:
        raise ValueError(f"flow_embeddings is for the SubTB objectives' state flow; objective {name!r} has none")
    if separate_replay_log_z and name != "tb":
        raise ValueError(f"separate_replay_log_z is for objective 'tb' (a learned scalar log Z), got {name!r}")
    if name == "tb":
        return TrajectoryBalance(separate_replay_log_z=separate_replay_log_z)
    if name == "vargrad":
        return VarGrad(group_size=group_size)
    if name in STATE_FLOW_OBJECTIVES:
        if dim is None:
            raise ValueError(f"objective {name!r} needs dim (or a path measure)")
        flow = PISFlow(dim, hidden=hidden, shared_embeddings=flow_embeddings)
        return SubTrajectoryBalance(flow, path, lam=subtb_lambda,
                                    forward_looking=name == "fl-subtb")
    if name == "pis":
        return PathIntegral()
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {name!r}")


def default_flow_lr(name: str) -> float:
    """The paper's learning rate for log Z / flows: 1e-1, or 1e-2 with SubTB."""
    return 1e-2 if name in STATE_FLOW_OBJECTIVES else 1e-1
