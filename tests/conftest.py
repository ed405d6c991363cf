import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def shared_data_dir() -> Path:
    """The tests' data folder (the library has none): ``$POSTERIOR_DATA_DIR``, else ``<repo>/../shared/data``."""
    env = os.environ.get("POSTERIOR_DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def shared_pines_path() -> Path:
    """The pines CSV: ``$POSTERIOR_PINES_PATH``, else ``<repo>/../shared/data/pines.csv``."""
    env = os.environ.get("POSTERIOR_PINES_PATH")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "pines.csv"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
