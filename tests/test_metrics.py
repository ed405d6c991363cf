import math

import pytest
import torch

from posterior.core import metrics


def _log_weights(k, log_z, shift, generator):
    """Proposal N(0, 1), target Z N(shift, 1): log w = log Z + shift x - shift^2 / 2; KL = shift^2 / 2."""
    x = torch.randn(k, generator=generator, dtype=torch.float64)
    return log_z + shift * x - 0.5 * shift ** 2


def test_elbo_below_rw_below_log_z():
    g = torch.Generator().manual_seed(0)
    log_z, shift, k = 1.7, 0.5, 2000
    log_w = _log_weights(k, log_z, shift, g)
    elbo, rw = float(metrics.log_z_elbo(log_w)), float(metrics.log_z_importance(log_w))
    se = float(log_w.std()) / math.sqrt(k)
    assert abs(elbo - (log_z - 0.5 * shift ** 2)) < 4 * se  # exact expectation of the ELBO
    assert elbo <= rw <= log_z + 0.02
    assert abs(rw - log_z) < 0.02
    # per condition: a batch of conditions gives one estimate each, never pooled
    batch = torch.stack([_log_weights(k, z, shift, g) for z in (0.0, 5.0)])
    est = metrics.log_z_importance(batch)
    assert est.shape == (2,) and abs(float(est[1] - est[0]) - 5.0) < 0.05


def test_ess_extremes_and_minus_inf():
    assert float(metrics.effective_sample_size(torch.zeros(10))) == pytest.approx(1.0)
    one_hot = torch.full((10,), -math.inf)
    one_hot[3] = 0.0
    assert float(metrics.effective_sample_size(one_hot)) == pytest.approx(0.1)
    assert float(metrics.log_z_importance(one_hot)) == pytest.approx(-math.log(10))
    with pytest.raises(ValueError, match="NaN"):
        metrics.log_z_elbo(torch.tensor([0.0, float("nan")]))


def test_eubo_is_upper_bound():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, generator=g, dtype=torch.float64) + 0.5  # exact target samples
    log_w = 1.0 + 0.5 * x - 0.125  # log Q - log p_F at target samples
    assert float(metrics.eubo(log_w)) == pytest.approx(1.0 + 0.125, abs=0.03)


def test_wasserstein2_exact_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g)
    assert metrics.wasserstein2(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([3.0, -4.0])
    assert metrics.wasserstein2(x, x + shift) == pytest.approx(5.0, rel=1e-5)
    # unequal sizes: two points against their four-fold copy
    a = torch.tensor([[0.0], [2.0]])
    assert metrics.wasserstein2(a, a.repeat(2, 1)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="samples and reference"):
        metrics.wasserstein2(x, torch.randn(5, 3))


def test_summarize_repeats_mean_std_and_missing_metrics():
    from posterior.evaluation.evaluation import summarize_repeats

    results = [{"log_z_rw": 1.0, "w2": None, "ess": 0.5}, {"log_z_rw": 2.0, "w2": 3.0, "ess": 0.5},
               {"log_z_rw": 4.0, "w2": 3.5, "ess": 0.5}]
    summary = summarize_repeats(results)
    assert summary["count"] == 3
    assert summary["log_z_rw"]["mean"] == pytest.approx(7 / 3)
    assert summary["log_z_rw"]["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                                                  + (4 - 7 / 3) ** 2) / 2))
    assert summary["log_z_rw"]["values"] == [1.0, 2.0, 4.0] and summary["ess"]["std"] == 0.0
    assert "w2" not in summary  # None in one evaluation: not summarized rather than averaged over a subset
    assert summarize_repeats(results[:1])["log_z_rw"]["std"] == 0.0
    with pytest.raises(ValueError, match="results"):
        summarize_repeats([])


def test_log_z_importance_stderr_matches_lognormal_weights_and_repeat_spread():
    """Log-normal weights w = Z exp(s x - s^2 / 2): Var(w) / E[w]^2 = exp(s^2) - 1, so the standard error of
    log Z_RW is sqrt((exp(s^2) - 1) / K); the spread of independent estimates must match it too."""
    g = torch.Generator().manual_seed(3)
    shift, k = 0.7, 2000
    expected = math.sqrt(math.expm1(shift ** 2) / k)
    batch = torch.stack([_log_weights(k, 2.0, shift, g) for _ in range(400)])  # 400 independent estimates
    stderr = metrics.log_z_importance_stderr(batch)
    assert stderr.shape == (400,)
    assert float(stderr.mean()) == pytest.approx(expected, rel=0.05)
    assert float(metrics.log_z_importance(batch).std()) == pytest.approx(expected, rel=0.12)
    # equal weights: no error; one weight of ten: ESS 0.1, sqrt((1 / 0.1 - 1) / 10); all zero: NaN (no estimate)
    equal = torch.full((10,), 3.0, dtype=torch.float64)
    assert float(metrics.log_z_importance_stderr(equal)) == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.full((10,), -math.inf)
    one_hot[3] = 0.0
    assert float(metrics.log_z_importance_stderr(one_hot)) == pytest.approx(math.sqrt(0.9))
    assert math.isnan(float(metrics.log_z_importance_stderr(torch.full((4,), -math.inf))))


def test_degenerate_weights_report_nan_and_large_offsets_change_nothing_in_float32():
    assert math.isnan(float(metrics.effective_sample_size(torch.tensor([0.3]))))  # K = 1: no spread to measure
    assert math.isnan(float(metrics.log_z_importance_stderr(torch.tensor([0.3]))))
    assert math.isnan(float(metrics.effective_sample_size(torch.full((5,), -math.inf))))  # every weight zero
    log_w = torch.randn(2000, generator=torch.Generator().manual_seed(0)) * 2.0
    for offset in (1e8, -1e8):
        shifted = (log_w.double() + offset).float()  # what a float32 target offset by 1e8 gives
        ess = metrics.effective_sample_size(shifted)
        assert 0 < float(ess) <= 1.0 and float(metrics.log_z_importance_stderr(shifted)) > 0
        # float32 holds 1e8 to a step of 8, so the weights themselves are coarser: the ESS stays in (0, 1]
        assert abs(float(metrics.log_z_importance(shifted)) - offset - float(metrics.log_z_importance(log_w))) < 8.0
    ess_exact = metrics.effective_sample_size(log_w.double() + 1e8)
    assert float(ess_exact) == pytest.approx(float(metrics.effective_sample_size(log_w.double())), rel=1e-9)
