"""Build samplers and objectives from names (used by the recipes and `fit`)."""

from __future__ import annotations

from .networks import PISFlow, PISPolicy
from .objectives import PathIntegral, SubTrajectoryBalance, TrajectoryBalance, VarGrad
from .objectives.base import Objective
from .path_target import BoltzmannPath
from .sampler import DiffusionSampler

OBJECTIVES = ("tb", "vargrad", "subtb", "fl-subtb", "pis")


def make_sampler(dim: int, sigma2: float, *, langevin: bool = False, learn_variance: bool = False,
                 hidden: int = 64, harmonics: int = 64, joint_layers: int = 2) -> DiffusionSampler:
    """PIS-architecture diffusion sampler for a d-dimensional target."""
    policy = PISPolicy(dim, hidden=hidden, harmonics=harmonics, joint_layers=joint_layers,
                       learn_variance=learn_variance, langevin=langevin)
    return DiffusionSampler(policy, sigma2)


def make_objective(name: str, path: BoltzmannPath | None, *, subtb_lambda: float = 2.0,
                   hidden: int = 64, group_size: int | None = None, dim: int | None = None) -> Objective:
    """Objective by name: one of :data:`OBJECTIVES`.

    ``path`` is used by FL-SubTB only (log R at intermediate states; None: each batch's own
    ``Trajectories.path``); ``dim`` defaults to ``path.dim``.
    """
    dim = dim if dim is not None else (path.dim if path is not None else None)
    if name == "tb":
        return TrajectoryBalance()
    if name == "vargrad":
        return VarGrad(group_size=group_size)
    if name in ("subtb", "fl-subtb"):
        if dim is None:
            raise ValueError(f"objective {name!r} needs dim (or a path measure)")
        return SubTrajectoryBalance(PISFlow(dim, hidden=hidden), path, lam=subtb_lambda,
                                    forward_looking=name == "fl-subtb")
    if name == "pis":
        return PathIntegral()
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {name!r}")


def default_flow_lr(name: str) -> float:
    """The paper's learning rate for log Z / flows: 1e-1, or 1e-2 with SubTB."""
    return 1e-2 if name in ("subtb", "fl-subtb") else 1e-1
