import pytest
import torch

from posterior.constraints import GaussianTarget
from posterior.constraints import GaussianMixture25
from posterior.samplers.factory import make_sampler
from posterior.objectives.factory import make_objective
from posterior.training.replay import ReplayConfig, ReplayTraining
from posterior.paths.path_target import BoltzmannPath
from posterior.training.config import TrainConfig
from posterior.training.engine import Trainer


def _trainer(iterations=8, checkpoint=None, local_search=True, objective="tb", train_grid="uniform",
             separate_replay_log_z=False, log_z_init="batch"):
    torch.manual_seed(0)
    sampler = make_sampler(2, 1.0)
    target = GaussianTarget(mean=torch.tensor([1.0, 0.0]), std=torch.tensor([0.5, 1.0]))
    path = BoltzmannPath(target, sampler.reference)
    replay = ReplayTraining(ReplayConfig(capacity=500, local_search=local_search, ls_every=4, ls_steps=20,
                                         ls_burn_in=10, ls_step_size=0.05), dim=2)
    config = TrainConfig(iterations=iterations, batch_size=32, steps=10, explore=0.0 if objective == "pis" else 0.5,
                         checkpoint_every=4, seed=3, train_grid=train_grid, log_z_init=log_z_init)
    objective = make_objective(objective, path, separate_replay_log_z=separate_replay_log_z)
    return Trainer(sampler, objective, config, path=path, checkpoint_path=checkpoint, replay=replay)


def test_updates_alternate_and_forward_states_fill_the_buffer():
    trainer = _trainer(iterations=6, local_search=False)
    trainer.run(progress=False)
    assert len(trainer.replay.buffer) == 3 * 32  # iterations 0, 2, 4 are forward
    assert trainer.replay.ls_buffer is None
    stored = trainer.replay.buffer
    torch.testing.assert_close(stored.log_rewards[:96], trainer.path.log_reward(stored.states[:96]))


def test_separate_replay_log_z_trains_on_backward_batches_only():
    trainer = _trainer(iterations=4, local_search=False, separate_replay_log_z=True, log_z_init="zero")
    main, replayed = trainer.objective.log_z_param, trainer.objective.replay_log_z_param
    for iteration in range(4):
        before = main.item(), replayed.item()
        trainer.step()
        trainer.iteration += 1
        moved = main.item() != before[0], replayed.item() != before[1]
        assert moved == ((False, True) if iteration % 2 else (True, False)), iteration


def test_separate_replay_log_z_is_for_tb_only():
    with pytest.raises(ValueError, match="separate_replay_log_z"):
        _trainer(objective="vargrad", separate_replay_log_z=True)


def test_local_search_feeds_its_buffer_with_states_of_the_target():
    trainer = _trainer(iterations=10)
    trainer.run(progress=False)
    stats = trainer.replay.stats()
    assert stats["local_search_rounds"] == 3  # iterations 1, 5, 9
    assert stats["local_search_evaluations"] == 3 * 32 * 21
    assert stats["ls_buffer_size"] > 0 and stats["local_search_seconds"] > 0
    assert stats["local_search_step_size"] != 0.05  # adapted and carried over
    # every energy evaluation is counted through the path: forward terminal states, backward
    # terminal states and local search (log R and gradient at every MALA point)
    assert trainer.path.evaluations["grad"] == stats["local_search_evaluations"]
    assert trainer.path.evaluations["log_reward"] == 10 * 32 + stats["local_search_evaluations"]
    ls = trainer.replay.ls_buffer
    n = len(ls)
    torch.testing.assert_close(ls.log_rewards[:n], trainer.path.log_reward(ls.states[:n]))


@pytest.mark.parametrize("train_grid", ["uniform", "random"])
def test_resume_with_buffers_continues_the_same_run(tmp_path, train_grid):
    full = _trainer(iterations=10, train_grid=train_grid)
    full.run(progress=False)
    ckpt = tmp_path / "ckpt.pt"
    first = _trainer(iterations=10, checkpoint=ckpt, train_grid=train_grid)
    first.config.iterations = 4
    first.run(progress=False)
    resumed = _trainer(iterations=10, checkpoint=ckpt, train_grid=train_grid)
    resumed.load(ckpt)
    resumed.run(progress=False)
    for a, b in zip(full.sampler.state_dict().values(), resumed.sampler.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.history.loss == full.history.loss
    assert resumed.path.evaluations == full.path.evaluations
    n = len(full.replay.ls_buffer)
    torch.testing.assert_close(resumed.replay.ls_buffer.states[:n], full.replay.ls_buffer.states[:n])


def test_random_number_of_steps_varies_the_grid():
    trainer = _trainer(iterations=1, local_search=False, train_grid="random")
    trainer.config.steps_max = 14
    sizes = {trainer.model.train_times(trainer.generator).numel() - 1 for _ in range(40)}
    assert sizes <= set(range(10, 15)) and len(sizes) >= 4
    with pytest.raises(ValueError, match="steps_max"):
        TrainConfig(steps=10, steps_max=5, train_grid="random")
    with pytest.raises(ValueError, match="steps_max"):
        TrainConfig(steps=10, steps_max=20)


def test_simulation_based_objective_refuses_a_buffer():
    with pytest.raises(ValueError, match="PathIntegral trains on the sampler's own reparameterized paths"):
        _trainer(objective="pis")


def test_local_search_moves_buffer_states_toward_the_modes():
    """MALA from a poor buffer (states between 25GMM modes) ends near the modes."""
    target = GaussianMixture25()
    sampler = make_sampler(2, 5.0)
    path = BoltzmannPath(target, sampler.reference)
    replay = ReplayTraining(ReplayConfig(capacity=50_000, local_search=True, ls_steps=200, ls_burn_in=100), dim=2)
    g = torch.Generator().manual_seed(0)
    between = (torch.randint(-2, 2, (300, 2), generator=g) * 5.0 + 2.5)  # midpoints between modes
    replay.buffer.add(between, path.log_reward(between))
    replay.local_search(lambda conditions: path, 300, g)
    kept = replay.ls_buffer.states[: len(replay.ls_buffer)]
    nearest = torch.cdist(kept, target.means).min(-1).values
    assert float(nearest.median()) < 1.0  # modes have std 0.55; starting distance was 3.5
    assert abs(replay.ls_last_acceptance - 0.574) < 0.15
