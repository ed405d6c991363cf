import math

import pytest
import torch

from posterior.training.replay_buffer import ReplayBuffer


def _fill(buffer, n, batch=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch):
        b = min(batch, n - start)
        x = torch.randn(b, buffer.dim, generator=g)
        buffer.add(x, torch.randn(b, generator=g))


def _contents(buffer):
    return buffer.states[: len(buffer)], buffer.log_rewards[: len(buffer)]


def test_order_matches_a_full_sort_after_adds_and_evictions():
    buffer = ReplayBuffer(3, capacity=50, rank_k=0.01)
    _fill(buffer, 173)
    assert len(buffer) == 50
    expected = torch.sort(buffer.log_rewards, descending=True).values
    torch.testing.assert_close(buffer.sorted_log_rewards(), expected, rtol=0, atol=0)
    assert sorted(buffer._order.tolist()) == list(range(50))


def test_fifo_keeps_the_newest_entries():
    buffer = ReplayBuffer(1, capacity=10, prioritization="uniform")
    for i in range(4):
        buffer.add(torch.arange(5 * i, 5 * i + 5, dtype=torch.float32)[:, None], torch.zeros(5))
    assert sorted(buffer.states[:, 0].tolist()) == list(range(10, 20))
    big = torch.arange(100, 125, dtype=torch.float32)[:, None]
    buffer.add(big, torch.zeros(25))  # larger than the capacity: the last 10 survive
    assert sorted(buffer.states[:, 0].tolist()) == list(range(115, 125))


def test_rank_prioritization_matches_its_formula():
    n, k = 20, 0.5
    buffer = ReplayBuffer(1, capacity=n, rank_k=k)
    log_r = torch.randperm(n, generator=torch.Generator().manual_seed(1)).float()
    buffer.add(log_r[:, None], log_r)  # the state is its own log-reward
    draws = 400_000
    x, r, _ = buffer.sample(draws, torch.Generator().manual_seed(2))
    torch.testing.assert_close(x[:, 0], r)
    rank = (n - 1 - r).long()  # log-reward n-1 has rank 0
    freq = torch.bincount(rank, minlength=n).double() / draws
    w = 1.0 / (k * n + torch.arange(n, dtype=torch.float64))
    expected = w / w.sum()
    assert float((freq - expected).abs().max()) < 4 * math.sqrt(float(expected.max()) / draws)
    # a greedier k puts more mass on the best entry
    greedy = ReplayBuffer(1, capacity=n, rank_k=0.01)
    greedy.add(log_r[:, None], log_r)
    best = (greedy.sample(50_000, torch.Generator().manual_seed(3))[1] == n - 1).double().mean()
    assert float(best) > 2 * float(expected[0])


def test_uniform_sampling_is_uniform():
    buffer = ReplayBuffer(1, capacity=10, prioritization="uniform")
    buffer.add(torch.arange(10.0)[:, None], torch.arange(10.0))
    x = buffer.sample(100_000, torch.Generator().manual_seed(0))[0][:, 0].long()
    freq = torch.bincount(x, minlength=10).double() / 100_000
    assert float((freq - 0.1).abs().max()) < 0.005


def test_conditions_travel_with_their_states():
    buffer = ReplayBuffer(2, capacity=30, condition_shape=(3,))
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(9, 2, generator=g)
        buffer.add(x, x.sum(-1), conditions=torch.cat([x, x[:, :1]], dim=1))
    x, r, c = buffer.sample(200, g)
    torch.testing.assert_close(c[:, :2], x)
    torch.testing.assert_close(r, x.sum(-1))
    with pytest.raises(ValueError, match="conditions must"):
        buffer.add(x, r)


def test_minus_inf_is_ranked_last_and_nan_raises():
    buffer = ReplayBuffer(1, capacity=10)
    buffer.add(torch.zeros(3, 1), torch.tensor([0.0, -math.inf, 1.0]))
    assert buffer.sorted_log_rewards().tolist() == [1.0, 0.0, -math.inf]
    with pytest.raises(ValueError, match="log_rewards returned NaN"):
        buffer.add(torch.zeros(1, 1), torch.tensor([math.nan]))
    with pytest.raises(ValueError, match=r"states must have shape \(B, 1\)"):
        buffer.add(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"log_rewards must have shape \(2,\)"):
        buffer.add(torch.zeros(2, 1), torch.zeros(2, 1))
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(1, capacity=3).sample(1)


def test_state_dict_round_trip_gives_identical_draws():
    buffer = ReplayBuffer(2, capacity=40)
    _fill(buffer, 55)
    copy = ReplayBuffer(2, capacity=40)
    copy.load_state_dict(buffer.state_dict())
    for b in (buffer, copy):
        b.add(torch.ones(3, 2), torch.tensor([5.0, -1.0, 0.0]))
    a = buffer.sample(64, torch.Generator().manual_seed(9))
    c = copy.sample(64, torch.Generator().manual_seed(9))
    torch.testing.assert_close(a[0], c[0], rtol=0, atol=0)


def test_order_stays_exact_with_ties_and_wraparound():
    buffer = ReplayBuffer(1, capacity=20)
    g = torch.Generator().manual_seed(4)
    values = torch.tensor([0.0, 1.0, -math.inf])
    for step in range(40):
        b = int(torch.randint(1, 9, (1,), generator=g))
        r = values[torch.randint(3, (b,), generator=g)]
        buffer.add(torch.full((b, 1), float(step)), r)
        n = len(buffer)
        assert sorted(buffer._order.tolist()) == list(range(n))
        stored = buffer.log_rewards[:n]
        torch.testing.assert_close(buffer.sorted_log_rewards(), torch.sort(stored, descending=True).values)
        # among equal log-rewards the older entry ranks first
        ranked = buffer.states[buffer._order, 0]
        same = buffer.sorted_log_rewards()[1:] == buffer.sorted_log_rewards()[:-1]
        assert bool((ranked[1:][same] >= ranked[:-1][same]).all())
