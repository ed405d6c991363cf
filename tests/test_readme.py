"""The README's set-up commands and CI stay in step."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    readme = ROOT / "README.md"
    lines = readme.read_text().splitlines()
    block = lines[lines.index("```bash") + 1: lines.index("```")]
    assert len(block) == 2 and all(line.startswith("python3 -m venv .venv && ") for line in block)
    assert "pytest" in block[1] and "recipes/" in block[0]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert block[1] in ci


def _python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_is_short_and_has_three_examples():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
    assert len(_python_blocks()) == 3


def test_readme_examples_run(tmp_path, monkeypatch):
    """Each example runs as written, with its budgets cut to a few iterations and samples."""
    diffusers = pytest.importorskip("diffusers")
    from posterior.priors.ddpm_training import small_unet

    torch.manual_seed(0)
    folder = tmp_path / "my_ddpm"  # the diffusers checkpoint the diffusion example loads
    small_unet(8, widths=(8, 8)).save_pretrained(folder / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    monkeypatch.chdir(tmp_path)
    for code in _python_blocks():
        quick = re.sub(r"iterations=[\d_]+", "iterations=2", code)
        quick = re.sub(r"log_z\(([^)]*?)(\d{3,})\)", r"log_z(\g<1>16)", quick)
        quick = re.sub(r"num_samples=\d{3,}", "num_samples=16", quick)
        quick = quick.replace("torch.rand(256, 784)", "torch.rand(8, 784)")
        namespace: dict = {}
        exec(compile(quick, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
        assert "model" in namespace
