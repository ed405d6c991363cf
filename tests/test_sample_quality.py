import torch

from posterior.evaluation.sample_quality import frechet_distance, mean_pairwise_distance


def test_frechet_distance_of_gaussians_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20_000, 3, generator=g, dtype=torch.float64)
    b = 2.0 * torch.randn(20_000, 3, generator=g, dtype=torch.float64) + 1.0
    # N(0, I) vs N(1, 4 I): |mu|^2 = 3, trace term 3 * (1 + 4 - 2 * 2) = 3
    assert abs(frechet_distance(a, b) - 6.0) < 0.15
    assert frechet_distance(a, a) < 1e-6


def test_mean_pairwise_distance():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert mean_pairwise_distance(x) == 5.0
