"""RTB and noise-space posteriors under an exact 2-D diffusion prior against the analytic posterior
mixture (recipes/mixture_posterior.py): the prior puts 0.45 of its mass on the three components far
from the observation, the posterior 0.04."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAR_COMPONENTS = (2, 3, 4)  # the ring components at x_1 < 0, far from the observation y = 0.8


def _mixture_run(tmp_path, method, *flags):
    pytest.importorskip("diffusers")
    out = tmp_path / method
    result = subprocess.run([sys.executable, "recipes/mixture_posterior.py", "--method", method, "--seed", "0",
                             "--no-progress", "--out", str(out), *flags],
                            cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_rtb_moves_the_prior_to_the_analytic_posterior_at_a_small_budget(tmp_path):
    metrics = _mixture_run(tmp_path, "rtb", "--iters", "250", "--steps", "20", "--eval-repeats", "1",
                           "--eval-samples", "1000")
    far = sum(metrics["weights"][k] for k in FAR_COMPONENTS)
    assert sum(metrics["exact_weights"][k] for k in FAR_COMPONENTS) < 0.05
    assert far < 0.12  # the prior has 0.45 there; a posterior that ignores the reward fails
    assert metrics["max_weight_error"] < 0.15
    assert metrics["w2"] < 3.5 * metrics["w2_floor"]


@pytest.mark.slow
@pytest.mark.parametrize("method,flags", [("rtb", ()), ("rtb", ("--objective", "kl")), ("noise", ())])
def test_posterior_matches_the_analytic_mixture_at_the_recipe_budget(tmp_path, method, flags):
    metrics = _mixture_run(tmp_path, method, *flags)
    assert metrics["w2_ratio"] < 1.5
    assert metrics["max_weight_error"] < 0.05
