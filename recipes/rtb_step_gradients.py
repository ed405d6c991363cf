"""Per-step gradient norms of a diffusion prior's transition log-densities at the start of RTB
fine-tuning (posterior = prior): which steps would dominate the RTB gradient.

    python recipes/rtb_step_gradients.py --prior runs/mnist_guidance_cache/ddpm14 --steps 10 [--json FILE]

For each step k of the strided schedule, prints the transition variance and the norm of
grad_theta sum_b log p_post,k(x_{k+1} | x_k) over one batch of prior trajectories. On a strided DDPM
schedule the last two steps have variance ~1e-4 and (for the first of them) a gradient ~30x any
other step's: the steps ``DiffusionPosterior(frozen_final_steps=...)`` keeps from the prior.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posterior.training.checkpoint import write_json  # noqa: E402
from posterior.diffusion.diffusion_posterior import NEAR_DETERMINISTIC_VARIANCE  # noqa: E402
from posterior.priors.diffusion import DiffusionPrior  # noqa: E402


def step_gradient_norms(prior: DiffusionPrior, batch_size: int, generator: torch.Generator) -> list[float]:
    """(N,) norms of the gradient of each step's summed log-density in the denoiser's parameters."""
    model = prior.posterior_copy()
    states = prior.sample(batch_size, generator=generator)
    norms = []
    for k in range(prior.num_steps):
        model.zero_grad(set_to_none=True)
        prior.log_prob_step(states[k + 1], prior.step_mean(states[k], k, model), k).sum().backward()
        norms.append(float(sum(p.grad.square().sum() for p in model.parameters() if p.grad is not None).sqrt()))
    return norms


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True, help="local diffusers folder (unet/ + scheduler/, or the UNet's folder "
                                                  "with scheduler/ inside)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    for flag, minimum in (("steps", 1), ("batch", 1)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag} must be an integer >= {minimum}, got {getattr(args, flag)}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be an integer >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # a --steps beyond the scheduler's timesteps, or a folder that is not a supported checkpoint
        prior = DiffusionPrior.from_pretrained(args.prior, num_steps=args.steps).eval()
    except (FileNotFoundError, ValueError) as error:
        p.error(f"--prior {args.prior} with --steps {args.steps}: {error}")
    norms = step_gradient_norms(prior, args.batch, torch.Generator().manual_seed(args.seed))
    result = {"timesteps": prior.timesteps.tolist(), "step_variance": prior.step_var.tolist(),
              "gradient_norm": norms,
              "frozen_final_steps_default": prior.final_steps_below(NEAR_DETERMINISTIC_VARIANCE)}
    for k, (t, v, g) in enumerate(zip(result["timesteps"], result["step_variance"], norms)):
        print(f"step {k}: timestep {t:4d}  variance {v:.2e}  |grad| {g:.3e}")
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
