"""Train a diffusion sampler on a Boltzmann benchmark target and write its metrics.

    python recipes/boltzmann.py --target manywell --objective tb --langevin --iters 10000 --out runs/mw

Writes DIR/metrics.json, DIR/samples.png (samples against exact samples, 2-D projections),
DIR/curves.png (loss and log Z estimate), DIR/history.json and DIR/checkpoint.pt.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # recipes/_paths.py: where the shared data is

from posterior.constraints.registry import TARGET_NAMES, make_target  # noqa: E402
from _paths import pines_path  # noqa: E402
from posterior.training.cpu_allocator import retain_freed_memory  # noqa: E402
from posterior.evaluation.evaluation import evaluate, summarize_repeats  # noqa: E402
from posterior.training.exploration import EXPLORE_DECAYS, PUBLIC_CODE_EXPLORE_HORIZON, explore_from_step_std  # noqa: E402
from posterior.samplers.factory import LANGEVIN_SCALES, NOISING, langevin_per_dimension, make_sampler  # noqa: E402
from posterior.objectives.factory import OBJECTIVES, STATE_FLOW_OBJECTIVES, default_flow_lr, make_objective  # noqa: E402
from posterior.training.replay import ReplayConfig, ReplayTraining  # noqa: E402
from posterior.paths.path_target import BoltzmannPath  # noqa: E402
from posterior.core.metrics import wasserstein2  # noqa: E402
from posterior.evaluation.plotting import plot_curves, plot_samples  # noqa: E402
from posterior.paths.reference import BrownianBridge  # noqa: E402
from posterior.baselines.smc import annealed_smc, long_run_mala  # noqa: E402
from posterior.training.teacher import make_teacher  # noqa: E402
from posterior.training.config import TrainConfig  # noqa: E402
from posterior.training.engine import Trainer  # noqa: E402


EVAL_REPEAT_SEED_STRIDE = 1_000  # seed offset between independent evaluations of one run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=TARGET_NAMES, default="gmm25")
    p.add_argument("--dim", type=int, default=None, help="dimension (funnel, manywell, lgcp)")
    p.add_argument("--method", choices=("sampler", "smc", "mala", "dds", "dis"), default="sampler",
                   help="sampler: train a diffusion sampler with --objective; smc / mala: non-amortized "
                        "baselines; dds: the KL (path-integral) objective on the VP noising process; dis: "
                        "the same with the target score in the drift (Langevin parametrization)")
    p.add_argument("--objective", choices=OBJECTIVES, default="tb")
    explore = p.add_mutually_exclusive_group()
    explore.add_argument("--explore", type=float, default=0.0,
                         help="extra sampling variance per unit time, decayed linearly to 0")
    explore.add_argument("--explore-step-std", type=float, default=None,
                         help="the paper's public-code convention: extra std ε of every step's noise on the "
                              "--steps grid, i.e. --explore ε²·steps, decaying over 5000 iterations unless "
                              "--explore-horizon says otherwise (the paper's TB+Expl: 0.2; with LS: 0.1)")
    p.add_argument("--explore-horizon", type=int, default=None,
                   help="iterations over which exploration decays (default: all; 5000 with --explore-step-std)")
    p.add_argument("--explore-decay", choices=EXPLORE_DECAYS, default="variance",
                   help="what decays linearly to 0: the extra variance (default) or its standard deviation "
                        "(std: the variance decays quadratically, the paper's public code)")
    p.add_argument("--langevin", action="store_true", help="Langevin parametrization of the drift")
    p.add_argument("--langevin-scale", choices=LANGEVIN_SCALES, default="per-dimension",
                   help="with --langevin: the score's time-dependent scale has one entry per dimension, or one "
                        "shared by all dimensions (the paper's public code's default)")
    p.add_argument("--lr-decay-horizon", type=int, default=0,
                   help="cosine decay of the policy's learning rate over this many iterations (0: constant)")
    p.add_argument("--lr-decay-final", type=float, default=0.1, help="the rate at the decay's end, relative to the start")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="evaluate an exponential moving average of the sampler's weights with this decay (e.g. "
                        "0.999; 0: off); metrics.json then adds raw_weights, the same evaluations of the last weights")
    p.add_argument("--hidden", type=int, default=64,
                   help="width of the policy network's hidden layers and time embedding (64: the paper's)")
    p.add_argument("--learn-variance", action="store_true")
    p.add_argument("--log-var-range", type=float, default=4.0,
                   help="learned log-variance within ± this of log sigma2")
    p.add_argument("--log-var-lr-scale", type=float, default=1.0,
                   help="with --learn-variance: the log-variance's learning rate relative to --lr-policy "
                        "(1: the paper's; with TB + exploration prefer --log-z-init batch)")
    p.add_argument("--log-z-init", choices=("zero", "batch"), default="batch",
                   help="TB: start log Z at the first batch's estimate (default: no climb from 0 on targets with "
                        "a large log Z; keeps a learned variance from running away under exploration) or at 0 "
                        "(the paper's)")
    p.add_argument("--grad-clip", type=float, default=None, help="clip the global gradient norm (default: off)")
    p.add_argument("--noising", choices=NOISING, default="brownian",
                   help="reference process: Brownian bridge pinned at 0, or variance-preserving OU")
    p.add_argument("--learn-backward", action="store_true", help="learned corrections of the backward kernels")
    p.add_argument("--iters", type=int, default=25_000)
    p.add_argument("--batch", type=int, default=300)
    p.add_argument("--steps", type=int, default=100, help="time steps of training trajectories")
    p.add_argument("--train-grid", choices=("uniform", "random"), default="uniform",
                   help="random: a fresh coarse grid every iteration (increments ~ U[1, 10], normalized)")
    p.add_argument("--grid-power", type=float, default=1.0,
                   help="grid t_k = 1 - (1 - k/N)^P for training (with --train-grid uniform) and evaluation: "
                        "1 is uniform, > 1 shortens the steps toward t = 1")
    p.add_argument("--train-steps-max", type=int, default=None,
                   help="with --train-grid random: a random number of steps in [--steps, this] per iteration")
    p.add_argument("--eval-steps", type=int, default=None,
                   help="steps of the evaluation grid (default: --steps, or 100 with --train-grid random)")
    p.add_argument("--buffer", choices=("none", "uniform", "rank"), default="none",
                   help="replay buffer: alternate forward updates and backward updates from buffer states")
    p.add_argument("--buffer-size", type=int, default=600_000)
    p.add_argument("--rank-k", type=float, default=0.01, help="k of the rank weights 1 / (k N + rank)")
    p.add_argument("--local-search", action="store_true",
                   help="MALA local search from buffer states (implies --buffer rank unless given)")
    p.add_argument("--replay-log-z", choices=("shared", "separate"), default="shared",
                   help="TB with a buffer: one learned log Z for all batches, or a second one for the backward "
                        "batches from the buffer (keeps TB from fitting the buffer's sampling distribution)")
    p.add_argument("--ls-every", type=int, default=100)
    p.add_argument("--ls-steps", type=int, default=200)
    p.add_argument("--ls-burn-in", type=int, default=100)
    p.add_argument("--ls-beta", type=float, default=1.0, help="tempering of the MALA target")
    p.add_argument("--ls-step-size", type=float, default=0.01, help="initial MALA step size (adapted)")
    p.add_argument("--teacher", action="store_true",
                   help="adaptive teacher (TB sampler rewarded by the student's residual) feeding the buffer")
    p.add_argument("--teacher-weight", type=float, default=19.0,
                   help="C: extra teacher reward weight where the student under-samples")
    p.add_argument("--teacher-target-power", type=float, default=1.0,
                   help="alpha: the teacher's reward is multiplied by R(x)^alpha (keeps it on the target's support)")
    p.add_argument("--lr-policy", type=float, default=1e-3)
    p.add_argument("--lr-flow", type=float, default=None, help="default: 1e-1, or 1e-2 with SubTB")
    p.add_argument("--subtb-lambda", type=float, default=2.0)
    p.add_argument("--flow-embedding", choices=("shared", "separate"), default=None,
                   help="SubTB state flow: a head on the policy's state/time embeddings (the default, the paper's; "
                        "the flow's loss also trains them), or a network with embeddings of its own")
    p.add_argument("--eval-samples", type=int, default=2000, help="also SMC particles / MALA chains")
    p.add_argument("--eval-repeats", type=int, default=1,
                   help="independent evaluations (fresh trajectories and exact sets); metrics.json keeps the first "
                        "as the run's numbers and adds eval_repeats with mean, std and values of each metric. "
                        "With --resume on a finished run: re-evaluate its checkpoint without training")
    p.add_argument("--smc-temperatures", type=int, default=100)
    p.add_argument("--smc-mala-steps", type=int, default=5, help="MALA steps per SMC temperature")
    p.add_argument("--mala-steps", type=int, default=10_000, help="long-run MALA: steps per chain")
    p.add_argument("--mala-burn-in", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--pines", default=None,
                   help="path of pines.csv (LGCP; default $POSTERIOR_PINES_PATH or ../shared/data/pines.csv)")
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args(argv)
    for flag, minimum in (("iters", 1), ("batch", 1), ("steps", 1), ("eval_samples", 2), ("eval_repeats", 1),
                          ("buffer_size", 1), ("smc_temperatures", 1), ("mala_steps", 1), ("mala_burn_in", 0),
                          ("checkpoint_every", 0), ("seed", 0)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag.replace('_', '-')}: must be an integer >= {minimum}, got {getattr(args, flag)}")
    for flag in ("threads", "eval_steps", "train_steps_max", "explore_horizon"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: must be an integer >= 1, got {getattr(args, flag)}")
    for flag in ("lr_policy", "lr_flow", "grad_clip"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            p.error(f"--{flag.replace('_', '-')}: must be a finite number > 0, got {value}")
    if not 0.0 <= args.ema < 1.0:
        p.error(f"--ema: expected a decay in [0, 1) (0: off), got {args.ema}")
    if args.eval_repeats < 1:
        p.error(f"--eval-repeats: expected an integer >= 1, got {args.eval_repeats}")
    if args.explore_step_std is not None:  # one convention inside: variance per unit time
        args.explore = explore_from_step_std(args.explore_step_std, args.steps)
        if args.explore_horizon is None:
            args.explore_horizon = PUBLIC_CODE_EXPLORE_HORIZON
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.hidden < 1:  # PISPolicy refuses it too; this names the flag
        raise SystemExit(f"--hidden must be a positive width, got {args.hidden}")
    if args.method in ("dds", "dis"):  # simulation-based samplers on the VP reference
        args.objective, args.noising = "pis", "vp"
        args.langevin = args.langevin or args.method == "dis"
    if args.langevin_scale != "per-dimension" and not args.langevin:
        raise SystemExit(f"--langevin-scale {args.langevin_scale} is for the Langevin parametrization: add --langevin "
                         f"(or --method dis)")
    if args.objective in STATE_FLOW_OBJECTIVES:
        args.flow_embedding = args.flow_embedding or "shared"
    elif args.flow_embedding is not None:
        raise SystemExit(f"--flow-embedding is for --objective subtb or fl-subtb (a state flow), "
                         f"got {args.objective} (method {args.method})")
    uses_replay = args.buffer != "none" or args.local_search or args.teacher
    if args.replay_log_z == "separate" and (args.objective != "tb" or not uses_replay):
        raise SystemExit(f"--replay-log-z separate is for --objective tb with a buffer (--buffer, --local-search "
                         f"or --teacher), got --objective {args.objective} and buffer {args.buffer}")
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()  # reuse freed CPU buffers instead of page-faulting fresh ones each iteration
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)  # network initialization; all sampling noise uses explicit generators
    target = make_target(args.target, dim=args.dim, pines_path=pines_path(args.pines)).to(device)
    if args.method in ("smc", "mala"):
        return run_baseline(args, target, out, device)
    sampler = make_sampler(target.dim, target.reference_variance, langevin=args.langevin, hidden=args.hidden,
                           learn_variance=args.learn_variance, noising=args.noising,
                           learn_backward=args.learn_backward, log_var_range=args.log_var_range,
                           langevin_per_dimension=langevin_per_dimension(args.langevin_scale, args.langevin)).to(device)
    path = BoltzmannPath(target, sampler.reference)
    objective = make_objective(args.objective, path, subtb_lambda=args.subtb_lambda, hidden=args.hidden,
                               flow_embeddings=sampler.policy if args.flow_embedding == "shared" else None,
                               separate_replay_log_z=args.replay_log_z == "separate").to(device)
    config = TrainConfig(iterations=args.iters, batch_size=args.batch, steps=args.steps,
                            train_grid=args.train_grid, grid_power=args.grid_power, steps_max=args.train_steps_max,
                            lr=args.lr_policy,
                            lr_flow=args.lr_flow if args.lr_flow is not None else default_flow_lr(args.objective),
                            explore=args.explore, explore_horizon=args.explore_horizon,
                            explore_decay=args.explore_decay, seed=args.seed,
                            checkpoint_every=args.checkpoint_every, grad_clip=args.grad_clip,
                            log_var_lr_scale=args.log_var_lr_scale, log_z_init=args.log_z_init,
                            lr_decay_horizon=args.lr_decay_horizon, lr_decay_final=args.lr_decay_final,
                            ema_decay=args.ema)
    replay = None
    if uses_replay:
        replay_config = ReplayConfig(
            prioritization="uniform" if args.buffer == "uniform" else "rank", capacity=args.buffer_size,
            rank_k=args.rank_k, local_search=args.local_search, ls_every=args.ls_every, ls_steps=args.ls_steps,
            ls_burn_in=args.ls_burn_in, ls_beta=args.ls_beta, ls_step_size=args.ls_step_size)
        replay = ReplayTraining(replay_config, target.dim, device=device)
    ckpt = out / "checkpoint.pt"
    problem = {"target": args.target, "dim": int(target.dim), "sampler": {k: getattr(args, k) for k in (
        "langevin", "langevin_scale", "learn_variance", "hidden", "noising", "learn_backward", "log_var_range")}}
    trainer = Trainer(sampler, objective, config, path=path, checkpoint_path=ckpt, replay=replay, problem=problem)
    if args.teacher:
        replay.teacher = build_teacher(args, target, sampler, objective, path, config, trainer, device)
    if args.resume and ckpt.exists():
        trainer.load(ckpt)
        print(f"resumed from {ckpt} at iteration {trainer.iteration}")
    start = time.perf_counter()
    history = trainer.run(progress=not args.no_progress)
    train_seconds = time.perf_counter() - start
    trainer.save(ckpt)
    evaluations = dict(path.evaluations)  # training cost, before evaluation adds its own
    eval_steps = args.eval_steps or (100 if args.train_grid == "random" else args.steps)

    eval_start = time.perf_counter()
    with trainer.averaged_weights():
        result, exact, samples = evaluate_repeats(args, sampler, path, target, eval_steps, device)
    if trainer.ema is not None:  # the last weights on the same trajectories' noise and exact sets: a paired comparison
        raw, _, raw_samples = evaluate_repeats(args, sampler, path, target, eval_steps, device)
        result["raw_weights"] = {**raw, **mode_coverage(target, raw_samples)}
    result.update(mode_coverage(target, samples))
    seconds_total = sum(history.seconds)
    replay_stats = {} if replay is None else replay.stats()
    metrics = {
        "target": args.target, "dim": target.dim, "objective": args.objective, "eval_steps": eval_steps,
        "log_z_true": target.log_z, **result,
        "iters": trainer.iteration, "seconds_per_iter": history.median_seconds(),
        "seconds_total": seconds_total, "train_wall_seconds_this_run": train_seconds,
        "energy_evals": evaluations["log_reward"] + evaluations["grad"],
        "energy_evals_log_reward": evaluations["log_reward"], "energy_evals_grad": evaluations["grad"],
        "local_search_share": (replay_stats["local_search_seconds"] / seconds_total
                               if replay_stats and seconds_total > 0 else 0.0),
        **replay_stats,
        "eval_seconds": time.perf_counter() - eval_start,
        "learned_log_z": objective.log_z(), "learned_replay_log_z": objective.replay_log_z(),
        # every setting once: the training config as the engine used it, the recipe's flags as given
        "config": asdict(config), "replay_config": None if replay is None else asdict(replay.config),
        "flags": {k: v for k, v in vars(args).items() if k != "out"}, "seed": args.seed,
        "device": str(device), "threads": torch.get_num_threads(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "history.json").write_text(json.dumps(asdict(history)))
    title = (f"{args.target} {args.objective}{'+LP' if args.langevin else ''}"
             f"{'+Expl' if args.explore else ''}{'+LS' if args.local_search else ''}{'+teacher' if args.teacher else ''}: dlogZ={_fmt(result['delta_log_z'])} W2={_fmt(result['w2'])}")
    plot_samples(samples, exact, out / "samples.png", title=title)
    plot_curves(history.iteration, history.loss, history.log_z_batch, out / "curves.png", target.log_z)
    shown = {k: metrics[k] for k in ("log_z_elbo", "log_z_rw", "log_z_rw_stderr", "delta_log_z", "delta_log_z_rw",
                                     "eubo", "w2", "w2_floor", "ess", "iters", "seconds_per_iter", "seconds_total",
                                     "energy_evals", "local_search_share")}
    shown.update(mode_coverage(target, samples))
    if "raw_weights" in metrics:
        shown["raw_weights"] = {k: metrics["raw_weights"][k] for k in ("delta_log_z", "delta_log_z_rw", "ess", "w2")}
    if "eval_repeats" in metrics:
        shown["eval_repeats"] = {k: (f"{v['mean']:.4g} ± {v['std']:.2g}" if isinstance(v, dict) else v)
                                 for k, v in metrics["eval_repeats"].items()}
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return metrics


def evaluate_repeats(args: argparse.Namespace, sampler, path: BoltzmannPath, target, eval_steps: int,
                     device: torch.device) -> tuple[dict, torch.Tensor | None, torch.Tensor]:
    """``args.eval_repeats`` evaluations of ``sampler`` (:func:`evaluate_once`).

    Returns:
        (the first evaluation's metrics, with ``eval_repeats`` (mean, std and values of each metric over all of
        them) when there are several; the (K, d) exact samples of the first; its (K, d) samples).
    """
    repeats = [evaluate_once(args, sampler, path, target, eval_steps, device, repeat=r)
               for r in range(args.eval_repeats)]
    result, exact = repeats[0]
    samples = result.pop("samples")
    if args.eval_repeats > 1:  # summarize_repeats reads only the metrics, not the other repeats' samples
        result["eval_repeats"] = summarize_repeats([r for r, _ in repeats])
    return result, exact, samples


def evaluate_once(args: argparse.Namespace, sampler, path: BoltzmannPath, target, eval_steps: int,
                  device: torch.device, repeat: int = 0) -> tuple[dict, torch.Tensor | None]:
    """One evaluation of ``sampler`` with its own sampling seed and its own two exact sets.

    Repeat 0 is the run's reported evaluation; repeats r > 0 draw fresh trajectories and exact samples.
    Returns (the metrics of :func:`evaluate`, the (K, d) exact samples W2 was measured against, or None).
    """
    offset = EVAL_REPEAT_SEED_STRIDE * repeat
    gen = torch.Generator(device=device).manual_seed(10_000 + args.seed + offset)
    exact = exact_ref = None
    if target.has_exact_samples:
        exact = target.sample(args.eval_samples, generator=gen)
        exact_ref = target.sample(args.eval_samples, generator=gen)
    result = evaluate(sampler, path, num_samples=args.eval_samples, steps=eval_steps, grid_power=args.grid_power,
                      seed=args.seed + 1 + offset,
                      log_z=target.log_z, exact_samples=exact, exact_reference=exact_ref)
    return result, exact


def mode_coverage(target, samples: torch.Tensor) -> dict:
    """For targets with known modes: how many hold >= 1% of the samples (all: 25 for 25GMM).

    Manywell: the shallow-well share of every double-well pair (exact: about 0.156 in each), its
    range over pairs, how many pairs kept their shallow well (share >= 1%), and the spread inside
    the wells and of the Gaussian coordinates (``Manywell.well_spreads``) beside the exact values.
    """
    finite = samples[torch.isfinite(samples).all(-1)]
    if hasattr(target, "mode_shares"):
        shares = target.mode_shares(finite.to(target.means))
        return {"modes_covered": int((shares >= 0.01).sum()), "modes_total": int(shares.numel())}
    if hasattr(target, "shallow_well_shares") and finite.shape[0] > 0:
        shares = target.shallow_well_shares(finite)
        return {"shallow_share_exact": target.shallow_mass, "shallow_share_mean": float(shares.mean()),
                "shallow_share_min": float(shares.min()), "shallow_share_max": float(shares.max()),
                "shallow_wells_covered": int((shares >= 0.01).sum()), "shallow_wells_total": int(shares.numel()),
                **(target.well_spreads(finite) if finite.shape[0] >= 2 else {}),
                **{f"{name}_exact": value for name, value in target.exact_spreads.items()}}
    return {}


def build_teacher(args: argparse.Namespace, target, sampler, objective, path, config: TrainConfig,
                  trainer: Trainer, device: torch.device):
    """A TB teacher like the student (no Langevin term: its reward has no cheap gradient)."""
    teacher = make_sampler(target.dim, target.reference_variance, noising=args.noising).to(device)
    teacher_config = replace(config, seed=config.seed + 7919, checkpoint_every=0, ema_decay=0.0)
    return make_teacher(sampler, objective, path, teacher, make_objective("tb", None, dim=target.dim).to(device),
                        teacher_config, under_weight=args.teacher_weight, target_power=args.teacher_target_power,
                        log_z_fallback=lambda: _last_forward_log_z(trainer))


def _last_forward_log_z(trainer) -> float:
    """The last forward batch's log Z estimate (0 before any)."""
    value = trainer.history.recent_log_z_batch(1)
    return 0.0 if value is None else value


def run_baseline(args: argparse.Namespace, target, out: Path, device: torch.device) -> dict:
    """SMC or long-run MALA on the target: log Z (SMC), W2 against exact samples, cost."""
    path = BoltzmannPath(target, BrownianBridge(target.reference_variance))
    gen = torch.Generator(device=device).manual_seed(10_000 + args.seed)
    exact = target.sample(args.eval_samples, generator=gen) if target.has_exact_samples else None
    exact_ref = target.sample(args.eval_samples, generator=gen) if target.has_exact_samples else None
    run_gen = torch.Generator(device=device).manual_seed(args.seed)
    common = dict(initial_variance=target.reference_variance, generator=run_gen, device=device)
    if args.method == "smc":
        result = annealed_smc(path, args.eval_samples, temperatures=args.smc_temperatures,
                              mala_steps=args.smc_mala_steps, **common)
    else:
        result = long_run_mala(path, args.eval_samples, steps=args.mala_steps, burn_in=args.mala_burn_in, **common)
    samples = result.samples
    log_z = target.log_z
    metrics = {
        "target": args.target, "dim": target.dim, "method": args.method, "log_z_true": log_z,
        "log_z_elbo": result.log_z, "log_z_rw": None,
        "delta_log_z": None if result.log_z is None or log_z is None else abs(log_z - result.log_z),
        "delta_log_z_rw": None, "log_z_rw_stderr": None, "ess": None, "eubo": None,
        "w2": None if exact is None else wasserstein2(samples, exact),
        "w2_floor": None if exact is None else wasserstein2(exact_ref, exact),
        **mode_coverage(target, samples),
        "iters": 0, "seconds_per_iter": None, "seconds_total": result.seconds,
        "energy_evals": path.evaluations["log_reward"] + path.evaluations["grad"],
        "energy_evals_log_reward": path.evaluations["log_reward"], "energy_evals_grad": path.evaluations["grad"],
        "mala_acceptance": result.acceptance, "resamplings": result.resamplings,
        "smc_temperatures": args.smc_temperatures if args.method == "smc" else None,
        "smc_mala_steps": args.smc_mala_steps if args.method == "smc" else None,
        "mala_steps": args.mala_steps if args.method == "mala" else None,
        "seed": args.seed, "device": str(device), "threads": torch.get_num_threads(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_samples(samples.cpu(), exact, out / "samples.png",
                 title=f"{args.target} {args.method}: dlogZ={_fmt(metrics['delta_log_z'])} W2={_fmt(metrics['w2'])}")
    print(json.dumps({k: metrics[k] for k in ("log_z_elbo", "delta_log_z", "w2", "w2_floor", "seconds_total",
                                              "energy_evals", "mala_acceptance")}, indent=2))
    return metrics


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
