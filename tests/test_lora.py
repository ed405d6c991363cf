"""LoRA posteriors: start exactly at the prior, train only the adapters, exact per-step gradients, resume."""

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

from posterior.diffusion.diffusion_posterior import DiffusionPosterior, DiffusionPriorPath, accumulate_gradients_per_step  # noqa: E402
from posterior.diffusion.lora import adaptable_layer_names, lora_denoiser, trainable_parameter_count  # noqa: E402
from posterior.objectives import RelativeTrajectoryBalance  # noqa: E402
from posterior.training.config import TrainConfig  # noqa: E402
from posterior.training.engine import Trainer  # noqa: E402
from posterior.training.replay import ReplayConfig  # noqa: E402
from posterior.priors.ddpm_training import small_unet  # noqa: E402
from posterior.priors.diffusion import DiffusionPrior  # noqa: E402


class TwoLayerDenoiser(nn.Module):
    """(x, t) -> output with two Linear layers and a time input (float64)."""

    def __init__(self, dim: int = 3, hidden: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.inp = nn.Linear(dim + 1, hidden).double()
        self.out = nn.Linear(hidden, dim).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))

    def forward(self, x, t):
        return self.out(torch.tanh(self.inp(torch.cat([x, t.to(x.dtype)[:, None] / 1000.0], dim=-1))))


def _prior(steps: int = 6) -> DiffusionPrior:
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    return DiffusionPrior(TwoLayerDenoiser(), scheduler, steps, (3,)).double()


def _perturb_adapters(model: nn.Module, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_adapted_unet_starts_at_the_prior_and_trains_only_its_adapters():
    torch.manual_seed(0)
    unet = small_unet(8, widths=(8, 16))
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    adapted = lora_denoiser(unet, rank=2)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 400, 999])
    torch.testing.assert_close(adapted(x, t).sample, unet(x, t).sample, rtol=0, atol=0)
    names = adaptable_layer_names(unet)
    assert "conv_in" in names and "time_embedding.linear_1" in names
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * len(names)  # A and B of every adapted layer
    assert 0 < trainable_parameter_count(adapted) < trainable_parameter_count(unet) / 4
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())  # the prior is untouched
    assert all(p.requires_grad for p in unet.parameters())


def test_linear_adapter_sizes_and_scaling():
    prior = _prior()
    adapted = lora_denoiser(prior.denoiser, rank=3, alpha=6.0)
    # Linear in -> out gets A (r, in) and B (out, r)
    assert trainable_parameter_count(adapted) == 3 * (4 + 16) + 3 * (16 + 3)
    _perturb_adapters(adapted)
    x, t = torch.randn(5, 3, dtype=torch.float64), torch.tensor([1, 2, 3, 4, 5])
    a, b = adapted.inp.lora_A["default"].weight, adapted.inp.lora_B["default"].weight
    inp = torch.cat([x, t.double()[:, None] / 1000.0], dim=-1)
    expected_hidden = prior.denoiser.inp(inp) + (6.0 / 3) * inp @ a.t() @ b.t()
    torch.testing.assert_close(adapted.inp(inp), expected_hidden, rtol=1e-12, atol=1e-12)


def test_rtb_residual_is_log_z_at_the_start_of_a_lora_posterior():
    prior = _prior(steps=8)
    posterior = DiffusionPosterior(prior, lora_denoiser(prior.denoiser, rank=2))
    path = DiffusionPriorPath(prior, lambda x: x.new_zeros(x.shape[0]))
    objective = RelativeTrajectoryBalance(log_z_init=0.3).double()
    traj = posterior.trajectories(32, path, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    residual = objective.log_z_of(traj) + objective.residual(traj)
    torch.testing.assert_close(residual, objective.log_z_of(traj).expand(32), rtol=0, atol=1e-10)
    assert abs(float(residual[0].detach()) - 0.3) < 1e-6


def test_per_step_gradient_accumulation_is_exact_for_adapters():
    prior = _prior(steps=8)
    posterior = DiffusionPosterior(prior, lora_denoiser(prior.denoiser, rank=2), frozen_final_steps=1)
    _perturb_adapters(posterior.model)
    path = DiffusionPriorPath(prior, lambda x: -(x - 1).square().sum(-1), beta=2.0)
    states = prior.sample(16, generator=torch.Generator().manual_seed(3), model=posterior.model,
                          model_steps=posterior.trained_steps, dtype=torch.float64)
    full_objective, step_objective = RelativeTrajectoryBalance().double(), RelativeTrajectoryBalance().double()
    full_objective.loss(posterior.score(states, path)).backward()
    adapters = [p for p in posterior.model.parameters() if p.requires_grad]
    expected = [p.grad.clone() for p in adapters]
    assert all(p.grad is None for p in posterior.model.parameters() if not p.requires_grad)
    posterior.model.zero_grad()
    accumulate_gradients_per_step(posterior, posterior.score(states, path, track_gradients=False), step_objective)
    assert any(float(e.abs().max()) > 1e-6 for e in expected)
    for e, p in zip(expected, adapters):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)


def _lora_trainer(iterations, checkpoint_path=None):
    prior = _prior()
    torch.manual_seed(0)
    posterior = DiffusionPosterior(prior, lora_denoiser(prior.denoiser, rank=2)).double()
    path = DiffusionPriorPath(prior, lambda x: -(x - 1).square().sum(-1))
    config = TrainConfig(iterations=iterations, batch_size=8, lr=1e-2, explore=0.3, seed=4)
    return Trainer(posterior, RelativeTrajectoryBalance(hinge=0.01).double(), config, path=path,
                   replay=ReplayConfig(capacity=100_000), dtype=torch.float64, checkpoint_path=checkpoint_path)


def test_rtb_trains_the_adapters_only_and_resumes_the_same_run(tmp_path):
    straight = _lora_trainer(6)
    frozen_before = {n: p.clone() for n, p in straight.sampler.model.named_parameters() if not p.requires_grad}
    adapters_before = {n: p.clone() for n, p in straight.sampler.model.named_parameters() if p.requires_grad}
    straight.run()
    named = dict(straight.sampler.model.named_parameters())
    assert all(torch.equal(named[n], p) for n, p in frozen_before.items())
    assert any(not torch.equal(named[n], p) for n, p in adapters_before.items())
    ckpt = tmp_path / "rtb.pt"
    first = _lora_trainer(6, ckpt)
    first.config.iterations = 3
    first.run()
    resumed = _lora_trainer(6, ckpt)
    resumed.load(ckpt)
    resumed.run()
    for a, b in zip(straight.sampler.model.parameters(), resumed.sampler.model.parameters()):
        assert torch.equal(a, b)
    assert straight.history.loss == resumed.history.loss


@pytest.mark.parametrize("kwargs,match", [({"rank": 0}, "rank"), ({"rank": 2.5}, "rank"), ({"alpha": 0.0}, "alpha"),
                                          ({"dropout": 1.0}, "dropout"), ({"target_modules": ["nope"]}, "nope"),
                                          ({"target_modules": []}, "at least one")])
def test_bad_lora_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lora_denoiser(TwoLayerDenoiser(), **{"rank": 2, **kwargs})
