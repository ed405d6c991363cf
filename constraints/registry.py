"""Construct benchmark targets by name."""

from __future__ import annotations

import math
import os
from pathlib import Path

from posterior.constraints.funnel import Funnel
from posterior.constraints.gmm25 import GaussianMixture25
from posterior.constraints.lgcp import LogGaussianCoxProcess
from posterior.constraints.manywell import Manywell
from posterior.constraints.target import BoltzmannTarget

TARGET_NAMES: tuple[str, ...] = ("gmm25", "funnel", "manywell", "lgcp")
PINES_ENV_VAR: str = "POSTERIOR_PINES_PATH"


def default_pines_path() -> Path:
    """``$POSTERIOR_PINES_PATH`` if set, else ``<repo root>/../shared/data/pines.csv``."""
    env = os.environ.get(PINES_ENV_VAR)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "pines.csv"


def make_target(name: str, dim: int | None = None, pines_path: str | None = None) -> BoltzmannTarget:
    """Build a target by name.

    Args:
        name: One of ``"gmm25"``, ``"funnel"`` (default dim 10), ``"manywell"``
            (default dim 32), ``"lgcp"`` (dim must be a square ``grid²``,
            default 1600).
        dim: Optional dimension.
        pines_path: Pines CSV for ``"lgcp"``; see :func:`default_pines_path`.

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
        path = default_pines_path() if pines_path is None else Path(pines_path)
        return LogGaussianCoxProcess(path, grid=grid)
    raise ValueError(f"unknown target {name!r}; valid names: {', '.join(TARGET_NAMES)}")
