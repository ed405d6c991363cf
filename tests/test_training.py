import math
from dataclasses import replace

import pytest
import torch

from posterior.constraints import GaussianTarget
from posterior.evaluation.evaluation import evaluate
from posterior.samplers.factory import make_sampler
from posterior.objectives.factory import make_objective
from posterior.objectives.log_partition import ConditionalLogZ
from posterior.paths.path_target import BoltzmannPath
from posterior.training.config import TrainConfig
from posterior.training.engine import Trainer


def _trainer(objective="tb", iterations=8, checkpoint=None, target=None, langevin=False, **settings):
    torch.manual_seed(0)
    sampler = make_sampler(2, 1.0, langevin=langevin)
    target = target or GaussianTarget(mean=torch.tensor([1.0, 0.0]), std=torch.tensor([0.5, 1.0]))
    path = BoltzmannPath(target, sampler.reference)
    obj = make_objective(objective, path)
    explore = 0.0 if objective == "pis" else 0.5  # a simulation-based objective takes no exploration
    config = TrainConfig(**{**dict(iterations=iterations, batch_size=32, steps=10, explore=explore,
                                   checkpoint_every=4, seed=3), **settings})
    return Trainer(sampler, obj, config, path=path, checkpoint_path=checkpoint)


@pytest.mark.parametrize("objective", ["tb", "subtb", "pis"])
def test_resume_continues_the_same_run(tmp_path, objective):
    full = _trainer(objective)
    full.run(progress=False)
    ckpt = tmp_path / "ckpt.pt"
    first = _trainer(objective, checkpoint=ckpt)
    first.config.iterations = 4
    first.run(progress=False)
    assert ckpt.exists() and not list(tmp_path.glob("*.tmp"))
    resumed = _trainer(objective, checkpoint=ckpt)
    resumed.load(ckpt)
    assert resumed.iteration == 4
    resumed.run(progress=False)
    for (name, a), b in zip(full.sampler.state_dict().items(), resumed.sampler.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert resumed.history.loss == full.history.loss


def test_policy_learning_rate_decays_but_log_z_rate_stays(tmp_path):
    from lr_checks import assert_rates_follow_decay
    from posterior.training.lr_schedule import CosineDecay

    decay = CosineDecay(horizon=4, final=0.25)
    trainer = _trainer("tb", iterations=6, lr_decay_horizon=4, lr_decay_final=0.25)
    assert_rates_follow_decay(trainer, 6, 1e-3, decay, 0.1)  # TB's default log Z rate
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    with pytest.raises(ValueError, match="TrainConfig.lr_decay_horizon must be an integer >= 0"):
        TrainConfig(lr_decay_horizon=-1)
    with pytest.raises(ValueError, match="final lr multiplier"):
        TrainConfig(lr_decay_final=2.0)


def test_weight_average_is_the_exponential_moving_average_of_every_step():
    decay = 0.8
    trainer = _trainer("tb", ema_decay=decay)
    before = [p.detach().clone() for p in trainer.sampler.parameters()]
    with trainer.averaged_weights():  # nothing to average before the first step
        assert all(torch.equal(a, b) for a, b in zip(trainer.sampler.parameters(), before))
    expected = None
    for _ in range(4):
        trainer.step()
        trainer.iteration += 1
        weights = [p.detach().clone() for p in trainer.sampler.parameters()]
        expected = weights if expected is None else [decay * e + (1 - decay) * w for e, w in zip(expected, weights)]
    with trainer.averaged_weights():
        for e, a in zip(expected, trainer.sampler.parameters()):
            torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)
    # the trained weights are back after the block, and differ from the average
    assert all(torch.equal(a, w) for a, w in zip(trainer.sampler.parameters(), weights))
    assert any(not torch.allclose(e, w) for e, w in zip(expected, weights))
    assert _trainer("tb").ema is None
    other = _trainer("tb", ema_decay=0.9).ema
    with pytest.raises(ValueError, match="weight average of decay 0.8 .* cannot be loaded into one of decay 0.9"):
        other.load_state_dict(trainer.ema.state_dict())
    state = trainer.ema.state_dict()
    state["averaged"][0] = state["averaged"][0].flatten()[:1]  # broadcastable, but not the parameter's shape
    with pytest.raises(ValueError, match=r"weight average tensor 0: saved shape \(1,\), expected"):
        _trainer("tb", ema_decay=decay).ema.load_state_dict(state)
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        TrainConfig(ema_decay=1.0)


def test_resume_restores_the_weight_average(tmp_path):
    full = _trainer("vargrad", ema_decay=0.7)
    full.run(progress=False)
    ckpt = tmp_path / "ckpt.pt"
    first = _trainer("vargrad", checkpoint=ckpt, ema_decay=0.7)
    first.config.iterations = 4
    first.run(progress=False)
    resumed = _trainer("vargrad", checkpoint=ckpt, ema_decay=0.7)
    resumed.load(ckpt)
    resumed.run(progress=False)
    for a, b in zip(full.ema.averaged, resumed.ema.averaged):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert full.ema.count == resumed.ema.count == 8
    with pytest.raises(ValueError, match=r"ema_decay=0.7 \(now 0.0\)"):
        _trainer("vargrad", checkpoint=ckpt).load(ckpt)


def test_resume_refuses_changed_settings_but_not_a_longer_budget(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    _trainer("tb", iterations=4, checkpoint=ckpt, lr_decay_horizon=8).run(progress=False)
    _trainer("tb", iterations=12, checkpoint=ckpt, lr_decay_horizon=8, checkpoint_every=2).load(ckpt)
    with pytest.raises(ValueError, match=r"lr_decay_horizon=8 \(now 6\)"):
        _trainer("tb", checkpoint=ckpt, lr_decay_horizon=6).load(ckpt)
    with pytest.raises(ValueError, match=r"explore=0.5 \(now 0.2\)"):
        _trainer("tb", checkpoint=ckpt, lr_decay_horizon=8, explore=0.2).load(ckpt)
    # a checkpoint written before a setting existed resumes with that setting at its default
    from posterior.training import checkpoint

    state = checkpoint.load(ckpt)
    del state["config"]["lr_decay_horizon"], state["config"]["lr_decay_final"]
    checkpoint.save_atomic(state, ckpt)
    assert _trainer("tb", checkpoint=ckpt).load(ckpt) is None
    with pytest.raises(ValueError, match=r"lr_decay_horizon=0 \(now 8\)"):
        _trainer("tb", checkpoint=ckpt, lr_decay_horizon=8).load(ckpt)


class HalfPlane(torch.nn.Module):
    """N(0, I) restricted to x_0 > 0: log-reward -inf on half the space (a legal zero density)."""

    dim = 2

    def log_reward(self, x):
        value = -0.5 * (x ** 2).sum(-1)
        return torch.where(x[:, 0] > 0, value, torch.full_like(value, -math.inf))

    def grad_log_reward(self, x):
        return -x


def test_minus_inf_reward_is_legal():
    trainer = _trainer(target=HalfPlane(), iterations=5)
    trainer.run(progress=False)
    result = evaluate(trainer.sampler, trainer.path, num_samples=200, steps=10, log_z=math.log(math.pi))
    assert 0.2 < result["zero_density_share"] < 0.8
    assert result["log_z_elbo"] == -math.inf
    assert math.isfinite(result["log_z_rw"])


class NanTarget(HalfPlane):
    def log_reward(self, x):
        value = -0.5 * (x ** 2).sum(-1)
        value[3] = float("nan")
        return value


class BadShapeTarget(HalfPlane):
    def log_reward(self, x):
        return -0.5 * (x ** 2).sum(-1, keepdim=True)


class NanScoreTarget(HalfPlane):
    def log_reward(self, x):
        return -0.5 * (x ** 2).sum(-1)

    def grad_log_reward(self, x):
        return torch.full_like(x, float("nan"))


def test_bad_user_models_give_clear_errors():
    with pytest.raises(ValueError, match=r"target.log_reward returned NaN for 1 of 32 inputs"):
        _trainer(target=NanTarget()).step()
    with pytest.raises(ValueError, match=r"target.log_reward\(x\) must have shape \(32,\), got \(32, 1\)"):
        _trainer(target=BadShapeTarget()).step()
    with pytest.raises(ValueError, match="target.grad_log_reward returned NaN"):
        _trainer(target=NanScoreTarget(), langevin=True).step()
    trainer = _trainer()
    with pytest.raises(ValueError, match=r"samples must have shape \(B, 2\)"):
        trainer.sampler.backward_trajectories(torch.zeros(4, 3), trainer.model.times, trainer.path)
    with pytest.raises(ValueError, match="TrainConfig.explore must be a finite number >= 0"):
        TrainConfig(explore=-1.0)
    with pytest.raises(ValueError, match="TrainConfig.iterations must be an integer >= 1"):
        TrainConfig(iterations=0)


def test_non_finite_gradient_names_the_parameter():
    trainer = _trainer()
    weight = trainer.sampler.policy.state_embed.weight
    weight.register_hook(lambda g: torch.full_like(g, math.inf))
    with pytest.raises(FloatingPointError, match="policy.state_embed.weight"):
        trainer.step()


@pytest.mark.parametrize("conditional", [False, True])
def test_log_variance_rows_take_scaled_steps(conditional):
    """With ``log_var_lr_scale`` = s, a step moves the log-variance rows of the output layer by
    exactly s times the step they take at s = 1 from the same state (Adam's update is elementwise),
    and leaves every other parameter's step unchanged."""
    target = GaussianTarget(mean=torch.tensor([1.0, 0.0]), std=torch.tensor([0.3, 1.0]))

    def one_step(scale):
        torch.manual_seed(0)
        config = TrainConfig(iterations=3, batch_size=16, steps=8, log_var_lr_scale=scale, seed=1)
        if conditional:
            from posterior.samplers.conditional_sampler import build_conditional_sampler
            from posterior.objectives import VarGrad

            class Shifted:
                dim = 2

                def log_reward(self, x, y):
                    return target.log_reward(x - y)

            model = build_conditional_sampler(dim=2, reward=Shifted(), sigma2=1.0, cond_shape=(2,), encoder="mlp",
                                              learn_variance=True)
            trainer = Trainer(model, VarGrad(group_size=4), replace(config, samples_per_condition=4),
                              conditions=torch.randn(10, 2))
        else:
            model = make_sampler(2, 1.0, learn_variance=True)
            path = BoltzmannPath(target, model.reference)
            trainer = Trainer(model, make_objective("tb", path), config, path=path)
        before = [p.detach().clone() for p in model.parameters()]
        trainer.step()
        return [p.detach() - b for p, b in zip(model.parameters(), before)]

    full, scaled = one_step(1.0), one_step(0.25)
    n = 0
    for d_full, d_scaled in zip(full, scaled):
        if d_full.shape in ((4, 64), (4,)):  # the output layer: drift rows 0..1, log-variance rows 2..3
            torch.testing.assert_close(d_scaled[:2], d_full[:2])
            torch.testing.assert_close(d_scaled[2:], 0.25 * d_full[2:])
            assert d_full[2:].abs().sum() > 0
            n += 1
        else:
            torch.testing.assert_close(d_scaled, d_full)
    assert n == 2
    with pytest.raises(ValueError, match="log_var_lr_scale"):
        TrainConfig(log_var_lr_scale=0.0)


def _shifted_gaussian_trainer(log_z_init: str, objective: str = "tb") -> Trainer:
    """A target with log Z = 20, far from TB's initial log Z of 0."""
    sampler = make_sampler(2, 1.0)
    target = GaussianTarget(mean=torch.tensor([1.0, 0.0]), std=torch.tensor([0.5, 1.0]), log_scale=20.0)
    path = BoltzmannPath(target, sampler.reference)
    config = TrainConfig(iterations=1, batch_size=64, steps=10, explore=0.5, log_z_init=log_z_init, seed=3)
    return Trainer(sampler, make_objective(objective, path), config, path=path)


def test_log_z_batch_init_zeroes_the_first_batch_mean_residual():
    """With log_z_init='batch', TB's log Z starts at mean(log Q - log p_F) of the first batch (one
    Adam step of lr_flow = 0.1 later it is within 0.1 of it); with 'zero' it stays near 0."""
    warm, cold = _shifted_gaussian_trainer("batch"), _shifted_gaussian_trainer("zero")
    _, warm_batch_elbo = warm.step()
    _, cold_batch_elbo = cold.step()
    assert warm_batch_elbo == pytest.approx(cold_batch_elbo)  # same seed: the same first batch
    assert abs(warm.objective.log_z() - warm_batch_elbo) <= 0.1 + 1e-6
    assert abs(cold.objective.log_z()) <= 0.1 + 1e-6 and abs(cold_batch_elbo) > 2.0


def test_tb_warm_start_sets_the_offset_that_zeroes_the_mean_residual():
    trainer = _shifted_gaussian_trainer("batch")
    traj = trainer.model.forward(0.5, trainer.generator, differentiable=False)
    objective = trainer.objective
    objective.warm_start_log_z(traj)
    residual = (objective.log_z_of(traj) + objective.residual(traj)).detach()
    assert abs(float(residual.mean())) < 1e-4
    # a conditional head: the shared offset absorbs the batch mean of head + residual
    head = ConditionalLogZ(hidden=4)
    torch.nn.init.normal_(head.net[-1].weight, generator=torch.Generator().manual_seed(0))
    conditional = type(objective)(conditional_log_z=head)
    traj.context = torch.randn(traj.log_reward.shape[0], 4, generator=torch.Generator().manual_seed(1))
    conditional.warm_start_log_z(traj, average=lambda v: v)
    residual = (conditional.log_z_of(traj) + conditional.residual(traj)).detach()
    assert abs(float(residual.mean())) < 1e-4 and float(residual.std()) > 0


def test_tb_warm_start_leaves_zero_density_trajectories_out():
    """A reward of -inf is a legal zero density: those trajectories must not pull log Z toward
    min_log_reward; a batch with none of positive density leaves log Z alone."""
    trainer = _shifted_gaussian_trainer("batch")
    traj = trainer.model.forward(0.5, trainer.generator, differentiable=False)
    objective = trainer.objective
    objective.warm_start_log_z(traj)
    clean = objective.log_z()
    cut = traj.log_reward.clone()
    cut[::3] = float("-inf")
    traj.log_reward = cut
    objective.warm_start_log_z(traj)
    kept = cut > objective.min_log_reward
    expected = float((traj.log_q_steps.sum(0) + cut - traj.log_pf)[kept].mean().detach())
    assert objective.log_z() == pytest.approx(expected, abs=1e-4)
    assert abs(objective.log_z() - clean) < 5.0  # the floored residuals (~1e4) would shift it by thousands
    traj.log_reward = torch.full_like(cut, float("-inf"))
    objective.warm_start_log_z(traj)
    assert objective.log_z() == pytest.approx(expected, abs=1e-4)


def test_log_z_batch_init_is_the_default_and_leaves_objectives_without_a_scalar_log_z_alone():
    assert TrainConfig().log_z_init == "batch"
    trainer = _shifted_gaussian_trainer("batch", objective="vargrad")
    trainer.step()  # VarGrad has no learned log Z: nothing to start
    assert trainer.objective.log_z() is None
    with pytest.raises(ValueError, match="TrainConfig.log_z_init must be one of"):
        TrainConfig(log_z_init="first")


def test_power_grid_is_the_training_grid_and_resume_checks_it(tmp_path):
    from posterior.core.grids import power_grid

    ckpt = tmp_path / "ckpt.pt"
    trainer = _trainer(iterations=2, checkpoint=ckpt, grid_power=2.0)
    torch.testing.assert_close(trainer.model.train_times(trainer.generator), power_grid(10, 2.0))
    trainer.run(progress=False)
    trainer.save(ckpt)
    traj = trainer.model.forward(0.0, trainer.generator, differentiable=False)
    assert traj.states.shape[0] == 11
    with pytest.raises(ValueError, match="grid_power"):
        _trainer(iterations=2, checkpoint=ckpt).load(ckpt)  # a uniform-grid run cannot resume it
    with pytest.raises(ValueError, match="grid_power must be a finite number > 0"):
        TrainConfig(grid_power=0.0)
    with pytest.raises(ValueError, match="needs train_grid='uniform'"):
        TrainConfig(grid_power=2.0, train_grid="random")
    result = evaluate(trainer.sampler, trainer.path, num_samples=64, steps=10, grid_power=2.0, log_z=0.0)
    assert math.isfinite(result["log_z_elbo"]) and result["log_z_elbo"] <= result["log_z_rw"]


def test_a_checkpoint_of_the_old_trainers_or_of_another_problem_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    trainer = _trainer(iterations=2, checkpoint=ckpt)
    trainer.run(progress=False)
    state = torch.load(ckpt, weights_only=True)
    old = {k: v for k, v in state.items() if k not in ("format", "problem", "extra", "__checksum__")}
    old["sampler"] = old.pop("model")  # the layout the pre-0.2 Trainer wrote
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="written by an earlier version of posterior .*start a new run"):
        _trainer(iterations=4).load(tmp_path / "old.pt")
    with pytest.raises(ValueError, match="belongs to another problem: objective='TrajectoryBalance' \\(now 'VarGrad'\\)"):
        _trainer("vargrad", iterations=4).load(ckpt)


def test_checkpoints_are_verified_and_never_run_code(tmp_path):
    """A flipped byte inside a weight is refused; a pickle payload never runs; stale temporary files go."""
    import pickle

    from posterior.training import checkpoint

    ckpt = tmp_path / "ckpt.pt"
    (tmp_path / "ckpt.pt.abc123.tmp").write_bytes(b"partial")  # left by a write that was killed
    trainer = _trainer(iterations=2, checkpoint=ckpt)
    trainer.run(progress=False)
    assert not list(tmp_path.glob("*.tmp"))
    state = torch.load(ckpt, weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name].clone()
    state["model"][name].view(-1)[0] += 1e-3  # a corrupted weight, the checksum left as written
    torch.save(state, tmp_path / "flipped.pt")
    with pytest.raises(ValueError, match="flipped.pt is corrupted"):
        _trainer(iterations=4).load(tmp_path / "flipped.pt")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "posterior.trainer/2", "x": Payload()}, protocol=2))
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        checkpoint.load(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        _trainer(iterations=4).load(tmp_path / "evil.pt")
    assert not marker.exists()
