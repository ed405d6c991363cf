import math

import torch

from posterior.constraints import GaussianTarget
from posterior.paths.path_target import BoltzmannPath
from posterior.paths.reference import BrownianBridge
from posterior.baselines.smc import annealed_smc, long_run_mala


def _path(log_z=1.3):
    target = GaussianTarget(mean=torch.tensor([2.0, -1.0]), std=torch.tensor([0.5, 2.0]), log_scale=log_z)
    return BoltzmannPath(target, BrownianBridge(1.0))


def test_smc_estimate_of_z_is_unbiased_on_a_gaussian():
    path, log_z = _path(), 1.3
    g = torch.Generator().manual_seed(0)
    ratios, log_estimates = [], []
    for _ in range(40):
        run = annealed_smc(path, 512, temperatures=20, mala_steps=2, step_size=0.05, adapt=False,
                           ess_threshold=0.5, generator=g)
        ratios.append(math.exp(run.log_z - log_z))
        log_estimates.append(run.log_z)
        assert run.resamplings >= 1
    ratios = torch.tensor(ratios)
    se = float(ratios.std()) / math.sqrt(len(ratios))
    assert abs(float(ratios.mean()) - 1.0) < 3 * se + 1e-3, (float(ratios.mean()), se)
    assert se < 0.05  # informative: a wrong weight (e.g. without the initial density) is off by far more
    assert abs(sum(log_estimates) / len(log_estimates) - log_z) < 0.1


def test_smc_particles_and_long_run_mala_match_the_target_moments():
    path = _path()
    mean, std = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 2.0])
    g = torch.Generator().manual_seed(1)
    smc = annealed_smc(path, 4000, temperatures=20, mala_steps=5, generator=g)
    mala = long_run_mala(path, 4000, steps=300, burn_in=150, generator=g)
    for run in (smc, mala):
        torch.testing.assert_close(run.samples.mean(0), mean, atol=0.1, rtol=0)
        torch.testing.assert_close(run.samples.std(0), std, atol=0.08, rtol=0.05)
        assert run.evaluations > 0 and run.seconds > 0
    assert mala.log_z is None
    assert abs(mala.acceptance - 0.574) < 0.15
