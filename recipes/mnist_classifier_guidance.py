"""Class-conditional sampling under an MNIST diffusion prior: RTB, noise-space TB, DPS,
classifier guidance on x0_hat, and sampling-importance-resampling, on the same prior and reward.

    python recipes/mnist_classifier_guidance.py --out DIR [--class 7] [--size 14] [--methods rtb,noise,dps,cg,sir]

CPU defaults: 14x14 digits, a small diffusers UNet trained here as a DDPM (cached in --cache), a
small CNN classifier (cached), a 20-step strided schedule. ``--size 28`` (with more iterations) is
the full-resolution version for a GPU. The posterior is p(x | c) ∝ p_prior(x) p(c | x)^beta.

Writes DIR/metrics.json with one entry per method: mean_log_r (log p(c | x) under the classifier),
class_share (share classified as c), diversity (mean pairwise distance of classifier features),
frechet (Fréchet distance in that feature space to real digits of class c), seconds_train,
seconds_per_sample, nfe_per_sample (denoiser evaluations per sample, training excluded); and
DIR/<method>.png grids. RTB also records its batch log Z estimates (an ELBO, every 100 iterations)
and keeps DIR/rtb_checkpoint.pt, so ``--resume`` continues a run (``--rtb-iters`` may grow).
``--rtb-resample K`` adds an ``rtb_resampled`` entry: K trained-posterior trajectories per sample,
resampled by their importance weights (SIR with the sampler as proposal; exact as K grows); with ``--classes``,
``--class-resample K`` scores every trained posterior sampled with ``proposals=K`` (its own K per sample).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torchvision.utils import save_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # recipes/_paths.py: where the shared data is

from posterior.constraints.classifier import ClassifierLikelihood  # noqa: E402
from posterior.constraints.digit_classifier import SmallCNN, train_classifier  # noqa: E402
from posterior.training import checkpoint  # noqa: E402
from posterior.training.cpu_allocator import retain_freed_memory  # noqa: E402
from posterior.training.importance_pool import ImportancePool  # noqa: E402
from posterior.diffusion.lora import lora_denoiser, trainable_parameter_count  # noqa: E402
from _mnist_diffusion import labeled_digits  # noqa: E402
from posterior.diffusion.diffusion_posterior import NEAR_DETERMINISTIC_VARIANCE, DiffusionPosterior, DiffusionPriorPath  # noqa: E402
from posterior.samplers.factory import make_sampler  # noqa: E402
from posterior.objectives.factory import make_objective  # noqa: E402
from posterior.baselines.guidance import guided_sample, sampling_importance_resampling  # noqa: E402
from posterior.targets import sampler_target  # noqa: E402
from posterior.objectives import PathIntegral, RelativeTrajectoryBalance, VarGrad  # noqa: E402
from posterior.paths.path_target import BoltzmannPath  # noqa: E402
from posterior.evaluation.posterior_resampling import resample_posterior  # noqa: E402
from posterior.training.importance_pool import PoolTraining  # noqa: E402
from posterior.training.replay import ReplayConfig  # noqa: E402
from posterior.diffusion.guided_denoiser import GuidedDenoiser  # noqa: E402
from posterior.diffusion.learned_variance import LearnedVarianceDenoiser  # noqa: E402
from posterior.evaluation.sample_quality import frechet_distance, mean_pairwise_distance  # noqa: E402
from posterior.training.config import TrainConfig  # noqa: E402
from posterior.training.engine import Trainer  # noqa: E402
from posterior.priors.ddpm_training import small_unet, train_ddpm  # noqa: E402
from posterior.priors.diffusion import DiffusionPrior  # noqa: E402

PAPER = {"rtb": -0.173, "dps": -2.160, "lgd_mc": -2.139}  # RTB paper, MNIST classifier guidance, E[log r]
METHODS = ("rtb", "noise", "dps", "cg", "sir")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--class", dest="target_class", type=int, default=7)
    p.add_argument("--size", type=int, default=14, help="image side (14 on a CPU, 28 on a GPU)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--classes", type=parse_classes, default=None, metavar="0-9",
                   help="train one posterior amortized over these classes (e.g. 0-9 or 1,3,7) beside one per class "
                        "and SIR; see --class-methods (the --methods of one class are not run)")
    p.add_argument("--class-methods", default=",".join(CLASS_METHODS), help="with --classes")
    p.add_argument("--class-iters", type=int, default=1000,
                   help="with --classes: iterations of the amortized posterior; the per-class posteriors share them")
    p.add_argument("--class-batch", type=int, default=8, help="with --classes: classes per iteration")
    p.add_argument("--samples-per-condition", type=int, default=4, help="with --classes: trajectories per class")
    p.add_argument("--class-objective", choices=("rtb", "vargrad", "pis"), default="vargrad",
                   help="with --classes: rtb (learned log Z(y)), vargrad (grouped per class), pis (pathwise KL)")
    p.add_argument("--eval-k", type=int, default=256, help="with --classes: trajectories per class for the ELBO")
    p.add_argument("--class-resample", type=parse_counts, default=[], metavar="K[,K...]",
                   help="with --classes: also score every trained posterior resampled from K proposals per sample "
                        "(Posterior.sample(proposals=K)), one entry METHOD_resampledK per K (e.g. 4,8)")
    p.add_argument("--class-guidance", type=float, default=0.0, metavar="G",
                   help="with --classes: start every trained posterior (amortized and per class) from the reward-guided "
                        "sampler, learned per-step scales from G x alpha_bar (SamplerConfig.guidance; 0: off)")
    p.add_argument("--class-norms", action="store_true",
                   help="with --classes: the amortized posterior also gets a per-class scale and shift on every "
                        "GroupNorm of its UNet (SamplerConfig.class_norms)")
    p.add_argument("--class-rank", type=int, default=0, metavar="R",
                   help="with --classes: the amortized posterior also gets a rank-R adapter per class on every Conv2d / "
                        "Linear of its UNet (SamplerConfig.class_rank; 0: none)")
    p.add_argument("--freeze-denoiser", action="store_true",
                   help="with --classes: the amortized posterior trains only its class table (and --class-norms, guidance "
                        "scales); the UNet's weights stay the prior's (SamplerConfig.freeze_denoiser)")
    p.add_argument("--lr-condition", type=float, default=None,
                   help="learning rate of the condition table / encoder (default 300 x --lr; TrainConfig.lr_condition)")
    p.add_argument("--prior", choices=("shipped", "train"), default="shipped",
                   help="shipped: the 14x14 prior and classifier that come with posterior (posterior.priors.mnist_prior); "
                        "train: train them here into --cache (--size, --ddpm-iters, --classifier-epochs)")
    p.add_argument("--cache", default="runs/mnist_guidance_cache", help="with --prior train: trained prior and classifier")
    p.add_argument("--data-dir", default=None,
                   help="folder with the MNIST test set (default $POSTERIOR_DATA_DIR or ../shared/data)")
    p.add_argument("--steps", type=int, default=None,
                   help="schedule length (default 20 for one class, 10 with --classes)")
    p.add_argument("--ddpm-iters", type=int, default=3000)
    p.add_argument("--ddpm-batch", type=int, default=128)
    p.add_argument("--classifier-epochs", type=int, default=30)
    p.add_argument("--beta", type=float, default=1.0, help="posterior ∝ prior x p(c | x)^beta")
    p.add_argument("--rtb-iters", type=int, default=300)
    p.add_argument("--noise-iters", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4, help="RTB learning rate")
    p.add_argument("--lr-decay-horizon", type=int, default=0,
                   help="RTB: cosine decay of --lr (and --lr-guidance) over this many iterations (0: constant)")
    p.add_argument("--lr-decay-final", type=float, default=0.1,
                   help="RTB: the learning rate's multiplier at the end of the decay")
    p.add_argument("--rtb-ema", type=float, default=0.0, metavar="DECAY",
                   help="RTB: sample with an exponential moving average of the posterior's weights (e.g. 0.99; 0: off)")
    p.add_argument("--hinge", type=float, default=0.1, help="RTB hinge on squared residuals")
    p.add_argument("--rtb-objective", choices=("rtb", "vargrad", "kl"), default="rtb",
                   help="rtb: learned scalar log Z (with --hinge); vargrad: the batch's own log Z estimate; "
                        "kl: the pathwise (reparameterized) reverse KL through the classifier's gradient "
                        "(on-policy only: no --rtb-explore, --rtb-replay, or --rtb-pool without --rtb-forward-kl)")
    p.add_argument("--rtb-explore", type=float, default=0.0,
                   help="RTB: extra per-step variance at the first iteration, decayed linearly to 0")
    p.add_argument("--rtb-replay", action="store_true",
                   help="RTB: rank-prioritized buffer of terminal states; every other iteration trains on "
                        "backward (noised) trajectories from it")
    p.add_argument("--rtb-pool", type=int, default=0, metavar="P",
                   help="RTB: every other iteration trains on prior trajectories resampled from a pool of P "
                        "with weights r^beta (SIR over whole paths, drawn once; 0: off; not with --rtb-replay)")
    p.add_argument("--rtb-forward-kl", type=float, default=0.0, metavar="L",
                   help="RTB: add L times the posterior's negative log-likelihood of a batch of --rtb-pool paths "
                        "to every iteration (a mass-covering forward-KL term; needs --rtb-pool; 0: off)")
    p.add_argument("--rtb-forward-kl-horizon", type=int, default=0, metavar="N",
                   help="RTB: cosine-decay the --rtb-forward-kl weight over the first N iterations (0: constant)")
    p.add_argument("--rtb-forward-kl-final", type=float, default=0.0, metavar="F",
                   help="RTB: the forward-KL weight's multiplier at and after --rtb-forward-kl-horizon")
    p.add_argument("--rtb-step-fraction", type=float, default=1.0,
                   help="RTB: share of the steps whose gradient is accumulated per iteration (unbiased)")
    p.add_argument("--rtb-guidance", type=float, default=0.0,
                   help="RTB: initial scale w of the learned per-step guidance term w_k var_k grad log r(x0_prior) "
                        "in the posterior's mean (1: first-order posterior correction; 0: off)")
    p.add_argument("--rtb-guidance-schedule", choices=("constant", "signal"), default="signal",
                   help="initial guidance scales: w for every step, or w * alpha_bar_k (off at pure noise)")
    p.add_argument("--lr-guidance", type=float, default=1e-2, help="learning rate of the guidance scales")
    p.add_argument("--rtb-lora", type=int, default=0,
                   help="RTB: train rank-R LoRA adapters on a frozen copy of the prior's UNet (0: fine-tune all weights)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator (update x alpha / rank; default rank)")
    p.add_argument("--rtb-learned-variance", action="store_true",
                   help="RTB: also learn each trained step's variance (a log-scale per step and pixel; not with "
                        "--rtb-guidance)")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="RTB: write DIR/rtb_checkpoint.pt every this many iterations (and at the end)")
    p.add_argument("--resume", action="store_true",
                   help="RTB: continue from DIR/rtb_checkpoint.pt (same settings; --rtb-iters may grow)")
    p.add_argument("--freeze-below", type=float, default=NEAR_DETERMINISTIC_VARIANCE,
                   help="RTB: trailing steps with transition variance below this keep the prior's denoiser")
    p.add_argument("--dps-scale", type=float, default=1.0)
    p.add_argument("--cg-scale", type=float, default=5.0)
    p.add_argument("--sir-pool", type=int, default=2048)
    p.add_argument("--rtb-resample", type=int, default=0, metavar="K",
                   help="RTB: also report an 'rtb_resampled' entry: K posterior trajectories per returned sample, "
                        "resampled with importance weights p_prior r^beta / q (the trained sampler as SIR's "
                        "proposal; 0: off)")
    p.add_argument("--num-samples", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 10 if args.classes else 20
    args.prior_dir = args.classifier_dir = None  # the shipped prior and classifier (recipes/_mnist_diffusion.py)
    class_methods = [m for m in args.class_methods.split(",") if m]
    unknown = sorted(set(class_methods) - set(CLASS_METHODS))
    if unknown:
        p.error(f"--class-methods: unknown {unknown}; must be names from {', '.join(CLASS_METHODS)}")
    if not class_methods:
        p.error(f"--class-methods must be at least one of {', '.join(CLASS_METHODS)}, got {args.class_methods!r}")
    if args.prior == "shipped" and args.size != 14:
        p.error(f"--size {args.size} needs --prior train (the shipped prior is 14x14)")
    for flag, minimum in (("class_iters", 1), ("class_batch", 1), ("samples_per_condition", 1), ("eval_k", 2)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag.replace('_', '-')} must be an integer >= {minimum}, got {getattr(args, flag)}")
    if args.class_objective == "vargrad" and args.samples_per_condition < 2:
        p.error("--samples-per-condition must be >= 2 with --class-objective vargrad (a variance per class)")
    for flag, minimum in (("size", 4), ("steps", 1), ("ddpm_iters", 1), ("ddpm_batch", 1), ("classifier_epochs", 1),
                          ("rtb_iters", 1), ("noise_iters", 1), ("batch", 1), ("sir_pool", 1), ("num_samples", 1),
                          ("rtb_pool", 0), ("rtb_lora", 0), ("rtb_resample", 0), ("checkpoint_every", 0)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag.replace('_', '-')} must be an integer >= {minimum}, got {getattr(args, flag)}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be an integer >= 1, got {args.threads}")
    for flag in ("beta", "lr", "lr_guidance", "dps_scale", "cg_scale", "freeze_below"):
        value = getattr(args, flag)
        if not (math.isfinite(value) and value > 0):
            p.error(f"--{flag.replace('_', '-')} must be a finite number > 0, got {value}")
    if args.lr_condition is not None and not (math.isfinite(args.lr_condition) and args.lr_condition > 0):
        p.error(f"--lr-condition must be a finite number > 0, got {args.lr_condition}")
    for flag in ("hinge", "rtb_explore", "rtb_guidance", "rtb_forward_kl", "rtb_ema", "class_guidance"):
        value = getattr(args, flag)
        if not (math.isfinite(value) and value >= 0):
            p.error(f"--{flag.replace('_', '-')} must be a finite number >= 0, got {value}")
    if args.class_guidance and args.class_objective == "pis":
        p.error("--class-guidance must be 0 with --class-objective pis (the pathwise KL takes no guided mean)")
    if args.rtb_ema >= 1:
        p.error(f"--rtb-ema must be a decay in [0, 1), got {args.rtb_ema}")
    if not 0 < args.rtb_step_fraction <= 1:
        p.error(f"--rtb-step-fraction must be in (0, 1], got {args.rtb_step_fraction}")
    if not 0 <= args.target_class <= 9:
        p.error(f"--class must be a digit class in 0..9, got {args.target_class}")
    return args


def load_or_train_prior(args, images: torch.Tensor, device: torch.device):
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(args.cache) / f"ddpm{args.size}"
    if (folder / "config.json").exists():
        unet = UNet2DModel.from_pretrained(folder, local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        info = json.loads((folder / "training.json").read_text())
    else:
        torch.manual_seed(args.seed)
        unet, scheduler = small_unet(args.size), DDPMScheduler(num_train_timesteps=1000, clip_sample=True)
        info = train_ddpm(unet.to(device), scheduler, images.to(device), iterations=args.ddpm_iters,
                          batch_size=args.ddpm_batch, generator=torch.Generator().manual_seed(args.seed),
                          progress=not args.no_progress)
        folder.mkdir(parents=True, exist_ok=True)
        unet.save_pretrained(folder)
        scheduler.save_pretrained(folder / "scheduler")
        (folder / "training.json").write_text(json.dumps(info))
    return unet.to(device).eval(), scheduler, info


def load_or_train_classifier(args, images, labels, device) -> tuple[SmallCNN, float]:
    from safetensors.torch import load_file, save_file

    path = Path(args.cache) / f"classifier{args.size}-e{args.classifier_epochs}.safetensors"
    model = SmallCNN()
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        accuracy = float(json.loads(path.with_suffix(".json").read_text())["train_accuracy"])
    else:
        torch.manual_seed(args.seed)
        accuracy = train_classifier(model, images, labels, epochs=args.classifier_epochs,
                                    generator=torch.Generator().manual_seed(args.seed))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), str(path))
        path.with_suffix(".json").write_text(json.dumps({"train_accuracy": accuracy}))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval(), accuracy


# ---------------------------------------------------------------------------- --classes: one amortized posterior
CLASS_METHODS = ("amortized", "per-class", "sir")


def parse_classes(text: str) -> list[int]:
    """"0-9" or "1,3,7" -> sorted distinct digit classes."""
    classes: set[int] = set()
    try:
        for part in text.split(","):
            if "-" in part:
                low, high = (int(v) for v in part.split("-"))
                classes.update(range(low, high + 1))
            elif part.strip():
                classes.add(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--classes must be digit classes like 0-9 or 1,3,7, got {text!r}") from None
    if not classes or min(classes) < 0 or max(classes) > 9:
        raise argparse.ArgumentTypeError(f"--classes must be digit classes in 0..9, got {text!r}")
    return sorted(classes)


def parse_counts(text: str) -> list[int]:
    """"4,8" -> [4, 8]: distinct integers >= 1."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be integers >= 1 like 4,8, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"must be integers >= 1 like 4,8, got {text!r}")
    return counts


def amortized_main(args: argparse.Namespace) -> dict | None:
    """One posterior for every class of --classes (fit(space="data", conditions=labels)) beside one posterior per
    class at the same total number of iterations and SIR with one prior pool; per-class metrics."""
    import posterior
    from accelerate import Accelerator

    from _mnist_diffusion import class_scores, load_prior_and_classifier, sir_reference, sir_resample, split_digits
    from posterior.training.distributed import bucketed_gradient_sync, end_run

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    out = Path(args.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    prior, classifier = load_prior_and_classifier(args, device)
    likelihood = ClassifierLikelihood(classifier)
    classes = args.classes
    labels = torch.tensor(classes, device=device)
    digits, source = split_digits(args.data_dir, prior.event_shape[-1])
    methods = [m for m in args.class_methods.split(",") if m]
    config = posterior.TrainConfig(iterations=args.class_iters, batch_size=args.class_batch,
                                   samples_per_condition=args.samples_per_condition, lr=args.lr,
                                   lr_condition=args.lr_condition, lr_guidance=args.lr_guidance,
                                   lr_decay_horizon=args.lr_decay_horizon, lr_decay_final=args.lr_decay_final,
                                   seed=args.seed, checkpoint_every=args.checkpoint_every)
    sampler = posterior.SamplerConfig(guidance=args.class_guidance)
    results: dict = {"classes": classes}
    trained: dict = {}
    if "amortized" in methods:
        start = time.perf_counter()
        model = posterior.fit(prior, likelihood, labels, space="data", objective=args.class_objective, config=config,
                              sampler=replace(sampler, class_norms=args.class_norms, class_rank=args.class_rank,
                                              freeze_denoiser=args.freeze_denoiser),
                              checkpoint_dir=out / "amortized", resume=args.resume,
                              progress=not args.no_progress,
                              process_index=accelerator.process_index,
                              gradient_sync=bucketed_gradient_sync(accelerator))
        history = model.training_history
        trained["amortized"] = (model, time.perf_counter() - start, history)
        if accelerator.is_main_process:
            model.save_pretrained(out / "amortized" / "posterior")
    end_run(accelerator)  # the last collective: per-class training and evaluation run on the main process alone
    if "per-class" in methods and accelerator.is_main_process:
        per_class = replace(config, iterations=max(1, args.class_iters // len(classes)), samples_per_condition=1,
                            batch_size=args.class_batch * args.samples_per_condition, lr_condition=None)
        for c in classes:
            start = time.perf_counter()
            model = posterior.fit(prior, lambda x, c=c: likelihood(x, torch.full((x.shape[0],), c, device=x.device)),
                                  space="data", objective=args.class_objective, config=per_class, sampler=sampler,
                                  checkpoint_dir=out / f"class{c}",
                                  resume=args.resume, progress=not args.no_progress)
            trained[f"class{c}"] = (model, time.perf_counter() - start, model.training_history)
    if not accelerator.is_main_process:
        return None
    g = torch.Generator(device=device).manual_seed(args.seed + 17)
    reference = sir_reference(prior, args.sir_pool, lambda x: likelihood.log_probs(x)[:, classes], generator=g)
    real = {c: classifier.features(digits["test_x"][digits["test_y"] == c].to(device)).detach() for c in classes}
    resampled = [(f"{m}_resampled{k}", m, k) for m in methods if m != "sir" for k in args.class_resample]
    g_resample = torch.Generator(device=device).manual_seed(args.seed + 29)  # leaves g's stream as without them
    rows: dict = {m: [] for m in methods + [name for name, _, _ in resampled]}
    n = args.num_samples
    for i, c in enumerate(classes):
        sir_log_z = float(reference["log_z"][i])
        for method in methods:
            if method == "sir":
                samples, elbo, seconds = sir_resample(reference, i, n, g), None, 0.0
            else:
                model, seconds, _ = trained["amortized"] if method == "amortized" else trained[f"class{c}"]
                y = labels[i:i + 1] if method == "amortized" else None
                samples = model.sample(y, n, generator=g).reshape(n, *prior.event_shape)
                estimate = model.log_z(y, args.eval_k, generator=g)
                elbo = float(estimate["elbo"][0] if y is not None else estimate["elbo"])
            row = {"class": c, **class_scores(samples, classifier, c, real[c]), "sir_log_z": sir_log_z,
                   "sir_ess": float(reference["ess"][i]),
                   "elbo": elbo, "elbo_gap": None if elbo is None else sir_log_z - elbo}
            rows[method].append(row)
            if i == 0 or method != "sir":
                save_image((samples[:64].clamp(-1, 1) + 1) / 2, out / f"{method}_class{c}.png", nrow=8)
        for name, method, k in resampled:  # the same posterior, K proposals per sample (exact as K grows)
            model = trained["amortized" if method == "amortized" else f"class{c}"][0]
            y = labels[i:i + 1] if method == "amortized" else None
            samples = model.sample(y, n, proposals=k, generator=g_resample).reshape(n, *prior.event_shape)
            # each proposal: its own steps plus the prior's density along its path (one prior call per step)
            rows[name].append({"class": c, **class_scores(samples, classifier, c, real[c]), "proposals": k,
                               "nfe_per_sample": 2 * k * args.steps})
            save_image((samples[:64].clamp(-1, 1) + 1) / 2, out / f"{name}_class{c}.png", nrow=8)
    for method in rows:
        table = rows[method]
        summary = {key: sum(r[key] for r in table) / len(table) for key in ("mean_log_r", "class_share", "diversity",
                                                                            "frechet")}
        if method in ("amortized", "per-class"):
            summary["elbo_gap"] = sum(r["elbo_gap"] for r in table) / len(table)
            histories = ([trained["amortized"][2]] if method == "amortized"
                         else [trained[f"class{c}"][2] for c in classes])
            summary["seconds_train"] = sum(sum(h.seconds) for h in histories)
            summary["iterations"] = sum(len(h.loss) for h in histories)
        elif method != "sir":
            summary["nfe_per_sample"] = table[0]["nfe_per_sample"]
        results[method] = {"summary": summary, "per_class": table}
        print(method, json.dumps({k: round(v, 4) for k, v in summary.items()}))
    if "amortized" in trained:
        history = trained["amortized"][2]
        results["amortized_loss_curve"] = history.loss
        results["amortized_log_z_batch_curve"] = history.log_z_batch_curve(window=50)
    results.update({"steps": args.steps, "objective": args.class_objective, "sir_pool": args.sir_pool,
                    "samples": n, "eval_k": args.eval_k, "processes": accelerator.num_processes,
                    "threads": torch.get_num_threads(), "data_source": source, "seed": args.seed,
                    "trajectories_per_iter": args.class_batch * args.samples_per_condition * accelerator.num_processes})
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()  # reuse freed CPU buffers instead of page-faulting fresh ones each iteration
    if args.classes:
        return amortized_main(args)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; choose from {METHODS}")
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels, source = labeled_digits(args.data_dir, args.size)
    if args.prior == "train":
        unet, scheduler, prior_info = load_or_train_prior(args, images, device)
        classifier, accuracy = load_or_train_classifier(args, images, labels, device)
        prior = DiffusionPrior(unet, scheduler, args.steps, (1, args.size, args.size))
    else:
        from _mnist_diffusion import load_prior_and_classifier
        from posterior.priors.mnist import MNIST14

        prior, classifier = load_prior_and_classifier(args, device)
        prior_info = json.loads((MNIST14 / "training.json").read_text())
        accuracy = None
    likelihood = ClassifierLikelihood(classifier, target_classes=args.target_class)

    def log_r(x: torch.Tensor) -> torch.Tensor:
        return likelihood(x)

    real = images[labels == args.target_class].to(device)
    with torch.no_grad():
        real_features = classifier.features(real)

    def score(samples: torch.Tensor) -> dict:
        """Quality metrics of samples (n, 1, size, size), clamped to the data range [-1, 1]."""
        with torch.no_grad():
            samples = samples.clamp(-1, 1)
            log_probs = likelihood.log_probs(samples)
            features = classifier.features(samples)
        return {"mean_log_r": float(log_probs[:, args.target_class].mean()),
                "class_share": float((log_probs.argmax(-1) == args.target_class).float().mean()),
                "diversity": mean_pairwise_distance(features),
                "frechet": frechet_distance(features, real_features)}

    results: dict = {}
    n = args.num_samples
    for method in methods:
        g = torch.Generator(device=device).manual_seed(args.seed + 17)
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        train_seconds, nfe = 0.0, float(args.steps)
        extra: dict = {}
        if method == "rtb":
            frozen = prior.final_steps_below(args.freeze_below)
            path = DiffusionPriorPath(prior, log_r, beta=args.beta)
            # the trainable denoiser: a full copy of the prior's, or a frozen copy with LoRA adapters
            model = (lora_denoiser(prior.denoiser, rank=args.rtb_lora, alpha=args.lora_alpha)
                     if args.rtb_lora else None)
            guided = bool(args.rtb_guidance)
            if guided:  # guided by beta log r, as the path scores it
                base = model if model is not None else prior.posterior_copy()
                model = (GuidedDenoiser.signal_weighted(base, prior, path.log_reward, args.rtb_guidance)
                         if args.rtb_guidance_schedule == "signal" else
                         GuidedDenoiser(base, prior, path.log_reward, init_scale=args.rtb_guidance))
            if args.rtb_learned_variance:
                if guided:
                    raise SystemExit("--rtb-learned-variance does not combine with --rtb-guidance")
                model = LearnedVarianceDenoiser(model if model is not None else prior.posterior_copy(), prior)
            posterior = DiffusionPosterior(prior, model, frozen_final_steps=frozen)
            objective = {"rtb": lambda: RelativeTrajectoryBalance(hinge=args.hinge), "vargrad": VarGrad,
                         "kl": PathIntegral}[args.rtb_objective]()
            checkpoint_path = out / "rtb_checkpoint.pt"
            pool, pool_seconds = None, 0.0
            if args.rtb_pool and args.resume and checkpoint_path.exists():  # the run's own pool
                pool = ImportancePool.from_state_dict(checkpoint.load(checkpoint_path)["pool"])
            elif args.rtb_pool:
                pool_start = time.perf_counter()
                pool = ImportancePool.from_prior(prior, path.log_reward, args.rtb_pool,
                                                 generator=torch.Generator(device=device).manual_seed(args.seed + 29))
                pool_seconds = time.perf_counter() - pool_start
            config = TrainConfig(iterations=args.rtb_iters, batch_size=args.batch, lr=args.lr,
                                 explore=args.rtb_explore, step_fraction=args.rtb_step_fraction, seed=args.seed,
                                 lr_guidance=args.lr_guidance if guided else None,
                                 checkpoint_every=args.checkpoint_every, lr_decay_horizon=args.lr_decay_horizon,
                                 lr_decay_final=args.lr_decay_final, ema_decay=args.rtb_ema)
            pool_source = None if pool is None else PoolTraining(pool, forward_kl=args.rtb_forward_kl,
                                                          forward_kl_decay_horizon=args.rtb_forward_kl_horizon,
                                                          forward_kl_decay_final=args.rtb_forward_kl_final)
            trainer = Trainer(posterior, objective, config, path=path, pool=pool_source, checkpoint_path=checkpoint_path,
                              replay=ReplayConfig(capacity=100_000) if args.rtb_replay else None)
            if args.resume and trainer.checkpoint_path.exists():
                trainer.load(trainer.checkpoint_path)
                print(f"resumed RTB from {trainer.checkpoint_path} at iteration {trainer.iteration}")
            trainer.run(progress=not args.no_progress)
            train_seconds = sum(trainer.history.seconds) + pool_seconds  # every session of a resumed run
            start = time.perf_counter()
            with torch.no_grad(), trainer.averaged_weights():
                samples = torch.cat([posterior.trajectories(min(64, n - s), path, generator=g,
                                                            track_gradients=False).samples for s in range(0, n, 64)])
            if guided:  # each trained step also evaluates (and differentiates) the prior's denoiser
                nfe = float(args.steps + posterior.trained_steps)
            extra = {"rtb_seconds_per_iter": trainer.history.median_seconds(), "learned_log_z": trainer.objective.log_z(),
                     "frozen_final_steps": frozen, "rtb_objective": args.rtb_objective, "rtb_explore": args.rtb_explore,
                     "rtb_replay": args.rtb_replay, "rtb_pool": args.rtb_pool, "rtb_forward_kl": args.rtb_forward_kl,
                     "rtb_forward_kl_horizon": args.rtb_forward_kl_horizon,
                     "rtb_forward_kl_final": args.rtb_forward_kl_final,
                     "rtb_pool_ess": pool.effective_sample_size() if pool else None,
                     "rtb_pool_log_z": pool.log_mean_weight() if pool else None, "rtb_step_fraction": args.rtb_step_fraction,
                     "final_batch_log_z": trainer.history.recent_log_z_batch(), "rtb_iters": trainer.iteration,
                     "lr": args.lr, "lr_decay_horizon": args.lr_decay_horizon, "rtb_ema": args.rtb_ema, "lr_decay_final": args.lr_decay_final,
                     "rtb_guidance": args.rtb_guidance, "rtb_guidance_schedule": args.rtb_guidance_schedule,
                     "guidance_scales": model.scale.tolist() if guided else None,
                     "rtb_lora": args.rtb_lora, "lora_alpha": args.lora_alpha,
                     "rtb_learned_variance": args.rtb_learned_variance,
                     "trainable_parameters": trainable_parameter_count(posterior.model),
                     "batch_log_z_curve": trainer.history.log_z_batch_curve(window=100)}
        elif method == "noise":
            dim = args.size * args.size
            target = sampler_target(prior, lambda x: likelihood(x), beta=args.beta)  # N(z) r(DDIM(z))^beta
            sampler = make_sampler(dim, 1.0).to(device)
            path = BoltzmannPath(target, sampler.reference)
            objective = make_objective("tb", path).to(device)
            trainer = Trainer(sampler, objective, TrainConfig(iterations=args.noise_iters, batch_size=args.batch,
                                                              steps=args.steps, seed=args.seed), path=path)
            trainer.run(progress=not args.no_progress)
            train_seconds = time.perf_counter() - start
            start = time.perf_counter()
            with torch.no_grad():
                z = sampler.forward_trajectories(n, trainer.model.times, path, generator=g, track_gradients=False).samples
                samples = target.prior.decode(z)
            nfe = 2.0 * args.steps  # the reward evaluation in training decodes too; sampling: one DDIM solve
            extra = {"noise_seconds_per_iter": trainer.history.median_seconds()}
        elif method in ("dps", "cg"):
            scale = args.dps_scale if method == "dps" else args.cg_scale
            samples, nfe = guided_sample(prior, lambda x: args.beta * likelihood(x), n,
                                         mode="dps" if method == "dps" else "x0", scale=scale, generator=g)
            extra = {"scale": scale}
        else:
            samples, nfe, ess, log_z = sampling_importance_resampling(prior, log_r, n, pool=args.sir_pool,
                                                                      beta=args.beta, generator=g)
            extra = {"pool": args.sir_pool, "pool_ess": ess, "pool_log_z": log_z}
        seconds = time.perf_counter() - start
        results[method] = {**score(samples), "seconds_train": train_seconds, "seconds_per_sample": seconds / n,
                           "nfe_per_sample": nfe, **extra}
        save_image((samples[:64].clamp(-1, 1) + 1) / 2, out / f"{method}.png", nrow=8)
        print(method, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results[method].items()}))
        if method == "rtb" and args.rtb_resample:
            start = time.perf_counter()
            with torch.no_grad(), trainer.averaged_weights():
                resampled = resample_posterior(posterior, path, n, proposals=args.rtb_resample * n, generator=g)
            # each proposal runs the posterior's N steps and the prior's N steps (its log-densities)
            results["rtb_resampled"] = {
                **score(resampled.samples), "seconds_train": train_seconds,
                "seconds_per_sample": (time.perf_counter() - start) / n,
                "nfe_per_sample": args.rtb_resample * (nfe + args.steps), "proposals_per_sample": args.rtb_resample,
                "resample_ess": resampled.ess_share, "resample_log_z": resampled.log_z,
                "distinct_proposals": resampled.distinct}
            save_image((resampled.samples[:64].clamp(-1, 1) + 1) / 2, out / "rtb_resampled.png", nrow=8)
            print("rtb_resampled", json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                               for k, v in results["rtb_resampled"].items()}))
    with torch.no_grad():
        real_log_probs = likelihood.log_probs(real[:n])
    metrics = {"methods": results, "target_class": args.target_class, "size": args.size, "steps": args.steps,
               "beta": args.beta, "data_source": source, "classifier_train_accuracy": accuracy, "prior": args.prior,
               "prior_training": prior_info, "real_digits": {
                   "mean_log_r": float(real_log_probs[:, args.target_class].mean()),
                   "diversity": mean_pairwise_distance(real_features[:n])},
               "paper_mean_log_r": PAPER, "seed": args.seed, "threads": torch.get_num_threads()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
