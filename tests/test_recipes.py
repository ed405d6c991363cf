"""The recipes run end to end on a tiny budget and honour their output contract."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("extra", [["--target", "gmm25", "--objective", "tb", "--explore", "0.2"],
                                   ["--target", "manywell", "--dim", "4", "--objective", "fl-subtb", "--langevin"]])
def test_boltzmann_recipe_contract(tmp_path, extra):
    out = tmp_path / "run"
    _run(["recipes/boltzmann.py", *extra, "--iters", "6", "--batch", "16", "--steps", "8",
          "--eval-samples", "64", "--checkpoint-every", "3", "--no-progress", "--out", str(out)], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("log_z_elbo", "log_z_rw", "delta_log_z", "delta_log_z_rw", "w2", "ess", "iters", "seconds_per_iter"):
        assert key in metrics
    assert metrics["iters"] == 6 and metrics["w2"] is not None and metrics["delta_log_z"] >= 0
    assert (out / "samples.png").stat().st_size > 0 and (out / "curves.png").stat().st_size > 0
    # resume: a longer budget continues from the checkpoint
    _run(["recipes/boltzmann.py", *extra, "--iters", "9", "--batch", "16", "--steps", "8",
          "--eval-samples", "64", "--no-progress", "--resume", "--out", str(out)], tmp_path)
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["iters"] == 9
    history = json.loads((out / "history.json").read_text())
    assert history["iteration"] == list(range(9))


def test_speed_recipe_contract(tmp_path):
    out = tmp_path / "speed.json"
    _run(["recipes/speed.py", "--target", "manywell", "--dim", "8", "--objective", "tb", "--iters", "3",
          "--warmup", "1", "--batch", "32", "--steps", "10", "--json", str(out)], tmp_path)
    result = json.loads(out.read_text())
    assert result["seconds_per_iter"] > 0 and result["floor_seconds"] > 0
    assert result["floor_ratio"] == pytest.approx(result["seconds_per_iter"] / result["floor_seconds"])
