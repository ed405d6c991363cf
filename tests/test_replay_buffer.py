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


# ---------------------------------------------------------------- exact answers, written out by hand
def _ranked_ids(buffer):
    """The stored ids (state = id) from rank 0 (highest log-reward) down."""
    return buffer.states[buffer._order, 0].long().tolist()


def _slot_ids(buffer):
    return buffer.states[: len(buffer), 0].long().tolist()


def _add(buffer, ids, log_rewards):
    x = torch.tensor(ids, dtype=torch.float32)[:, None]
    conditions = None if buffer.conditions is None else 10 * x
    buffer.add(x, torch.tensor(log_rewards, dtype=torch.float32), conditions)


def test_fifo_and_rank_order_by_hand_with_ties_and_an_oversized_add():
    inf = math.inf
    buffer = ReplayBuffer(1, capacity=4, condition_shape=(1,))
    _add(buffer, [0, 1, 2], [2.0, 5.0, 3.0])
    assert (_slot_ids(buffer), _ranked_ids(buffer)) == ([0, 1, 2], [1, 2, 0])
    _add(buffer, [3, 4], [3.0, 9.0])  # wraps: id 4 overwrites id 0; id 3 ties id 2, older first
    assert (_slot_ids(buffer), _ranked_ids(buffer)) == ([4, 1, 2, 3], [4, 1, 2, 3])
    _add(buffer, [5], [5.0])  # evicts id 1 (5.0), then ties with nothing left
    assert (_slot_ids(buffer), _ranked_ids(buffer)) == ([4, 5, 2, 3], [4, 5, 2, 3])
    _add(buffer, [6], [5.0])  # evicts id 2 (tied with id 3); ties id 5, older first
    assert (_slot_ids(buffer), _ranked_ids(buffer)) == ([4, 5, 6, 3], [4, 5, 6, 3])
    _add(buffer, [7], [9.0])  # evicts id 3; ties id 4
    assert (_slot_ids(buffer), _ranked_ids(buffer)) == ([4, 5, 6, 7], [4, 7, 5, 6])
    _add(buffer, [8, 9, 10, 11, 12, 13], [0.0, 0.0, 1.0, 4.0, 5.0, -inf])  # only the last 4 survive
    assert (_slot_ids(buffer), _ranked_ids(buffer)) == ([10, 11, 12, 13], [12, 11, 10, 13])
    assert buffer._next == 0 and len(buffer) == 4
    _add(buffer, [14, 15], [4.0, -inf])  # evicts ids 10, 11 (slots 0, 1); -inf ties id 13, older first
    assert (_slot_ids(buffer), _ranked_ids(buffer)) == ([14, 15, 12, 13], [12, 14, 13, 15])
    assert buffer._next == 2
    assert buffer.sorted_log_rewards().tolist() == [5.0, 4.0, -inf, -inf]
    torch.testing.assert_close(buffer.conditions[:, 0], 10 * buffer.states[:, 0], rtol=0, atol=0)
    assert buffer._keys.tolist() == [-5.0, -4.0, inf, inf]


def test_rank_order_by_hand_in_a_larger_buffer():
    # 128 entries, so single adds take the binary-search eviction (unique key) and the full pass
    # (a tied key, or more evicted entries) in turn.
    buffer = ReplayBuffer(1, capacity=128)
    _add(buffer, list(range(127)), [float(i) for i in range(127)])
    _add(buffer, [127], [0.0])  # ties id 0, ranked after it
    assert _ranked_ids(buffer) == list(range(126, -1, -1)) + [127]
    _add(buffer, [128], [63.5])  # evicts id 0, whose key is tied
    assert _ranked_ids(buffer) == list(range(126, 63, -1)) + [128] + list(range(63, 0, -1)) + [127]
    _add(buffer, [129], [126.0])  # evicts id 1 (unique key); ties id 126
    assert _ranked_ids(buffer) == [126, 129] + list(range(125, 63, -1)) + [128] + list(range(63, 1, -1)) + [127]
    _add(buffer, [130], [-math.inf])  # evicts id 2
    assert _ranked_ids(buffer) == ([126, 129] + list(range(125, 63, -1)) + [128] + list(range(63, 2, -1))
                                   + [127, 130])
    _add(buffer, [131, 132], [0.0, 63.5])  # evicts ids 3, 4; 131 ties 127, 132 ties 128
    assert _ranked_ids(buffer) == ([126, 129] + list(range(125, 63, -1)) + [128, 132] + list(range(63, 4, -1))
                                   + [127, 131, 130])
    assert _slot_ids(buffer) == [128, 129, 130, 131, 132] + list(range(5, 127)) + [127]


def test_rank_draws_follow_the_inverse_cumulative_weights_exactly():
    buffer = ReplayBuffer(1, capacity=6, rank_k=0.5)
    _add(buffer, [0, 1, 2, 3], [1.0, 4.0, 2.0, 3.0])
    _add(buffer, [4, 5, 6], [0.5, 2.0, 9.0])  # evicts id 0
    ranked = [6, 1, 3, 2, 5, 4]
    assert _ranked_ids(buffer) == ranked
    w = 1.0 / (0.5 * 6 + torch.arange(6, dtype=torch.float64))
    u = torch.rand(200, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ranks = torch.searchsorted(w.cumsum(0) / w.sum(), u, right=True).clamp(max=5)
    x, r, _ = buffer.sample(200, torch.Generator().manual_seed(5))
    assert x[:, 0].long().tolist() == [ranked[i] for i in ranks.tolist()]


def test_loads_a_state_dict_in_the_original_layout_and_keeps_it_intact():
    # the layout written since the buffer exists: entries [:size], ring position, rank order, keys
    state = {"states": torch.tensor([[4.0], [1.0], [2.0]]), "log_rewards": torch.tensor([9.0, 5.0, 5.0]),
             "conditions": None, "size": 3, "next": 1, "order": torch.tensor([0, 1, 2]),
             "keys": torch.tensor([-9.0, -5.0, -5.0])}
    kept = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    buffer = ReplayBuffer(1, capacity=3)
    buffer.load_state_dict(state)
    _add(buffer, [7], [5.0])  # overwrites slot 1 (id 1), ties id 2
    _add(buffer, [8], [10.0])  # overwrites slot 2 (id 2)
    assert (_slot_ids(buffer), _ranked_ids(buffer)) == ([4, 7, 8], [8, 4, 7])
    for k, v in kept.items():  # the buffer never writes into the tensors it loaded
        assert torch.equal(state[k], v), k
    again = ReplayBuffer(1, capacity=3)
    again.load_state_dict(buffer.state_dict())
    assert buffer.state_dict()["order"].tolist() == again.state_dict()["order"].tolist() == [2, 0, 1]
    uniform = ReplayBuffer(1, capacity=3, prioritization="uniform")
    uniform.add(torch.zeros(2, 1), torch.zeros(2))
    with pytest.raises(ValueError, match="rank order has 0"):
        ReplayBuffer(1, capacity=3).load_state_dict(uniform.state_dict())
