"""Inpainting under the shipped MNIST diffusion prior: one posterior amortized over measurements.

    python recipes/mnist_inpainting.py --out DIR [--iters 1000] [--train-digits 2000] [--eval-digits 20]
    accelerate launch --num_processes 2 recipes/mnist_inpainting.py --out DIR     # several processes

A measurement y is the top half of a 14x14 digit with Gaussian noise (std 0.1); the posterior is
p(x | y) ∝ p_prior(x) N(y; top half of x, 0.1^2 I). One data-space posterior (the prior's UNet fine-tuned, the
measurement through a CNN encoder added at zero) is trained on measurements of --train-digits training digits
(``fit(space="data", conditions=y)``), then evaluated on --eval-digits held-out digits (the shipped prior's split:
neither the prior nor the posterior saw them). Per held-out y:

- amortized: the ELBO of log Z(y) (--eval-k trajectories) and its gap to SIR's log Z; the posterior mean of
  --num-samples samples and its PSNR against the true lower half (range [-1, 1], peak 2);
- dps: diffusion posterior sampling (guidance ζ ∇ log r(x̂_0), --dps-scale) with the same number of samples;
- sir-matched: SIR from --num-samples prior samples (the amortized sampler's denoiser evaluations);
- sir: SIR from a pool of --sir-pool prior samples (the reference log Z(y) and posterior mean).

Writes DIR/metrics.json (per-y rows and means) and DIR/inpainting.png (rows: truth, measurement, amortized mean,
DPS mean, SIR mean). ``--resume`` with the same --iters re-evaluates a finished run without training.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import posterior  # noqa: E402
from posterior.baselines.guidance import guided_sample  # noqa: E402
from posterior.training.cpu_allocator import retain_freed_memory  # noqa: E402
from posterior.training.distributed import bucketed_gradient_sync, end_run  # noqa: E402
from _mnist_diffusion import (add_prior_flags, inpainting_likelihood, load_prior_and_classifier,  # noqa: E402
                              sir_reference, split_digits)



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    add_prior_flags(p)
    p.add_argument("--objective", choices=("rtb", "vargrad", "pis"), default="vargrad")
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8, help="measurements per iteration")
    p.add_argument("--samples-per-condition", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-condition", type=float, default=None,
                   help="learning rate of the condition table / encoder (default 300 x --lr; TrainConfig.lr_condition)")
    p.add_argument("--guidance", type=float, default=0.0, metavar="G",
                   help="start the posterior from the likelihood-guided sampler: learned per-step scales of "
                        "var_k grad log r(x0_prior, y) from G x alpha_bar (SamplerConfig.guidance; 0: off)")
    p.add_argument("--lr-guidance", type=float, default=None,
                   help="learning rate of the guidance scales (default 100 x --lr; TrainConfig.lr_guidance)")
    p.add_argument("--train-digits", type=int, default=2000)
    p.add_argument("--eval-digits", type=int, default=20)
    p.add_argument("--num-samples", type=int, default=64, help="samples per held-out y (posterior means)")
    p.add_argument("--eval-k", type=int, default=256, help="trajectories per held-out y for the ELBO")
    p.add_argument("--sir-pool", type=int, default=16384)
    p.add_argument("--dps-scale", type=float, default=0.01,
                   help="DPS step ζ on ∇ log r(x̂_0) (0.01: the best lower-half PSNR of 0.003-1 on 8 held-out digits; "
                        "1.0 diverges)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for flag, minimum in (("steps", 1), ("iters", 1), ("batch", 1), ("samples_per_condition", 1), ("train_digits", 1),
                          ("eval_digits", 1), ("num_samples", 2), ("eval_k", 2), ("sir_pool", 2), ("threads", 1),
                          ("checkpoint_every", 0)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag.replace('_', '-')} must be an integer >= {minimum}, got {getattr(args, flag)}")
    for flag in ("lr", "dps_scale"):
        if not (math.isfinite(getattr(args, flag)) and getattr(args, flag) > 0):
            p.error(f"--{flag.replace('_', '-')} must be a finite number > 0, got {getattr(args, flag)}")
    if not (math.isfinite(args.guidance) and args.guidance >= 0):
        p.error(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if args.lr_guidance is not None and not (math.isfinite(args.lr_guidance) and args.lr_guidance > 0):
        p.error(f"--lr-guidance must be a finite number > 0, got {args.lr_guidance}")
    if args.guidance and args.objective == "pis":
        p.error("--guidance must be 0 with --objective pis (the pathwise KL takes no guided mean)")
    if args.objective == "vargrad" and args.samples_per_condition < 2:
        p.error("--samples-per-condition must be >= 2 with --objective vargrad (a variance per measurement)")
    return args


def psnr(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """10 log10(peak^2 / MSE) with peak 2 (the data range [-1, 1])."""
    mse = float(((estimate.clamp(-1, 1) - truth) ** 2).mean())
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def main(argv: list[str] | None = None) -> dict | None:
    from accelerate import Accelerator

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from accelerate.utils import is_tensorboard_available

    trackers = "tensorboard" if is_tensorboard_available() else None  # loss curves for a tracker, when installed
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=trackers, project_dir=args.out)
    if trackers:
        accelerator.init_trackers("mnist_inpainting", config={k: v for k, v in vars(args).items()
                                                              if isinstance(v, (int, float, str, bool))})
    device = accelerator.device
    if device.type == "cpu":
        retain_freed_memory()
    out = Path(args.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    prior, _ = load_prior_and_classifier(args, device)
    side = prior.event_shape[-1]
    likelihood, mask = inpainting_likelihood(prior)
    likelihood = likelihood.to(device)
    digits, source = split_digits(args.data_dir, side)
    if args.train_digits > len(digits["train_x"]) or args.eval_digits > len(digits["test_x"]):
        raise SystemExit(f"--train-digits / --eval-digits: {source} has {len(digits['train_x'])} training and "
                         f"{len(digits['test_x'])} held-out digits")
    noise = torch.Generator().manual_seed(args.seed + 5)
    train_y = likelihood.sample_observation(digits["train_x"][: args.train_digits].to(device), noise)
    truth = digits["test_x"][: args.eval_digits].to(device)
    test_y = likelihood.sample_observation(truth, noise)

    config = posterior.TrainConfig(iterations=args.iters, batch_size=args.batch,
                                   samples_per_condition=args.samples_per_condition, lr=args.lr,
                                   lr_condition=args.lr_condition, lr_guidance=args.lr_guidance, seed=args.seed,
                                   checkpoint_every=args.checkpoint_every)
    start = time.perf_counter()
    model = posterior.fit(prior, likelihood, train_y, space="data", objective=args.objective, config=config,
                          sampler=posterior.SamplerConfig(guidance=args.guidance),
                          checkpoint_dir=out, resume=args.resume, progress=not args.no_progress and
                          accelerator.is_main_process, process_index=accelerator.process_index,
                          gradient_sync=bucketed_gradient_sync(accelerator), log=accelerator.log if trackers else None)
    train_seconds = time.perf_counter() - start
    end_run(accelerator)
    if not accelerator.is_main_process:
        return None
    model.save_pretrained(out / "posterior")
    history = model.training_history

    g = torch.Generator(device=device).manual_seed(args.seed + 17)
    n, lower = args.num_samples, ~mask
    reference = sir_reference(prior, args.sir_pool,
                              lambda x: likelihood.log_likelihood(x[:, None].expand(-1, len(test_y), *x.shape[1:])
                                                                  .reshape(-1, *x.shape[1:]),
                                                                  test_y.repeat(x.shape[0], 1, 1, 1))
                              .reshape(x.shape[0], len(test_y)), generator=g, chunk=256)
    with torch.no_grad():
        estimates = model.log_z(test_y, args.eval_k, generator=g)
        amortized = model.sample(test_y, n, generator=g)  # (E, n, 1, H, W)
    repeated = test_y.repeat_interleave(n, 0)
    dps, dps_nfe = guided_sample(prior, lambda x: likelihood.log_likelihood(x, repeated), len(test_y) * n,
                                 mode="dps", scale=args.dps_scale, generator=g)
    dps = dps.reshape(len(test_y), n, *prior.event_shape)
    rows, means = [], {"amortized": [], "dps": [], "sir-matched": [], "sir": []}
    for i in range(len(test_y)):
        weights = torch.softmax(reference["log_w"][:, i], 0).to(reference["x"].dtype)
        sir_mean = (weights.reshape(-1, 1, 1, 1) * reference["x"]).sum(0)
        small = reference["x"][i * n % args.sir_pool:][:n]  # n prior samples of the pool (matched evaluations)
        small_w = torch.softmax(reference["log_w"][i * n % args.sir_pool:][:n, i], 0).to(small.dtype)
        matched_mean = (small_w.reshape(-1, 1, 1, 1) * small).sum(0)
        means["amortized"].append(amortized[i].mean(0))
        means["dps"].append(dps[i].mean(0))
        means["sir-matched"].append(matched_mean)
        means["sir"].append(sir_mean)
        elbo, sir_log_z = float(estimates["elbo"][i]), float(reference["log_z"][i])
        rows.append({"digit": int(digits["test_y"][i]), "sir_log_z": sir_log_z, "sir_ess": float(reference["ess"][i]),
                     "elbo": elbo, "elbo_gap": sir_log_z - elbo, "log_z_rw": float(estimates["rw"][i]),
                     **{f"psnr_{m}": psnr(means[m][-1][lower], truth[i][lower]) for m in means}})
    summary = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0] if key != "digit"}
    metrics = {"summary": summary, "per_measurement": rows, "train_seconds": train_seconds,
               "seconds_per_iter": history.median_seconds(), "iterations": len(history.loss),
               "loss_curve": history.loss, "log_z_batch_curve": history.log_z_batch_curve(window=50),
               "nfe_per_sample": {"amortized": prior.num_steps, "dps": dps_nfe, "sir-matched": prior.num_steps,
                                  "sir": prior.num_steps * args.sir_pool},
               "processes": accelerator.num_processes, "threads": args.threads, "steps": args.steps,
               "objective": args.objective, "guidance": args.guidance, "train_digits": args.train_digits,
               "eval_digits": args.eval_digits,
               "data_source": source, "seed": args.seed,
               "trajectories_per_iter": args.batch * args.samples_per_condition * accelerator.num_processes}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    grid = torch.cat([truth[:8], test_y[:8]] + [torch.stack(means[m][:8]) for m in ("amortized", "dps", "sir")])
    save_image((grid.clamp(-1, 1) + 1) / 2, out / "inpainting.png", nrow=min(8, len(truth)))
    print(json.dumps({k: round(v, 3) for k, v in summary.items()}))
    return metrics


if __name__ == "__main__":
    main()
