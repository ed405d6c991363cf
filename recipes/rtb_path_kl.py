"""Where a trained RTB / VarGrad posterior of the MNIST guidance recipe spends its KL, step by step,
beside the exact posterior's decomposition on the same prior and schedule.

    python recipes/rtb_path_kl.py --run DIR [--exact] [--frozen-final-steps M] [--json FILE]

DIR is an output folder of ``recipes/mnist_classifier_guidance.py --methods rtb`` (its metrics.json
and rtb_checkpoint.pt; the prior and classifier come from the same --cache). Prints, per step, the
transition variance and the sampler's path KL E_q[log q_k - log p_k]; the ELBO, an importance-
sampled log Z, the ESS and the spread of the log-weights. ``--exact`` adds the exact posterior's
per-step KL (SIR paths, prior continuations for h_k; see ``posterior/path_kl.py``: its log h is
biased low at early steps, and the report gives that bias at the first step). ``--frozen-final-steps``
evaluates the same weights with more (or fewer) trailing steps left to the prior: a step whose KL
buys little reward shows up as a higher ELBO when it is handed back to the prior.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mnist_classifier_guidance as guidance_recipe  # noqa: E402
from posterior.constraints.classifier import ClassifierLikelihood  # noqa: E402
from posterior.training import checkpoint  # noqa: E402
from posterior.diffusion.diffusion_posterior import DiffusionPosterior, DiffusionPriorPath  # noqa: E402
from posterior.diffusion.learned_variance import LearnedVarianceDenoiser  # noqa: E402
from posterior.diffusion.lora import lora_denoiser  # noqa: E402
from posterior.evaluation.path_kl import exact_posterior_path_kl, sampler_path_kl  # noqa: E402
from posterior.training.weight_average import WeightAverage  # noqa: E402
from posterior.priors.diffusion import DiffusionPrior  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="output folder of mnist_classifier_guidance.py with an RTB checkpoint")
    p.add_argument("--cache", default="runs/mnist_guidance_cache", help="the run's trained prior and classifier")
    p.add_argument("--classifier-epochs", type=int, default=30, help="the run's --classifier-epochs")
    p.add_argument("--samples", type=int, default=256, help="posterior trajectories for the sampler's report")
    p.add_argument("--frozen-final-steps", type=int, default=None,
                   help="trailing steps that use the prior's denoiser (default: the run's)")
    p.add_argument("--exact", action="store_true", help="also the exact posterior's per-step KL")
    p.add_argument("--pool", type=int, default=4096, help="--exact: prior trajectories for SIR")
    p.add_argument("--paths", type=int, default=256, help="--exact: posterior paths")
    p.add_argument("--continuations", type=int, default=16, help="--exact: prior continuations per path and step")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the report here (default: RUN/path_kl.json)")
    args = p.parse_args(argv)
    for flag, minimum in (("classifier_epochs", 1), ("samples", 2), ("pool", 2), ("paths", 2), ("continuations", 1)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag.replace('_', '-')} must be an integer >= {minimum}, got {getattr(args, flag)}")
    if args.exact and args.pool < args.paths:
        p.error(f"--pool must be >= --paths (SIR keeps --paths of the pool), got {args.pool} < {args.paths}")
    if args.frozen_final_steps is not None and args.frozen_final_steps < 0:
        p.error(f"--frozen-final-steps must be an integer >= 0, got {args.frozen_final_steps}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be an integer >= 1, got {args.threads}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    for needed in (run / "metrics.json", run / "rtb_checkpoint.pt"):
        if not needed.exists():
            raise SystemExit(f"{needed} not found: --run must be an RTB output folder of mnist_classifier_guidance.py")
    metrics = json.loads((run / "metrics.json").read_text())
    if "rtb" not in metrics.get("methods", {}):
        raise SystemExit(f"{run / 'metrics.json'} has no RTB entry")
    if args.frozen_final_steps is not None and args.frozen_final_steps >= int(metrics["steps"]):
        raise SystemExit(f"--frozen-final-steps must be below the run's {metrics['steps']} steps, "
                         f"got {args.frozen_final_steps}")
    setup = guidance_recipe.parse_args(["--out", str(run), "--cache", args.cache, "--size", str(metrics["size"]),
                                        "--prior", "train" if metrics.get("prior") != "shipped" else "shipped",
                                        "--steps", str(metrics["steps"]), "--classifier-epochs",
                                        str(args.classifier_epochs)])
    size = int(metrics["size"])
    device = torch.device("cpu")
    if metrics.get("prior") == "shipped":  # the prior and classifier that ship with posterior
        from posterior.constraints.digit_classifier import mnist_classifier
        from posterior.priors.mnist import mnist_prior

        prior, classifier = mnist_prior(int(metrics["steps"])), mnist_classifier()
    else:  # runs with --prior train (and runs from before the shipped prior): the run's --cache
        if not (Path(args.cache) / f"ddpm{size}" / "config.json").exists():
            raise SystemExit(f"no trained prior in {args.cache}/ddpm{size}: pass the run's --cache")
        if not (Path(args.cache) / f"classifier{size}-e{args.classifier_epochs}.safetensors").exists():
            raise SystemExit(f"no classifier{size}-e{args.classifier_epochs} in {args.cache}: pass the run's "
                             f"--cache and --classifier-epochs")
        unet, scheduler, _ = guidance_recipe.load_or_train_prior(setup, None, device)
        classifier, _ = guidance_recipe.load_or_train_classifier(setup, None, None, device)
        prior = DiffusionPrior(unet, scheduler, int(metrics["steps"]), (1, size, size))
    likelihood = ClassifierLikelihood(classifier, target_classes=int(metrics["target_class"]))
    beta = float(metrics["beta"])
    entry = metrics["methods"]["rtb"]
    trained_frozen = int(entry["frozen_final_steps"])
    frozen = trained_frozen if args.frozen_final_steps is None else args.frozen_final_steps
    if entry.get("rtb_guidance"):
        raise SystemExit(f"{run} trained a guided posterior (--rtb-guidance); this report reads plain and LoRA runs")
    lora_rank = int(entry.get("rtb_lora") or 0)  # runs from before LoRA have no key: a full copy
    model = lora_denoiser(prior.denoiser, rank=lora_rank, alpha=entry.get("lora_alpha")) if lora_rank else None
    if entry.get("rtb_learned_variance"):
        model = LearnedVarianceDenoiser(model if model is not None else prior.posterior_copy(), prior)
    posterior = DiffusionPosterior(prior, model, frozen_final_steps=frozen)
    state = checkpoint.load(run / "rtb_checkpoint.pt", map_location=device)
    posterior.model.load_state_dict(state["model"])
    if state.get("ema"):  # the run sampled with the average of its weights (--rtb-ema): report that posterior
        average = WeightAverage([p for p in posterior.model.parameters() if p.requires_grad], state["ema"]["decay"])
        average.load_state_dict(state["ema"])
        average.copy_to_parameters()
    path = DiffusionPriorPath(prior, likelihood, beta=beta)
    generator = torch.Generator().manual_seed(args.seed)
    sampler = sampler_path_kl(posterior, path, args.samples, generator=generator)
    report = {"run": str(run), "rtb_iters": int(state["iteration"]), "frozen_final_steps": frozen,
              "trained_frozen_final_steps": trained_frozen, "timesteps": prior.timesteps.tolist(),
              "step_variance": prior.step_var.tolist(), "sampler": sampler.to_dict()}
    exact = None
    if args.exact:
        exact = exact_posterior_path_kl(path, pool=args.pool, paths=args.paths, continuations=args.continuations,
                                        generator=generator)
        report["exact"] = exact.to_dict()
        report["exact_settings"] = {"pool": args.pool, "paths": args.paths, "continuations": args.continuations}
    print(f"{run}: {report['rtb_iters']} iterations, {frozen} frozen final steps")
    print("step  timestep  variance  sampler KL" + ("  exact KL" if exact else ""))
    for k, (t, v, kl) in enumerate(zip(report["timesteps"], report["step_variance"], sampler.step_kl)):
        print(f"{k:4d}  {t:8d}  {v:8.4f}  {kl:10.3f}" + (f"  {exact.step_kl[k]:8.3f}" if exact else ""))
    print(f"sampler: path KL {sampler.path_kl:.3f}, E[beta log r] {sampler.mean_log_reward:.3f}, ELBO {sampler.elbo:.3f}, "
          f"IS log Z {sampler.log_z:.3f}, ESS {sampler.ess_share:.3f}, log-weight std {sampler.log_weight_std:.3f}")
    if exact:
        print(f"exact posterior: path KL {exact.path_kl:.3f}, E[beta log r] {exact.mean_log_reward:.3f}, "
              f"SIR log Z {exact.log_z:.3f}, Monte Carlo bias of log h at the first step {exact.start_bias:.3f}")
    checkpoint.write_json(report, args.json or run / "path_kl.json")
    return report


if __name__ == "__main__":
    main()
