"""Where the main job's time goes: log Ẑ and log Ẑ_RW against training iterations, with and without the
VAE encoder as proposal, beside the encoder's own ELBO and IWAE.

    python recipes/mnist_vae_curve.py                      # iterations 0, 100, 300, 1000, 2000; 20 images, K = 500
    python recipes/mnist_vae_curve.py --points 0,100,300 --images 10 --eval-k 200 --out DIR

Each arm is one training run of the main job's defaults (recipes/mnist_vae_posterior.py), stopped at each
point, evaluated, and resumed from its checkpoint (a resumed run continues the same run bit for bit).
Iteration 0 is the untrained sampler (one step at a learning rate of 1e-12): with the proposal, the encoder
itself. Writes curve.json and curve.png.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import posterior  # noqa: E402
from posterior.constraints.likelihoods import BernoulliImageLikelihood  # noqa: E402
from posterior.data import load_evaluation_subset, mnist_training_images, offline_evaluation_split  # noqa: E402
from posterior.priors.vae import MLPVAE, VAEDecoderPrior, train_vae  # noqa: E402
from _paths import data_dir, torchvision_roots  # noqa: E402
from mnist_vae_posterior import evaluate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", default="0,100,300,1000,2000", help="iterations at which both arms are evaluated")
    p.add_argument("--images", type=int, default=20, help="evaluation images (the first of the main job's 100)")
    p.add_argument("--eval-k", type=int, default=500)
    p.add_argument("--reference-k", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--samples-per-condition", type=int, default=10)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--langevin", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache", default="runs/cache/mnist_vae.safetensors")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="runs/mnist_vae_curve")
    args = p.parse_args(argv)
    try:
        args.points = sorted({int(v) for v in args.points.split(",") if v})
    except ValueError:
        p.error(f"--points must be comma-separated integers, got {args.points!r}")
    if not args.points or args.points[0] < 0:
        p.error("--points must hold integers >= 0")
    # --samples-per-condition >= 2: both arms train with VarGrad, a variance over each image's trajectories
    for flag, minimum in (("images", 1), ("batch", 1), ("samples_per_condition", 2), ("steps", 1), ("threads", 1),
                          ("eval_k", 2), ("reference_k", 2)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag.replace('_', '-')} must be an integer >= {minimum}, got {getattr(args, flag)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    posterior.retain_freed_memory()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shared = data_dir(args.data_dir)
    weights = shared / "reference_mnist_vae.safetensors"
    if weights.exists():
        vae = MLPVAE.from_safetensors(weights)
    elif Path(args.cache).exists():
        vae = MLPVAE.from_safetensors(args.cache)
    else:
        vae = train_vae(mnist_training_images(shared, None, torchvision_roots(shared)), epochs=20, seed=args.seed,
                        log_every=0 if args.no_progress else 2)
        vae.save_safetensors(args.cache)
    vae = vae.eval().requires_grad_(False)
    conditions = mnist_training_images(shared, None, torchvision_roots(shared))
    try:
        images = load_evaluation_subset(shared)
    except FileNotFoundError:
        images = offline_evaluation_split()[1]
    images = images[: args.images]
    likelihood = BernoulliImageLikelihood()
    prior = VAEDecoderPrior(vae)
    eval_args = argparse.Namespace(seed=args.seed, eval_k=args.eval_k, reference_k=args.reference_k, steps=args.steps)
    curves: dict[str, list[dict]] = {}
    baseline = None
    for arm in ("encoder", "none"):
        proposal = vae.proposal() if arm == "encoder" else None
        run_dir = out / f"proposal-{arm}"
        curves[arm] = []
        for point in args.points:
            start = time.perf_counter()
            untrained = point == 0
            config = posterior.TrainConfig(iterations=max(point, 1), batch_size=args.batch,
                                           samples_per_condition=args.samples_per_condition, steps=args.steps,
                                           seed=args.seed, lr=1e-12 if untrained else 1e-3,
                                           lr_flow=1e-12 if untrained else None)
            model = posterior.fit(prior, likelihood, conditions, proposal=proposal, config=config,
                                  sampler=posterior.SamplerConfig(langevin=args.langevin, encoder="cnn"),
                                  checkpoint_dir=None if untrained else run_dir,
                                  resume=not untrained and (run_dir / "checkpoint.pt").exists(),
                                  progress=not args.no_progress)
            rows = evaluate(model, vae, likelihood, images, list(range(len(images))), eval_args, torch.device("cpu"),
                            progress=False)
            entry = {"iteration": point, "log_z": statistics.fmean(r["sampler_log_z_elbo"] for r in rows),
                     "log_z_rw": statistics.fmean(r["sampler_log_z_rw"] for r in rows),
                     "train_seconds_total": sum(model.training_history.seconds) if not untrained else 0.0,
                     "seconds": time.perf_counter() - start}
            curves[arm].append(entry)
            baseline = baseline or {"encoder_elbo": statistics.fmean(r["encoder_elbo"] for r in rows),
                                    "encoder_iwae": statistics.fmean(r["encoder_iwae"] for r in rows),
                                    "reference_log_px": statistics.fmean(r["reference_log_px"] for r in rows)}
            print(f"proposal {arm:<8} iteration {point:>5}: log Ẑ {entry['log_z']:.3f}  log Ẑ_RW {entry['log_z_rw']:.3f}"
                  f"  (training so far {entry['train_seconds_total']:.0f} s)", flush=True)
    result = {"curves": curves, "baselines": baseline, "images": args.images, "eval_k": args.eval_k,
              "reference_k": args.reference_k, "flags": {k: v for k, v in vars(args).items() if k != "out"}}
    (out / "curve.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "curve.png")
    return result


def plot(result: dict, path: Path) -> None:
    from posterior.evaluation.plotting import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    base = result["baselines"]
    for ax, key, label, line in ((axes[0], "log_z", "log Ẑ (ELBO)", base["encoder_elbo"]),
                                 (axes[1], "log_z_rw", "log Ẑ_RW (importance weighted)", base["encoder_iwae"])):
        for arm, style in (("encoder", "o-"), ("none", "s--")):
            points = result["curves"][arm]
            ax.plot([max(p["iteration"], 1) for p in points], [p[key] for p in points], style,
                    label="from the encoder (proposal)" if arm == "encoder" else "from a point mass")
        ax.axhline(line, c="k", lw=0.8, ls=":", label="VAE encoder " + ("ELBO" if key == "log_z" else "IWAE"))
        ax.axhline(base["reference_log_px"], c="gray", lw=0.8, ls="-.", label=f"IWAE, K = {result['reference_k']}")
        ax.set_xscale("log")
        ax.set_xlabel("training iterations (0 plotted at 1)")
        ax.set_ylabel(label)
        values = [p[key] for arm in result["curves"] for p in result["curves"][arm]]
        trained = [p[key] for arm in result["curves"] for p in result["curves"][arm] if p["iteration"] > 0] or values
        low = min(min(trained), line) - 3.0  # untrained points far below are named instead of squashing the rest
        ax.set_ylim(low, max(max(values), base["reference_log_px"]) + 0.5)
        for arm in result["curves"]:
            for p in result["curves"][arm]:
                if p[key] < low:
                    ax.annotate(f"iteration {p['iteration']}, {'encoder' if arm == 'encoder' else 'point mass'}: "
                                f"{p[key]:.1f}", (1, low), xytext=(2, 4), textcoords="offset points", fontsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(f"MNIST VAE posterior, {result['images']} images, K = {result['eval_k']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
