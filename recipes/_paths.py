"""Where the recipes find the shared data. The installed library has no default location: these
defaults belong to this repository's checkout (``<repo>/../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV_VAR = "POSTERIOR_DATA_DIR"
PINES_ENV_VAR = "POSTERIOR_PINES_PATH"


def data_dir(path: str | Path | None = None) -> Path:
    """``path`` if given, else ``$POSTERIOR_DATA_DIR`` if set, else ``<repo>/../shared/data``."""
    if path:
        return Path(path)
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def pines_path(path: str | Path | None = None) -> Path:
    """``path`` if given, else ``$POSTERIOR_PINES_PATH`` if set, else ``<repo>/../shared/data/pines.csv``."""
    if path:
        return Path(path)
    env = os.environ.get(PINES_ENV_VAR)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "pines.csv"


def torchvision_roots(shared: Path) -> list[Path]:
    """Local torchvision MNIST roots, in order: the shared data folder, then ``<repo>/data``."""
    return [shared, REPO_ROOT / "data"]
