"""bucketed_gradient_sync: gradients go through the accelerator's reduce in flat buckets and come back in place."""

import pytest
import torch
from torch import nn

from posterior.training.distributed import bucketed_gradient_sync, end_run


class FakeAccelerator:
    """Stands in for accelerate's Accelerator: its "mean over processes" is recorded and doubles the values (so a
    gradient that did not go through it, or came back to the wrong place, is caught)."""

    def __init__(self, num_processes=2):
        self.num_processes = num_processes
        self.calls = []

    def reduce(self, tensor, reduction="mean"):
        assert reduction == "mean"
        self.calls.append(tensor.numel())
        return tensor * 2


def test_one_process_needs_no_sync():
    assert bucketed_gradient_sync(FakeAccelerator(num_processes=1)) is None
    with pytest.raises(ValueError, match="bucket_mb must be positive"):
        bucketed_gradient_sync(FakeAccelerator(), bucket_mb=0)


def test_gradients_are_reduced_in_buckets_and_copied_back_in_place():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(s)) for s in ((300,), (20, 30), (5,), (1000,))]
    for p in params[:3]:
        p.grad = torch.randn_like(p)
    before = [None if p.grad is None else p.grad.clone() for p in params]  # the last has no gradient: skipped
    accelerator = FakeAccelerator()
    sync = bucketed_gradient_sync(accelerator, bucket_mb=1000 * 4 / 2 ** 20)  # buckets of at least 1000 floats
    sync(params)
    assert accelerator.calls == [300 + 600 + 5]  # one bucket: the three gradients together
    for p, old in zip(params, before):
        if old is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, 2 * old)
    small = FakeAccelerator()
    bucketed_gradient_sync(small, bucket_mb=400 * 4 / 2 ** 20)(params)  # a bucket closes once it holds >= 400
    assert small.calls == [300 + 600, 5]


def test_a_run_ends_with_every_process_at_a_barrier_before_its_process_group_goes():
    calls = []

    class Ending:
        def wait_for_everyone(self):
            calls.append("barrier")

        def end_training(self):
            calls.append("end")

    end_run(Ending())
    assert calls == ["barrier", "end"]
