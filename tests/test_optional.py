"""Optional dependencies: ``import posterior`` needs none of them, and a missing one names its extra."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posterior.core.optional import require

OPTIONAL = ("ot", "matplotlib", "diffusers", "transformers", "peft", "accelerate", "mlxtend", "torchvision")


def test_import_posterior_imports_no_optional_module():
    """``import posterior`` (and every module of the package) imports no optional dependency."""
    code = ("import importlib, pkgutil, sys; import posterior, posterior.priors, posterior.constraints; "
            f"before = sorted(m for m in {OPTIONAL!r} if m in sys.modules); "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(posterior.__path__, 'posterior.')]; "
            "[importlib.import_module(m.name) for p in (posterior.priors, posterior.constraints) "
            "for m in pkgutil.iter_modules(p.__path__, p.__name__ + '.')]; "
            f"print(before, sorted(m for m in {OPTIONAL!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[] []"


def _hide(monkeypatch, *names):
    """Make importing ``name`` (or a submodule) fail as if the package were not installed."""
    real_import = importlib.import_module

    def fake(module, *args, **kwargs):
        if module.partition(".")[0] in names:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return real_import(module, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)


def test_require_returns_the_module():
    assert require("math", "eval", "a test").sqrt(4.0) == 2.0


def test_require_names_the_extra(monkeypatch):
    _hide(monkeypatch, "somepkg")
    with pytest.raises(ImportError, match=r"the widget needs somepkg: pip install 'posterior\[diffusion\]'") as info:
        require("somepkg.sub", "diffusion", "the widget")
    assert info.value.name == "somepkg" and isinstance(info.value.__cause__, ImportError)


def test_plotting_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    from posterior.evaluation import plotting

    _hide(monkeypatch, "matplotlib")
    with pytest.raises(ImportError, match=r"posterior\.evaluation\.plotting needs matplotlib: "
                                          r"pip install 'posterior\[eval\]'"):
        plotting.plot_samples(torch.zeros(4, 2), None, tmp_path / "x.png")


def test_wasserstein2_without_pot_names_the_extra(monkeypatch):
    from posterior.core.metrics import wasserstein2

    _hide(monkeypatch, "ot")
    with pytest.raises(ImportError, match=r"wasserstein2 needs pot: pip install 'posterior\[eval\]'"):
        wasserstein2(torch.zeros(3, 2), torch.ones(3, 2))


def test_lora_without_peft_names_the_extra(monkeypatch):
    from posterior.diffusion.lora import lora_denoiser

    _hide(monkeypatch, "peft")
    with pytest.raises(ImportError, match=r"posterior\.diffusion\.lora needs peft: pip install 'posterior\[diffusion\]'"):
        lora_denoiser(torch.nn.Linear(2, 2), rank=1)


def test_diffusion_priors_without_diffusers_name_the_extra(monkeypatch, tmp_path):
    from posterior.priors.ddpm_training import small_unet
    from posterior.priors.diffusion import DiffusionPrior

    _hide(monkeypatch, "diffusers")
    with pytest.raises(ImportError, match=r"needs diffusers: pip install 'posterior\[diffusion\]'"):
        small_unet(8)
    with pytest.raises(ImportError, match=r"needs diffusers: pip install 'posterior\[diffusion\]'"):
        DiffusionPrior.from_pretrained(tmp_path, num_steps=4)
