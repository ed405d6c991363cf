"""Optional dependencies: import them where they are used, with an error that names the extra.

``import posterior`` needs only the core dependencies (torch, numpy, scipy, safetensors, tqdm).
The rest are extras of the ``posterior`` distribution:

- ``diffusion``: diffusers, transformers, peft (diffusion priors, LoRA adapters);
- ``eval``: pot, matplotlib (the exact W2 distance, figures);
- ``recipes``: everything the scripts in ``recipes/`` use (accelerate, torchvision, mlxtend and the
  two extras above).
"""

from __future__ import annotations

import importlib
from types import ModuleType

PIP_NAMES = {"ot": "pot"}  # import name -> the package pip installs, where they differ


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"diffusers"``, ``"matplotlib.pyplot"``) or say how to install it.

    Args:
        module: the module to import.
        extra: the extra of ``posterior`` that installs it (``pip install 'posterior[extra]'``).
        purpose: who needs it, e.g. ``"posterior.evaluation.plotting"``.
    Returns:
        the imported module.
    Raises:
        ImportError: ``module`` (or one of its own dependencies) cannot be imported; the message names
            ``purpose``, the missing package and the extra, and the original error is chained.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.partition(".")[0]
        raise ImportError(f"{purpose} needs {PIP_NAMES.get(package, package)}: pip install 'posterior[{extra}]' "
                          f"(importing {module} failed: {err})", name=package) from err
