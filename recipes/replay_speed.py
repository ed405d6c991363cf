"""Time replay-buffer adds and prioritized draws at full capacity.

    python recipes/replay_speed.py [--capacity 600000] [--dim 32] [--batch 300] --json FILE

Writes ``add_seconds`` and ``sample_seconds`` (medians over ``--repeats`` calls on a full
buffer) for rank-prioritized and uniform buffers.
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
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    result = {"capacity": args.capacity, "dim": args.dim, "batch": args.batch, "threads": torch.get_num_threads()}
    for kind in ("rank", "uniform"):
        buffer = ReplayBuffer(args.dim, args.capacity, prioritization=kind)
        chunk = 20_000
        for _ in range(args.capacity // chunk + 1):
            buffer.add(torch.randn(chunk, args.dim, generator=g), torch.randn(chunk, generator=g))
        x, r = torch.randn(args.batch, args.dim, generator=g), torch.randn(args.batch, generator=g)
        result[f"{kind}_add_seconds"] = median_seconds(lambda: buffer.add(x, r), args.repeats)
        result[f"{kind}_sample_seconds"] = median_seconds(lambda: buffer.sample(args.batch, g), args.repeats)
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
