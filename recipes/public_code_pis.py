"""Measure the paper's public code on its Manywell-32 PIS + Langevin row, on this machine.

    python recipes/public_code_pis.py --code-dir PATH/gfn-diffusion/energy_sampling \
        [--seed 12345] [--iters 10000] [--eval-repeats 5] [--threads 1] [--eval-only] --out DIR

``--code-dir`` is the ``energy_sampling`` folder of a checkout of GFNOrg/gfn-diffusion (the code of
Sendera et al. 2024); nothing of it is copied here, it is imported from that path. The run uses the
arguments of that code's README for PIS + Langevin on Manywell (``--t_scale 1. --energy many_well
--pis_architectures --zero_init --clipping --mode_fwd pis --lr_policy 1e-3 --langevin --epochs 10000``,
batch 300, T = 100, the Langevin scale shared by all dimensions) and its own loss, model, optimizer and
seeding (``set_seed``). Its training script's evaluation every 100 iterations, plots and wandb logging
are left out: they change no weight.

After training, ``--eval-repeats`` evaluations as its ``log_partition_function`` does them (K = 2000
trajectories from its model, same random stream), each reporting what ``recipes/boltzmann.py`` reports:
Δlog Z, Δlog Z_RW (against the exact log Z by quadrature from ``posterior.constraints.Manywell``), ESS, the
shallow-well share of every pair and W2 against 2000 exact samples (drawn with a separate generator,
so the evaluations' random stream is the public code's). ``--eval-only`` skips training and evaluates
``DIR/model.pt`` again with ``--eval-seed``.

Writes DIR/model.pt (the state dict) and DIR/metrics.json; ``--eval-only`` writes DIR/metrics-eval.json
(DIR/metrics-eval-seedN.json with ``--eval-seed N``).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posterior.constraints import Manywell  # noqa: E402
from posterior.training.checkpoint import load as checkpoint_load, save_atomic, write_json  # noqa: E402
from posterior.evaluation.evaluation import summarize_repeats  # noqa: E402
from posterior.core import metrics  # noqa: E402

DIM, BATCH, STEPS, K = 32, 300, 100, 2000


def import_public_code(code_dir: Path) -> dict[str, Any]:
    """The public code's modules, imported from ``code_dir`` (its ``energy_sampling`` folder)."""
    if not (code_dir / "models" / "gfn.py").is_file() or not (code_dir / "gflownet_losses.py").is_file():
        raise SystemExit(f"--code-dir: expected the energy_sampling folder of a GFNOrg/gfn-diffusion checkout "
                         f"(with models/gfn.py and gflownet_losses.py), got {str(code_dir)!r}")
    sys.path.insert(0, str(code_dir))
    energies, losses = importlib.import_module("energies"), importlib.import_module("gflownet_losses")
    models, utils = importlib.import_module("models"), importlib.import_module("utils")
    return {"ManyWell": energies.ManyWell, "pis": losses.pis, "GFN": models.GFN,
            "get_gfn_optimizer": utils.get_gfn_optimizer, "set_seed": utils.set_seed}


def build_model(code: dict[str, Any]) -> torch.nn.Module:
    """The README's PIS + Langevin model for Manywell (its train.py defaults for everything else)."""
    return code["GFN"](DIM, 64, 64, 64, 64, trajectory_length=STEPS, clipping=True, lgv_clip=1e2, gfn_clip=1e4,
                       langevin=True, learned_variance=False, partial_energy=False, log_var_range=4.,
                       pb_scale_range=0.1, t_scale=1., langevin_scaling_per_dimension=False,
                       conditional_flow_model=False, learn_pb=False, pis_architectures=True, lgv_layers=3,
                       joint_layers=2, zero_init=True, device=torch.device("cpu"))


@torch.no_grad()
def evaluate_public(model: torch.nn.Module, energy: Any, target: Manywell, exact_generator: torch.Generator
                    ) -> dict[str, float | list[float]]:
    """One evaluation, the random draws of the public code's ``log_partition_function`` (K trajectories)."""
    states, log_pfs, log_pbs, _ = model.get_trajectory_fwd(torch.zeros(K, DIM), None, energy.log_reward)
    samples = states[:, -1]
    log_w = energy.log_reward(samples) + log_pbs.sum(-1) - log_pfs.sum(-1)
    shares = target.shallow_well_shares(samples.double())
    log_z_elbo, log_z_rw = float(metrics.log_z_elbo(log_w)), float(metrics.log_z_importance(log_w))
    return {"log_z_elbo": log_z_elbo, "log_z_rw": log_z_rw,
            "delta_log_z": abs(target.log_z - log_z_elbo), "delta_log_z_rw": abs(target.log_z - log_z_rw),
            "ess": float(metrics.effective_sample_size(log_w)),
            "w2": metrics.wasserstein2(samples, target.sample(K, exact_generator)),
            "shallow_shares": [float(s) for s in shares]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--code-dir", type=Path, required=True)
    p.add_argument("--seed", type=int, default=12345, help="the public code's default seed")
    p.add_argument("--iters", type=int, default=10000)
    p.add_argument("--eval-repeats", type=int, default=5)
    p.add_argument("--eval-seed", type=int, default=None, help="with --eval-only: seed of the evaluations")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    for flag, minimum in (("iters", 0), ("eval_repeats", 1), ("threads", 1)):  # --iters 0: one iteration
        if getattr(args, flag) < minimum:
            p.error(f"--{flag.replace('_', '-')} must be an integer >= {minimum}, got {getattr(args, flag)}")
    for flag in ("seed", "eval_seed"):  # the public code's set_seed seeds numpy too: 0 .. 2**32 - 1
        value = getattr(args, flag)
        if value is not None and not 0 <= value < 2 ** 32:
            p.error(f"--{flag.replace('_', '-')} must be an integer in [0, 2**32 - 1], got {value}")
    if args.eval_only and not (args.out / "model.pt").is_file():
        raise SystemExit(f"--eval-only: expected the weights of a finished run at {str(args.out / 'model.pt')!r}")
    code = import_public_code(args.code_dir)
    torch.set_num_threads(args.threads)
    code["set_seed"](args.seed)
    energy, target = code["ManyWell"](device=torch.device("cpu")), Manywell(DIM)
    model = build_model(code)
    result: dict[str, Any] = {"seed": args.seed, "iters": args.iters, "log_z": target.log_z}
    if args.eval_only:
        model.load_state_dict(checkpoint_load(args.out / "model.pt"))  # verified, no code runs
        code["set_seed"](args.seed if args.eval_seed is None else args.eval_seed)
        result["eval_seed"] = args.eval_seed
    else:
        optimizer = code["get_gfn_optimizer"](model, 1e-3, 1e-2, 1e-3, False, False, False, 1e-7)
        model.train()
        seconds, history = [], []
        for i in range(args.iters + 1):  # the public loop runs epochs + 1 iterations
            start = time.perf_counter()
            model.zero_grad()
            loss = code["pis"](torch.zeros(BATCH, DIM), model, energy.log_reward, None)
            loss.backward()
            optimizer.step()
            seconds.append(time.perf_counter() - start)
            if i % 100 == 0:  # the loss is per dimension: x32 is the batch's −ELBO
                history.append({"iteration": i, "loss": loss.item()})
                print(i, round(loss.item() * DIM, 3), round(statistics.median(seconds[-100:]), 3), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        save_atomic(model.state_dict(), args.out / "model.pt")
        result.update(seconds_per_iter=statistics.median(seconds), history=history)
    model.eval()
    exact_generator = torch.Generator().manual_seed(0)
    evals = [evaluate_public(model, energy, target, exact_generator) for _ in range(args.eval_repeats)]
    for e in evals:
        print(f"delta_log_z {e['delta_log_z']:.3f}  delta_log_z_rw {e['delta_log_z_rw']:.3f}  ess {e['ess']:.4f}"
              f"  w2 {e['w2']:.2f}  shallow {min(e['shallow_shares']):.3f}-{max(e['shallow_shares']):.3f}",
              flush=True)
    result["evaluations"] = evals
    result["eval_repeats"] = summarize_repeats(evals, ("delta_log_z", "delta_log_z_rw", "ess", "w2"))
    name = "metrics.json" if not args.eval_only else (
        "metrics-eval.json" if args.eval_seed is None else f"metrics-eval-seed{args.eval_seed}.json")
    write_json(result, args.out / name)
    return result


if __name__ == "__main__":
    main()
