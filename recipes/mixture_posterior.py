"""Posterior under an exact 2-D diffusion prior: relative trajectory balance or a noise-space sampler
against the analytic posterior mixture.

    python recipes/mixture_posterior.py --method {rtb,noise} --out DIR [--iters N] [--steps 50]

The prior is a DDPM on a strided schedule whose denoiser is the exact score of a Gaussian mixture
(noised mixtures are analytic, so nothing is trained for the prior); the likelihood observes the
first coordinate, y = x_1 + N(0, noise_var). The posterior of the mixture is again a mixture, known
in closed form. ``rtb`` fine-tunes a residual correction of the denoiser with RTB (per-step gradient
accumulation; ``--objective kl``: with the pathwise reverse KL instead; ``--learned-variance``: with
learned step variances too); ``noise`` trains a diffusion sampler on z with target N(z; 0, I) r(DDIM(z)).
Writes DIR/metrics.json (w2 and w2_floor, each a mean over --eval-repeats independent exact sample
sets; max_weight_error, prior_w2, seconds) and DIR/samples.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posterior.training.cpu_allocator import retain_freed_memory  # noqa: E402
from posterior.training.checkpoint import write_json  # noqa: E402
from posterior.diffusion.diffusion_posterior import DiffusionPosterior, DiffusionPriorPath  # noqa: E402
from posterior.samplers.factory import make_sampler  # noqa: E402
from posterior.objectives.factory import make_objective  # noqa: E402
from posterior.core.metrics import wasserstein2  # noqa: E402
from posterior.targets import sampler_target  # noqa: E402
from posterior.objectives import PathIntegral, RelativeTrajectoryBalance  # noqa: E402
from posterior.paths.path_target import BoltzmannPath  # noqa: E402
from posterior.evaluation.plotting import plot_samples  # noqa: E402
from posterior.diffusion.learned_variance import LearnedVarianceDenoiser  # noqa: E402
from posterior.diffusion.residual_denoiser import ResidualDenoiser  # noqa: E402
from posterior.training.importance_pool import ImportancePool  # noqa: E402
from posterior.training.importance_pool import PoolTraining  # noqa: E402
from posterior.training.config import TrainConfig  # noqa: E402
from posterior.training.engine import Trainer  # noqa: E402
from posterior.priors.diffusion import DiffusionPrior  # noqa: E402
from posterior.priors.gaussian_mixture import GaussianMixture, MixtureDenoiser  # noqa: E402


DEFAULT_ITERS = {"rtb": 3000, "noise": 6000}


def make_problem(steps: int):
    """Prior mixture (6 components on a ring of radius 2, unequal weights), DDPM prior, likelihood."""
    from diffusers import DDPMScheduler

    angles = torch.arange(6, dtype=torch.float64) * (torch.pi / 3)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], -1)
    covs = 0.09 * torch.eye(2, dtype=torch.float64).expand(6, 2, 2).clone()
    weights = torch.tensor([0.25, 0.1, 0.15, 0.2, 0.1, 0.2], dtype=torch.float64)
    mixture = GaussianMixture(weights, means, covs)
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    prior = DiffusionPrior(MixtureDenoiser(mixture, scheduler.alphas_cumprod).float(), scheduler, steps, (2,))
    operator, y, noise_var = torch.tensor([[1.0, 0.0]]), torch.tensor([0.8]), 0.5

    def log_likelihood(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * (x[:, 0] - y[0].to(x)) ** 2 / noise_var - 0.5 * torch.log(torch.tensor(2 * torch.pi * noise_var))

    return prior, mixture, mixture.posterior(operator.double(), y.double(), noise_var), log_likelihood


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=("rtb", "noise"), default="rtb")
    p.add_argument("--iters", type=int, default=None,
                   help="training iterations (default: 3000 for rtb, 6000 for noise; see BENCHMARKS.md)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50, help="prior schedule length (DDPM / DDIM steps)")
    p.add_argument("--sampler-steps", type=int, default=50, help="noise-space sampler steps")
    p.add_argument("--explore", type=float, default=0.0)
    p.add_argument("--objective", choices=("rtb", "kl"), default="rtb",
                   help="rtb: relative trajectory balance with a learned log Z; kl: the pathwise (reparameterized) "
                        "reverse KL through the likelihood's gradient (on-policy: no --explore, or --pool without --forward-kl)")
    p.add_argument("--learned-variance", action="store_true",
                   help="rtb: also learn each step's variance (a log-scale per step and dimension)")
    p.add_argument("--pool", type=int, default=0, metavar="P",
                   help="rtb: every other iteration trains on prior trajectories resampled from a pool of P "
                        "with weights r (an importance pool; 0: off)")
    p.add_argument("--forward-kl", type=float, default=0.0, metavar="L",
                   help="rtb: instead, every iteration adds L times the posterior's negative log-likelihood of a "
                        "batch of pool paths (a mass-covering forward-KL term; needs --pool; with --objective kl too)")
    p.add_argument("--forward-kl-horizon", type=int, default=0, metavar="N",
                   help="rtb: cosine-decay the --forward-kl weight over the first N iterations (0: constant)")
    p.add_argument("--forward-kl-final", type=float, default=0.0, metavar="F",
                   help="rtb: the forward-KL weight's multiplier at and after --forward-kl-horizon")
    p.add_argument("--eval-samples", type=int, default=2000)
    p.add_argument("--eval-repeats", type=int, default=5,
                   help="independent exact sample sets: W2 and its floor are means over this many")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    for flag, minimum in (("batch", 1), ("steps", 1), ("sampler_steps", 1), ("eval_samples", 2), ("eval_repeats", 1),
                          ("pool", 0), ("forward_kl_horizon", 0)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag.replace('_', '-')} must be an integer >= {minimum}, got {getattr(args, flag)}")
    for flag in ("iters", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag} must be an integer >= 1, got {getattr(args, flag)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()  # reuse freed CPU buffers instead of page-faulting fresh ones each iteration
    if args.iters is None:
        args.iters = DEFAULT_ITERS[args.method]
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prior, mixture, exact_posterior, log_likelihood = make_problem(args.steps)
    g = torch.Generator().manual_seed(10_000 + args.seed)
    exact_sets = [exact_posterior.sample(args.eval_samples, g).float() for _ in range(args.eval_repeats)]
    reference_sets = [exact_posterior.sample(args.eval_samples, g).float() for _ in range(args.eval_repeats)]
    exact = exact_sets[0]
    start = time.perf_counter()
    if args.method == "rtb":
        model = ResidualDenoiser(prior.denoiser, 2)
        posterior = DiffusionPosterior(prior, LearnedVarianceDenoiser(model, prior) if args.learned_variance else model)
        path = DiffusionPriorPath(prior, log_likelihood)
        pool = (ImportancePool.from_prior(prior, path.log_reward, args.pool, chunk=4096,
                                          generator=torch.Generator().manual_seed(20_000 + args.seed))
                if args.pool else None)
        objective = RelativeTrajectoryBalance() if args.objective == "rtb" else PathIntegral()
        pool = None if pool is None else PoolTraining(pool, forward_kl=args.forward_kl,
                                                      forward_kl_decay_horizon=args.forward_kl_horizon,
                                                      forward_kl_decay_final=args.forward_kl_final)
        trainer = Trainer(posterior, objective, TrainConfig(iterations=args.iters, batch_size=args.batch,
                                                            explore=args.explore, seed=args.seed),
                          path=path, pool=pool)
        history = trainer.run(progress=not args.no_progress)
        with torch.no_grad():
            samples = posterior.trajectories(args.eval_samples, path, generator=torch.Generator().manual_seed(1),
                                             track_gradients=False).samples
        seconds_per_iter, learned_log_z = history.median_seconds(), trainer.objective.log_z()
    else:
        target = sampler_target(prior, log_likelihood)  # N(z) r(DDIM(z)): the noise-space target
        sampler = make_sampler(2, 1.0)
        bpath = BoltzmannPath(target, sampler.reference)
        objective = make_objective("tb", bpath)
        trainer = Trainer(sampler, objective, TrainConfig(iterations=args.iters, batch_size=args.batch,
                                                          steps=args.sampler_steps, explore=args.explore,
                                                          seed=args.seed), path=bpath)
        history = trainer.run(progress=not args.no_progress)
        with torch.no_grad():
            z = sampler.forward_trajectories(args.eval_samples, trainer.model.times, bpath, track_gradients=False,
                                             generator=torch.Generator().manual_seed(1)).samples
            samples = target.prior.decode(z)
        seconds_per_iter, learned_log_z = history.median_seconds(), objective.log_z()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        prior_samples = prior.sample(args.eval_samples, generator=torch.Generator().manual_seed(2))[-1]
    # W2 against several independent exact sets, and the floor as the mean W2 between pairs of
    # independent exact sets (a single pair's W2 varies by ~30% at 2000 samples)
    w2_each = [wasserstein2(samples, e) for e in exact_sets]
    floor_each = [wasserstein2(r, e) for r, e in zip(reference_sets, exact_sets)]
    shares = torch.bincount(exact_posterior.component_of(samples.double()), minlength=6).double() / samples.shape[0]
    metrics = {
        "method": args.method, "objective": args.objective if args.method == "rtb" else None, "iters": args.iters, "steps": args.steps, "pool": args.pool,
        "forward_kl": args.forward_kl,
        "forward_kl_horizon": args.forward_kl_horizon,
        "forward_kl_final": args.forward_kl_final,
        "learned_variance": args.learned_variance if args.method == "rtb" else None,
        "w2": sum(w2_each) / len(w2_each), "w2_floor": sum(floor_each) / len(floor_each),
        "w2_each": w2_each, "w2_floor_each": floor_each, "eval_samples": args.eval_samples,
        "max_weight_error": float((shares - exact_posterior.weights).abs().max()),
        "weights": shares.tolist(), "exact_weights": exact_posterior.weights.tolist(),
        "prior_w2": wasserstein2(prior_samples, mixture.sample(args.eval_samples, g).float()),
        "learned_log_z": learned_log_z, "seconds": seconds, "seconds_per_iter": seconds_per_iter,
        "seed": args.seed, "threads": torch.get_num_threads(),
    }
    metrics["w2_ratio"] = metrics["w2"] / metrics["w2_floor"]
    metrics["w2_ratio_each"] = [w / f for w, f in zip(w2_each, floor_each)]
    write_json(metrics, out / "metrics.json")
    plot_samples(samples.cpu(), exact, out / "samples.png",
                 title=f"{args.method}: W2={metrics['w2']:.3f} (floor {metrics['w2_floor']:.3f})")
    print(json.dumps({k: metrics[k] for k in ("w2", "w2_floor", "w2_ratio", "max_weight_error", "prior_w2",
                                              "seconds_per_iter")}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
