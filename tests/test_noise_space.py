import torch

from posterior.priors.vae import VAEDecoderPrior
from posterior.targets import sampler_target


def test_linear_generator_gives_the_analytic_gaussian_posterior_over_noise():
    """x = W z + b, y = A x + N(0, s2): p(z | y) = N(m, C) with C^-1 = I + W'A'AW / s2,
    m = C W'A'(y - A b) / s2. The target's log-density differences and gradient are exact."""
    g = torch.Generator().manual_seed(0)
    d, dx, m = 3, 4, 2
    w = torch.randn(dx, d, generator=g, dtype=torch.float64)
    b = torch.randn(dx, generator=g, dtype=torch.float64)
    a = torch.randn(m, dx, generator=g, dtype=torch.float64)
    y = torch.randn(m, generator=g, dtype=torch.float64)
    s2 = 0.3

    def generator(z):
        return z @ w.T + b

    def log_likelihood(x):
        return -0.5 * ((x @ a.T - y) ** 2).sum(-1) / s2

    target = sampler_target(VAEDecoderPrior(generator, d), log_likelihood)  # unconditional: r(x)
    aw = a @ w
    precision = torch.eye(d, dtype=torch.float64) + aw.T @ aw / s2
    cov = torch.linalg.inv(precision)
    mean = cov @ aw.T @ (y - a @ b) / s2
    exact = torch.distributions.MultivariateNormal(mean, cov)
    z = torch.randn(50, d, generator=g, dtype=torch.float64)
    diff = target.log_reward(z) - exact.log_prob(z)
    torch.testing.assert_close(diff, diff[:1].expand(50), rtol=0, atol=1e-9)  # equal up to log p(y)
    torch.testing.assert_close(target.grad_log_reward(z), -(z - mean) @ precision, rtol=1e-9, atol=1e-9)
    # beta tempers the likelihood only
    tempered = sampler_target(VAEDecoderPrior(generator, d), log_likelihood, beta=0.5)
    torch.testing.assert_close(tempered.log_reward(z) - target.log_reward(z), -0.5 * log_likelihood(generator(z)))
