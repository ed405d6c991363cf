"""Peak memory and time per RTB iteration: full graph, gradient checkpointing, exact per-step
gradient accumulation, per-step accumulation on a random quarter of the steps, and per-step
accumulation with rank-8 LoRA adapters on a frozen copy of the UNet (``per_step_lora``); and the
pathwise KL (one graph through the reparameterized path and the reward), without and with
gradient checkpointing of each step (``pathwise_kl``, ``pathwise_kl_checkpoint``).

    python recipes/rtb_memory.py --json FILE [--size 14] [--steps 20] [--batch 16] [--iters 3] [--device cpu]

Each mode runs in its own process on a CPU (peak resident memory above the process's baseline
after setup, from getrusage) and in-process on CUDA (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posterior.training.checkpoint import write_json  # noqa: E402
from posterior.diffusion.diffusion_posterior import DiffusionPosterior, DiffusionPriorPath  # noqa: E402
from posterior.diffusion.lora import lora_denoiser, trainable_parameter_count  # noqa: E402
from posterior.objectives import PathIntegral, RelativeTrajectoryBalance  # noqa: E402
from posterior.training.config import TrainConfig  # noqa: E402
from posterior.training.engine import Trainer  # noqa: E402
from posterior.priors.ddpm_training import small_unet  # noqa: E402
from posterior.priors.diffusion import DiffusionPrior  # noqa: E402

TRAIN_TIMESTEPS = 1000  # the DDPM scheduler's; --steps strides it
MODES = {"full": dict(per_step=False), "checkpoint": dict(per_step=False, checkpoint=True),
         "per_step": dict(per_step=True), "per_step_quarter": dict(per_step=True, step_fraction=0.25),
         "per_step_lora": dict(per_step=True, lora_rank=8),
         "pathwise_kl": dict(per_step=False, pathwise=True),
         "pathwise_kl_checkpoint": dict(per_step=False, pathwise=True, checkpoint=True)}


def run_mode(args: argparse.Namespace, mode: str) -> dict:
    from diffusers import DDPMScheduler

    device = torch.device(args.device)
    torch.manual_seed(0)
    unet = small_unet(args.size, widths=tuple(args.widths)).to(device)
    prior = DiffusionPrior(unet, DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS), args.steps,
                           (1, args.size, args.size))
    options = MODES[mode]
    model = lora_denoiser(unet, rank=options["lora_rank"]) if "lora_rank" in options else None
    posterior = DiffusionPosterior(prior, model, checkpoint_steps=options.get("checkpoint", False))
    path = DiffusionPriorPath(prior, lambda x: -x.flatten(1).square().mean(-1))
    objective = PathIntegral() if options.get("pathwise") else RelativeTrajectoryBalance()
    trainer = Trainer(posterior, objective, TrainConfig(iterations=args.iters + 1, batch_size=args.batch,
                                                        per_step=options["per_step"],
                                                        step_fraction=options.get("step_fraction", 1.0)), path=path)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = []
    for _ in range(args.iters + 1):
        start = time.perf_counter()
        trainer.step()
        trainer.iteration += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"mode": mode, "seconds_per_iter": statistics.median(seconds[1:]), "peak_memory_mb": peak / 2 ** 20,
            "parameters": sum(p.numel() for p in unet.parameters()),
            "trainable_parameters": trainable_parameter_count(posterior.model)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=14)
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--mode", choices=MODES, default=None, help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    for flag, minimum in (("size", 1), ("steps", 1), ("batch", 1), ("iters", 1)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag} must be an integer >= {minimum}, got {getattr(args, flag)}")
    if args.steps > TRAIN_TIMESTEPS:
        p.error(f"--steps must be at most the scheduler's {TRAIN_TIMESTEPS} training timesteps, got {args.steps}")
    if any(w < 8 or w % 8 for w in args.widths):  # the UNet's group norms have 8 groups
        p.error(f"--widths must be positive multiples of 8, got {' '.join(map(str, args.widths))}")
    if args.size % 2 ** (len(args.widths) - 1):  # each width after the first halves the image
        p.error(f"--size must be divisible by {2 ** (len(args.widths) - 1)} with {len(args.widths)} --widths, "
                f"got {args.size}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be an integer >= 1, got {args.threads}")
    try:
        torch.device(args.device)
    except RuntimeError:
        p.error(f"--device must be a torch device such as cpu or cuda:0, got {args.device!r}")
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if not modes or unknown:
        p.error(f"--modes must be comma-separated modes from {', '.join(MODES)}, got {args.modes!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode is not None:
        print(json.dumps(run_mode(args, args.mode)))
        return {}
    results = []
    for mode in modes:
        if args.device.startswith("cuda"):
            results.append(run_mode(args, mode))
        else:
            cmd = [sys.executable, __file__, "--mode", mode, "--size", str(args.size), "--steps", str(args.steps),
                   "--batch", str(args.batch), "--iters", str(args.iters), "--device", args.device,
                   "--widths", *map(str, args.widths)] + (["--threads", str(args.threads)] if args.threads else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]))
    report = {"size": args.size, "steps": args.steps, "batch": args.batch, "device": args.device, "modes": results}
    if args.json:
        write_json(report, args.json)
    return report


if __name__ == "__main__":
    main()
