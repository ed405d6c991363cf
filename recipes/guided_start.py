"""Where a guided data-space posterior starts: the untrained amortized posterior for each guidance scale g.

    python recipes/guided_start.py --problem classes --guidance 0,0.5,1,2,4 --json FILE
    python recipes/guided_start.py --problem inpainting --guidance 0,0.03,0.1,0.3,1 --json FILE

``SamplerConfig(guidance=g)`` starts the posterior's step means at the prior's plus g·ᾱ_k·var_k·∇ log r(x̂₀, y)
(learned per-step scales from there). Before any training that is the reward-guided sampler; this recipe prints,
per g, its ELBO of log Z(y) (the mean log-weight log r + log p_prior(τ) − log p_post(τ), averaged over conditions)
and its mean log r, so that g can be chosen where the ELBO is highest (a larger g buys reward at a path-KL cost
that grows faster). Problems, on the shipped 14×14 MNIST prior:

- classes: y = a digit class 0–9, r(x, y) = p(y | x) of the shipped classifier (the --classes recipe);
- inpainting: y = the top half of a training digit plus noise 0.1, r = the Gaussian likelihood
  (recipes/mnist_inpainting.py).

--conditions conditions (classes 0..9 cycled, or the first training digits) × --trajectories each, one generator
seed for every g (common random numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from posterior.constraints.classifier import ClassifierLikelihood  # noqa: E402
from posterior.diffusion.build import diffusion_posterior  # noqa: E402
from _mnist_diffusion import add_prior_flags, inpainting_likelihood, load_prior_and_classifier, split_digits  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problem", choices=("classes", "inpainting"), required=True)
    p.add_argument("--guidance", default="0,0.5,1,2", help="comma-separated scales g >= 0")
    p.add_argument("--conditions", type=int, default=10, help="conditions (classes cycled 0..9, or training digits)")
    p.add_argument("--trajectories", type=int, default=16, help="trajectories per condition")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the rows here")
    add_prior_flags(p)
    args = p.parse_args(argv)
    try:
        args.guidance = [float(g) for g in args.guidance.split(",") if g.strip()]
    except ValueError:
        p.error(f"--guidance must be comma-separated numbers, got {args.guidance!r}")
    if not args.guidance or not all(math.isfinite(g) and g >= 0 for g in args.guidance):
        p.error(f"--guidance must be finite numbers >= 0, got {args.guidance}")
    for flag, minimum in (("conditions", 1), ("trajectories", 1), ("threads", 1), ("steps", 1)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag} must be an integer >= {minimum}, got {getattr(args, flag)}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    prior, classifier = load_prior_and_classifier(args, device)
    if args.problem == "classes":
        reward = ClassifierLikelihood(classifier)
        y = torch.arange(args.conditions) % 10
        condition = {"num_classes": 10}
    else:
        reward, _ = inpainting_likelihood(prior)
        digits, _ = split_digits(args.data_dir, prior.event_shape[-1])
        y = reward.sample_observation(digits["train_x"][: args.conditions], torch.Generator().manual_seed(args.seed + 5))
        condition = {"cond_shape": list(y.shape[1:])}
    rows_y = y.repeat_interleave(args.trajectories, 0)
    rows = []
    for g in args.guidance:
        posterior, path = diffusion_posterior(prior, reward, {"condition": condition, "guidance": g})
        traj = posterior.trajectories(len(rows_y), path.bind(rows_y), track_gradients=False,
                                      generator=torch.Generator().manual_seed(args.seed))
        log_w = traj.log_weight.reshape(len(y), args.trajectories)
        row = {"guidance": g, "elbo": float(log_w.mean()), "elbo_sd": float(traj.log_weight.std()),
               "mean_log_r": float(traj.log_reward.mean())}
        rows.append(row)
        print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"problem": args.problem, "conditions": args.conditions,
                                               "trajectories": args.trajectories, "seed": args.seed,
                                               "steps": args.steps, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
