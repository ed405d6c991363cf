"""Time replay-buffer adds and prioritized draws at full capacity.

    python recipes/replay_speed.py [--capacity 600000] [--dim 32] [--batch 300] --json FILE

Writes ``add_seconds`` and ``sample_seconds`` (medians over ``--repeats`` calls on a full
buffer) for rank-prioritized and uniform buffers, and ``rank_round_add_seconds`` /
``rank_round_add_seconds_small``: the median seconds (over ``--round-repeats`` calls, each
with fresh random states) to add one local-search round of ``--round-batch`` states (17,000)
to a full rank-prioritized buffer of ``--capacity`` entries and of ``--small-capacity``
(50,000) entries.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posterior.training.checkpoint import write_json  # noqa: E402
from posterior.training.replay_buffer import ReplayBuffer  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--capacity", type=int, default=600_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--batch", type=int, default=300)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--round-batch", type=int, default=17_000, help="states added by one local-search round")
    p.add_argument("--small-capacity", type=int, default=50_000)
    p.add_argument("--round-repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    for flag, minimum in (("capacity", 1), ("dim", 1), ("batch", 1), ("repeats", 1), ("round_batch", 1),
                          ("small_capacity", 1), ("round_repeats", 1)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag.replace('_', '-')} must be an integer >= {minimum}, got {getattr(args, flag)}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be an integer >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    g_round = torch.Generator().manual_seed(1)  # its own stream: the batch-300 numbers see the same data as before
    result = {"capacity": args.capacity, "dim": args.dim, "batch": args.batch, "threads": torch.get_num_threads(),
              "round_batch": args.round_batch, "small_capacity": args.small_capacity}

    def full_buffer(capacity: int, kind: str, g: torch.Generator) -> ReplayBuffer:
        buffer = ReplayBuffer(args.dim, capacity, prioritization=kind)
        chunk = 20_000
        for _ in range(capacity // chunk + 1):
            buffer.add(torch.randn(chunk, args.dim, generator=g), torch.randn(chunk, generator=g))
        return buffer

    def round_add_seconds(buffer: ReplayBuffer) -> float:
        """Median seconds to add a fresh batch of --round-batch states (drawn beforehand)."""
        batches = iter([(torch.randn(args.round_batch, args.dim, generator=g_round),
                         torch.randn(args.round_batch, generator=g_round)) for _ in range(args.round_repeats)])
        return median_seconds(lambda: buffer.add(*next(batches)), args.round_repeats)

    for kind in ("rank", "uniform"):
        buffer = full_buffer(args.capacity, kind, g)
        x, r = torch.randn(args.batch, args.dim, generator=g), torch.randn(args.batch, generator=g)
        result[f"{kind}_add_seconds"] = median_seconds(lambda: buffer.add(x, r), args.repeats)
        result[f"{kind}_sample_seconds"] = median_seconds(lambda: buffer.sample(args.batch, g), args.repeats)
        if kind == "rank":  # one local-search round into the full buffer (it stays full)
            result["rank_round_add_seconds"] = round_add_seconds(buffer)
        buffer = None  # free the 600k-entry buffer before the next kind
    result["rank_round_add_seconds_small"] = round_add_seconds(full_buffer(args.small_capacity, "rank", g_round))
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
