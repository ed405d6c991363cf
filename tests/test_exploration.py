"""Exploration noise: its size in both conventions, and log p_F always under the un-noised policy."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from posterior.constraints import GaussianTarget
from posterior.training.exploration import PUBLIC_CODE_EXPLORE_HORIZON, LinearDecay, explore_from_step_std
from posterior.objectives.factory import make_objective
from posterior.core.grids import uniform_grid
from posterior.samplers.networks import PISPolicy
from posterior.paths.path_target import BoltzmannPath
from posterior.samplers.sampler import DiffusionSampler
from posterior.training.config import TrainConfig
from posterior.training.engine import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _zero_drift_sampler(sigma2: float, dim: int = 2):
    sampler = DiffusionSampler(PISPolicy(dim), sigma2=sigma2).double()  # zero-initialized: drift 0
    target = GaussianTarget(mean=torch.zeros(dim, dtype=torch.float64), std=torch.ones(dim, dtype=torch.float64))
    return sampler, BoltzmannPath(target, sampler.reference)


@pytest.mark.parametrize("steps,step_std", [(10, 0.2), (25, 0.1)])
def test_step_std_convention_adds_that_variance_to_every_step(steps, step_std):
    sigma2 = 1.0
    sampler, path = _zero_drift_sampler(sigma2)
    explore = explore_from_step_std(step_std, steps)
    traj = sampler.forward_trajectories(20_000, uniform_grid(steps, dtype=torch.float64), path, explore=explore,
                                        generator=torch.Generator().manual_seed(0), track_gradients=False)
    increments = traj.states[1:] - traj.states[:-1]  # (T, B, d), mean 0
    per_step = increments.pow(2).mean(dim=(1, 2))
    expected = sigma2 / steps + step_std ** 2
    # 400k increments per step set: the relative standard error of each variance is about 0.7%
    torch.testing.assert_close(per_step.mean(), torch.tensor(expected, dtype=torch.float64), rtol=0.01, atol=0)
    assert float((per_step / expected - 1).abs().max()) < 0.04
    # log p_F is the density under the un-noised policy N(0, sigma2 / T) per step
    expected_log_pf = (-0.5 * increments.pow(2).sum(-1) * steps / sigma2
                       - math.log(2 * math.pi * sigma2 / steps))  # d = 2
    torch.testing.assert_close(traj.log_pf_steps, expected_log_pf, rtol=1e-10, atol=1e-10)


def test_step_std_conversion_and_its_errors():
    assert explore_from_step_std(0.2, 100) == pytest.approx(4.0)
    assert explore_from_step_std(0.0, 100) == 0.0
    with pytest.raises(ValueError, match="step std must be >= 0"):
        explore_from_step_std(-0.1, 100)
    with pytest.raises(ValueError, match="steps must be positive"):
        explore_from_step_std(0.2, 0)
    schedule = LinearDecay(4.0, PUBLIC_CODE_EXPLORE_HORIZON)
    assert schedule(0) == 4.0 and schedule(2500) == pytest.approx(2.0) and schedule(5000) == 0.0


def test_std_decay_is_the_public_codes_schedule():
    """The public code's std is ε (1 - i / 5000); its per-step variance ε² (1 - i / 5000)² on T steps."""
    step_std, steps = 0.2, 100
    schedule = LinearDecay(explore_from_step_std(step_std, steps), PUBLIC_CODE_EXPLORE_HORIZON, linear_in="std")
    for iteration in (0, 1000, 2500, 4999, 5000, 7000):
        public_std = step_std * max(0.0, 1.0 - iteration / PUBLIC_CODE_EXPLORE_HORIZON)
        assert schedule(iteration) / steps == pytest.approx(public_std ** 2, abs=1e-15)
    assert schedule(2500) == pytest.approx(LinearDecay(4.0, PUBLIC_CODE_EXPLORE_HORIZON)(2500) / 2)
    with pytest.raises(ValueError, match="explore decay must be one of"):
        LinearDecay(4.0, 10, linear_in="log")


@pytest.mark.parametrize("decay,expected", [("variance", 2.0), ("std", 1.0)])
def test_trainer_samples_with_the_configured_decay(monkeypatch, decay, expected):
    sampler, path = _zero_drift_sampler(1.0)
    objective = make_objective("tb", path).double()
    config = TrainConfig(iterations=20, batch_size=8, steps=5, explore=4.0, explore_horizon=10,
                            explore_decay=decay, seed=0)
    trainer = Trainer(sampler, objective, config, path=path)
    used = []
    sample = trainer.model.forward
    monkeypatch.setattr(trainer.model, "forward", lambda explore, *a, **k: used.append(explore) or sample(explore, *a, **k))
    trainer.iteration = 5
    trainer.step()
    assert used == [pytest.approx(expected)]
    with pytest.raises(ValueError, match="explore_decay must be one of"):
        TrainConfig(explore_decay="linear")


def _boltzmann_recipe():
    spec = importlib.util.spec_from_file_location("boltzmann_recipe", ROOT / "recipes" / "boltzmann.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_explore_step_std_flag():
    recipe = _boltzmann_recipe()
    args = recipe.parse_args(["--explore-step-std", "0.2", "--steps", "50", "--out", "unused"])
    assert args.explore == pytest.approx(0.2 ** 2 * 50) and args.explore_horizon == PUBLIC_CODE_EXPLORE_HORIZON
    args = recipe.parse_args(["--explore-step-std", "0.1", "--explore-horizon", "25000", "--out", "unused"])
    assert args.explore == pytest.approx(1.0) and args.explore_horizon == 25_000
    args = recipe.parse_args(["--explore", "0.2", "--out", "unused"])
    assert args.explore == 0.2 and args.explore_horizon is None and args.explore_decay == "variance"
    args = recipe.parse_args(["--explore-step-std", "0.2", "--explore-decay", "std", "--out", "unused"])
    assert args.explore_decay == "std" and args.explore_horizon == PUBLIC_CODE_EXPLORE_HORIZON
    with pytest.raises(SystemExit):
        recipe.parse_args(["--explore", "0.2", "--explore-step-std", "0.2", "--out", "unused"])
