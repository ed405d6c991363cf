"""Build objectives from names (used by the recipes and `fit`)."""

from __future__ import annotations

from posterior.objectives.base import Objective
from posterior.objectives.path_integral import PathIntegral
from posterior.objectives.subtrajectory_balance import SubTrajectoryBalance
from posterior.objectives.trajectory_balance import TrajectoryBalance
from posterior.objectives.vargrad import VarGrad
from posterior.paths.path_target import BoltzmannPath
from posterior.samplers.networks import PISFlow, PISPolicy

OBJECTIVES = ("tb", "vargrad", "subtb", "fl-subtb", "pis")
STATE_FLOW_OBJECTIVES = ("subtb", "fl-subtb")  # objectives with a learned state flow


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
