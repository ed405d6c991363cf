"""Construct benchmark targets by name."""

from __future__ import annotations

import math
from pathlib import Path

from posterior.constraints.funnel import Funnel
from posterior.constraints.gmm25 import GaussianMixture25
from posterior.constraints.lgcp import LogGaussianCoxProcess
from posterior.constraints.manywell import Manywell
from posterior.constraints.target import BoltzmannTarget

TARGET_NAMES: tuple[str, ...] = ("gmm25", "funnel", "manywell", "lgcp")


def make_target(name: str, dim: int | None = None, pines_path: str | Path | None = None) -> BoltzmannTarget:
    """Build a target by name.

    Args:
        name: One of ``"gmm25"``, ``"funnel"`` (default dim 10), ``"manywell"``
            (default dim 32), ``"lgcp"`` (dim must be a square ``grid²``,
            default 1600).
        dim: Optional dimension.
        pines_path: Pines CSV (columns data_x, data_y) for ``"lgcp"``, which needs it; the
            library has no default location. Ignored by the other targets.

    Returns:
        The target module (default dtype, CPU).
    """
    key = name.lower()
    if key == "gmm25":
        if dim not in (None, 2):
            raise ValueError(f"gmm25 is 2-dimensional, got dim={dim}")
        return GaussianMixture25()
    if key == "funnel":
        return Funnel(10 if dim is None else dim)
    if key == "manywell":
        return Manywell(32 if dim is None else dim)
    if key == "lgcp":
        grid = 40
        if dim is not None:
            grid = math.isqrt(dim)
            if dim < 1 or grid * grid != dim:
                raise ValueError(f"lgcp dim must be a perfect square grid², got dim={dim}")
        if pines_path is None:
            raise ValueError("make_target('lgcp') needs pines_path: the path of the pines CSV (columns data_x, data_y)")
        return LogGaussianCoxProcess(Path(pines_path), grid=grid)
    raise ValueError(f"unknown target {name!r}; valid names: {', '.join(TARGET_NAMES)}")
