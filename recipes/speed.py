"""Time training iterations of a diffusion sampler against the network's compute floor.

    python recipes/speed.py --target manywell --objective tb [--langevin] [--iters 50] --json FILE

seconds_per_iter: median training iteration (batch 300, 100 steps by default);
mean_seconds_per_iter: the mean, which includes local-search rounds (--local-search).
floor_seconds: one forward + backward of the policy network over all B*T states as a
single batch (what an iteration costs if the simulation loop were free).
floor_ratio: seconds_per_iter / floor_seconds.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # recipes/_paths.py: where the shared data is

from posterior.training.cpu_allocator import retain_freed_memory  # noqa: E402
from posterior.training.checkpoint import write_json  # noqa: E402
from posterior.constraints.registry import TARGET_NAMES, make_target  # noqa: E402
from _paths import pines_path  # noqa: E402
from posterior.samplers.factory import make_sampler  # noqa: E402
from posterior.objectives.factory import OBJECTIVES, default_flow_lr, make_objective  # noqa: E402
from posterior.training.replay import ReplayConfig, ReplayTraining  # noqa: E402
from posterior.core.grids import uniform_grid  # noqa: E402
from posterior.paths.path_target import BoltzmannPath  # noqa: E402
from posterior.training.config import TrainConfig  # noqa: E402
from posterior.training.engine import Trainer  # noqa: E402


def floor_seconds(sampler, batch: int, steps: int, repeats: int, generator: torch.Generator) -> float:
    """Median time of one batched forward + backward of the policy over (steps, batch) states."""
    param = next(sampler.parameters())
    times = uniform_grid(steps, device=param.device, dtype=param.dtype)
    states = torch.randn((steps, batch, sampler.dim), generator=generator, device=param.device, dtype=param.dtype)
    scores = states.clone() if sampler.policy.langevin else None
    result = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        features = sampler.policy.time_features(times[:-1])
        drift, _ = sampler.evaluate_policy(states, features, scores)
        sampler.zero_grad(set_to_none=True)
        drift.square().sum().backward()
        if param.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            result.append(time.perf_counter() - start)
    return statistics.median(result)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=TARGET_NAMES, default="manywell")
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--objective", choices=OBJECTIVES, default="tb")
    p.add_argument("--langevin", action="store_true")
    p.add_argument("--local-search", action="store_true",
                   help="buffer + MALA local search every 100 iterations (report the mean, which includes it)")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=300)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--default-allocator", action="store_true",
                   help="leave glibc's malloc thresholds as they are (see posterior/cpu_allocator.py)")
    args = p.parse_args(argv)
    for flag, minimum in (("iters", 1), ("warmup", 0), ("batch", 1), ("steps", 1)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag.replace('_', '-')} must be an integer >= {minimum}, got {getattr(args, flag)}")
    for flag in ("dim", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag} must be an integer >= 1, got {getattr(args, flag)}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device must be a torch device such as cpu or cuda:0, got {args.device!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.default_allocator:
        retain_freed_memory()
    torch.manual_seed(args.seed)
    try:  # the target's own dimension rules (gmm25: 2, manywell: even, lgcp: a square), before any training
        target = make_target(args.target, dim=args.dim, pines_path=pines_path()).to(device)
    except ValueError as exc:
        if args.dim is None:
            raise
        p.error(f"--dim must be a dimension that --target {args.target} accepts, got {args.dim} ({exc})")
    sampler = make_sampler(target.dim, target.reference_variance, langevin=args.langevin).to(device)
    path = BoltzmannPath(target, sampler.reference)
    objective = make_objective(args.objective, path).to(device)
    config = TrainConfig(iterations=args.warmup + args.iters, batch_size=args.batch, steps=args.steps,
                            lr_flow=default_flow_lr(args.objective), seed=args.seed)
    replay = (ReplayTraining(ReplayConfig(local_search=True), target.dim, device=device)
              if args.local_search else None)
    trainer = Trainer(sampler, objective, config, path=path, replay=replay)
    trainer.run(progress=False)
    seconds = trainer.history.median_seconds(skip=args.warmup)
    timed = trainer.history.seconds[args.warmup:]
    mean_seconds = sum(timed) / len(timed)
    floor = floor_seconds(sampler, args.batch, args.steps, repeats=max(5, args.iters // 5),
                          generator=torch.Generator(device=device).manual_seed(args.seed))
    result = {"target": args.target, "dim": target.dim, "objective": args.objective, "langevin": args.langevin,
              "batch": args.batch, "steps": args.steps, "iters": args.iters,
              "local_search": args.local_search,
              "seconds_per_iter": seconds, "mean_seconds_per_iter": mean_seconds,
              "floor_seconds": floor, "floor_ratio": seconds / floor,
              "device": str(device), "threads": torch.get_num_threads(),
              "retain_freed_memory": not args.default_allocator}
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
