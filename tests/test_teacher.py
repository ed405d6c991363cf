import math

import pytest
import torch

from posterior.constraints import GaussianTarget
from posterior.samplers.factory import make_sampler
from posterior.objectives.factory import make_objective
from posterior.core.grids import power_grid
from posterior.training.replay import ReplayConfig, ReplayTraining
from posterior.paths.path_target import BoltzmannPath
from posterior.training.teacher import StudentResidualReward, make_teacher
from posterior.training.config import TrainConfig
from posterior.training.engine import Trainer


def _student(log_z=0.3):
    sampler = make_sampler(1, 1.0).double()
    target = GaussianTarget(mean=torch.tensor([2.0], dtype=torch.float64), std=torch.tensor([0.5], dtype=torch.float64))
    path = BoltzmannPath(target, sampler.reference)
    objective = make_objective("tb", path).double()
    with torch.no_grad():
        objective.log_z_param.fill_(log_z)
    return sampler, objective, path, target


def test_teacher_reward_is_largest_where_the_student_residual_is_and_favours_under_sampling():
    """An untrained student is the reference: log p_F - log p_B = log N(x; 0, 1) on every
    trajectory, so delta(x) = log Z + log N(x; 0, 1) - log R(x) exactly."""
    sampler, objective, path, target = _student()
    reward = StudentResidualReward(sampler, objective, path, steps=10, under_weight=19.0, eps=1e-3,
                                   target_power=0.0)
    x = torch.linspace(-3, 5, 41, dtype=torch.float64)[:, None]
    log_normal = -0.5 * x[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
    expected_delta = objective.log_z() + log_normal - target.log_reward(x)
    torch.testing.assert_close(reward.residual(x), expected_delta, rtol=1e-9, atol=1e-9)
    delta = expected_delta
    expected = torch.log(1e-3 + (1 + 19.0 * (delta < 0).double()) * delta ** 2)
    torch.testing.assert_close(reward.log_reward(x), expected)
    order = torch.argsort(reward.log_reward(x), descending=True)
    weighted = (1 + 19.0 * (delta < 0).double()) * delta ** 2
    assert int(order[0]) == int(torch.argmax(weighted))
    # same |delta|, different sign: the under-sampled state (delta < 0) gets 20x the reward
    under, over = int(torch.argmin((delta + 1.0).abs())), int(torch.argmin((delta - 1.0).abs()))
    ratio = (reward.log_reward(x[[under]]) - reward.log_reward(x[[over]])).exp()
    assert 10 < float(ratio) * float(delta[over] ** 2 / delta[under] ** 2) < 21


def test_teacher_feeds_the_student_buffer_and_resumes_exactly(tmp_path):
    def build(checkpoint=None, iterations=8):
        torch.manual_seed(0)
        sampler = make_sampler(2, 1.0)
        target = GaussianTarget(mean=torch.tensor([1.0, 0.0]), std=torch.tensor([0.5, 1.0]))
        path = BoltzmannPath(target, sampler.reference)
        objective = make_objective("tb", path)
        config = TrainConfig(iterations=iterations, batch_size=16, steps=8, checkpoint_every=4, seed=1)
        replay = ReplayTraining(ReplayConfig(capacity=1000), dim=2)
        trainer = Trainer(sampler, objective, config, path=path, checkpoint_path=checkpoint, replay=replay)
        teacher_sampler = make_sampler(2, 1.0)
        replay.teacher = make_teacher(sampler, objective, path, teacher_sampler, make_objective("tb", None, dim=2),
                                      TrainConfig(iterations=iterations, batch_size=16, steps=8, seed=2))
        return trainer

    full = build()
    full.run(progress=False)
    assert len(full.replay.buffer) == 4 * 16 + 4 * 16  # forward batches and teacher batches
    assert full.replay.teacher.trainer.iteration == 4
    ckpt = tmp_path / "ckpt.pt"
    first = build(ckpt)
    first.config.iterations = 4
    first.run(progress=False)
    resumed = build(ckpt)
    resumed.load(ckpt)
    resumed.run(progress=False)
    for a, b in zip(full.sampler.state_dict().values(), resumed.sampler.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    teacher_a = full.replay.teacher.trainer.sampler.state_dict().values()
    teacher_b = resumed.replay.teacher.trainer.sampler.state_dict().values()
    for a, b in zip(teacher_a, teacher_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_teacher_target_power_multiplies_the_reward_by_a_power_of_the_target():
    """log R_T with alpha = log R_T with alpha = 0 + alpha * log R(x), the same residual draw;
    a zero target density is a zero teacher reward (no NaN from inf - inf)."""
    sampler, objective, path, target = _student()
    x = torch.linspace(-3, 5, 17, dtype=torch.float64)[:, None]
    plain = StudentResidualReward(sampler, objective, path, steps=10, seed=3, target_power=0.0).log_reward(x)
    powered = StudentResidualReward(sampler, objective, path, steps=10, seed=3, target_power=0.5).log_reward(x)
    torch.testing.assert_close(powered, plain + 0.5 * target.log_reward(x))
    # largest weight moves from the far tail (huge relative error) towards the target's mass
    assert abs(float(x[int(torch.argmax(powered)), 0]) - 2.0) < abs(float(x[int(torch.argmax(plain)), 0]) - 2.0)

    class Truncated(GaussianTarget):
        def log_reward(self, x):
            return torch.where(x[:, 0] > 4.0, torch.full_like(x[:, 0], float("-inf")), super().log_reward(x))

    truncated = Truncated(mean=torch.tensor([2.0], dtype=torch.float64), std=torch.tensor([0.5], dtype=torch.float64))
    cut_path = BoltzmannPath(truncated, sampler.reference)
    values = StudentResidualReward(sampler, objective, cut_path, steps=10, target_power=1.0).log_reward(x)
    assert not torch.isnan(values).any()
    assert torch.isneginf(values[x[:, 0] > 4.0]).all() and torch.isfinite(values[x[:, 0] <= 4.0]).all()
    with pytest.raises(ValueError, match="target_power"):
        StudentResidualReward(sampler, objective, path, target_power=-1.0)


def test_teacher_measures_the_residual_on_the_students_power_grid():
    sampler, objective, path, target = _student()
    reward = StudentResidualReward(sampler, objective, path, steps=10, grid_power=2.0, target_power=0.0)
    torch.testing.assert_close(reward.times, power_grid(10, 2.0, dtype=torch.float64))
    x = torch.linspace(-3, 5, 9, dtype=torch.float64)[:, None]
    log_normal = -0.5 * x[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)  # the reference's identity holds on any grid
    torch.testing.assert_close(reward.residual(x), objective.log_z() + log_normal - target.log_reward(x),
                               rtol=1e-9, atol=1e-9)
