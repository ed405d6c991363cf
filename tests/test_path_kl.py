import math

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")

from posterior.diffusion.diffusion_posterior import DiffusionPosterior, DiffusionPriorPath  # noqa: E402
from posterior.evaluation.path_kl import exact_posterior_path_kl, sampler_path_kl  # noqa: E402
from posterior.priors.diffusion import DiffusionPrior  # noqa: E402
from posterior.priors.gaussian_mixture import MixtureDenoiser, ring_mixture  # noqa: E402


def _mixture_prior(steps: int) -> DiffusionPrior:
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    mixture = ring_mixture(4, radius=1.0, std=0.15, weights=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    return DiffusionPrior(MixtureDenoiser(mixture, scheduler.alphas_cumprod), scheduler, steps, (2,))


def _log_r(x):
    return -0.5 * (x[:, 0] - 0.8) ** 2 / 0.3


class ShiftedEpsilon(nn.Module):
    """The prior's epsilon-prediction plus a constant: every step's mean moves by a constant."""

    def __init__(self, denoiser: nn.Module, shift: torch.Tensor) -> None:
        super().__init__()
        self.denoiser, self.shift = denoiser, shift

    def forward(self, x, t):
        return self.denoiser(x, t) + self.shift.to(x)


def test_the_prior_spends_no_path_kl():
    prior = _mixture_prior(8)
    path = DiffusionPriorPath(prior, _log_r)
    report = sampler_path_kl(DiffusionPosterior(prior), path, 200, chunk=64,
                             generator=torch.Generator().manual_seed(0))
    assert len(report.step_kl) == 8 and max(abs(v) for v in report.step_kl) < 1e-9
    assert report.elbo == pytest.approx(report.mean_log_reward, abs=1e-9)
    assert report.log_z > report.elbo and 0 < report.ess_share <= 1


def test_path_kl_of_a_constant_mean_shift_is_its_gaussian_kl():
    """Each step's KL is |delta_k|^2 / (2 var_k) for a constant mean shift delta_k; the ELBO is
    E[log r] minus their sum."""
    prior = _mixture_prior(6).double()
    shifted = ShiftedEpsilon(prior.denoiser, torch.tensor([0.3, -0.2], dtype=torch.float64))
    posterior = DiffusionPosterior(prior, shifted, frozen_final_steps=1)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = []
    for k in range(6):
        delta = prior.step_mean(x, k, shifted) - prior.step_mean(x, k)
        torch.testing.assert_close(delta, delta[:1].expand(3, 2))  # constant in x (no clipping)
        expected.append(0.0 if k == 5 else float(delta[0].square().sum()) / (2 * float(prior.step_var[k])))
    n = 4000
    report = sampler_path_kl(posterior, DiffusionPriorPath(prior, _log_r), n, chunk=1000,
                             generator=torch.Generator().manual_seed(2))
    for got, want in zip(report.step_kl, expected):
        # the log-ratio's noise term delta.eps / sigma has std sqrt(2 KL_k)
        assert abs(got - want) < 4 * math.sqrt(2 * want / n) + 1e-9
    assert report.step_kl[5] == 0.0 and sum(expected[:5]) > 0.05
    assert report.elbo == pytest.approx(report.mean_log_reward - report.path_kl, abs=1e-9)


def test_exact_posterior_path_kl_starts_at_log_z_and_sums_to_the_posterior_kl():
    prior = _mixture_prior(10).double()
    report = exact_posterior_path_kl(DiffusionPriorPath(prior, _log_r), pool=4000, paths=200, continuations=64,
                                     generator=torch.Generator().manual_seed(3))
    # h_0 at pure noise is E[r] = Z: its Monte Carlo log is within a few hundredths of SIR's log Z
    assert abs(report.start_bias) < 0.05
    assert report.path_kl == pytest.approx(report.mean_log_reward - report.log_z - report.start_bias, abs=1e-9)
    assert 0.1 < report.path_kl < 3.0 and report.elbo is None
    # no information about x_0 is left to gain on the last (near-deterministic) step
    assert abs(report.step_kl[-1]) < 0.01


def test_exact_posterior_path_kl_of_a_constant_reward_is_zero_and_bad_settings_raise():
    prior = _mixture_prior(5).double()
    constant = DiffusionPriorPath(prior, lambda x: x.new_full((x.shape[0],), -1.5))
    report = exact_posterior_path_kl(constant, pool=64, paths=16, continuations=2,
                                     generator=torch.Generator().manual_seed(4))
    assert report.step_kl == [0.0] * 5 and report.log_z == pytest.approx(-1.5) and report.start_bias == 0.0
    with pytest.raises(ValueError, match="pool >= paths"):
        exact_posterior_path_kl(DiffusionPriorPath(prior, _log_r), pool=8, paths=16)
    with pytest.raises(ValueError, match="zero reward; raise pool"):
        exact_posterior_path_kl(DiffusionPriorPath(prior, lambda x: x.new_full((x.shape[0],), -math.inf)), pool=16,
                                paths=4)
    with pytest.raises(ValueError, match="log_reward returned NaN"):
        exact_posterior_path_kl(DiffusionPriorPath(prior, lambda x: x[:, 0] * math.nan), pool=16, paths=4)
