"""What W2 against 2000 exact Manywell samples rewards: exact samples against tempered ones.

    python recipes/w2_floor.py [--dim 32] [--betas 0.9,1,1.1,1.25,1.5,2] [--n 2000] [--repeats 3] --json FILE

For each β, draws ``--n`` exact samples of the tempered target ∝ p(x)^β (β > 1: sharper wells, more
weight on the deep side) and computes W2 against a fresh set of ``--n`` exact samples of p, as
``recipes/boltzmann.py`` does for a trained sampler. ``floor`` is W2 between two exact sets (β = 1 with
the rejection sampler). A sampler that is exact scores the floor on average; one that scores below it
is under-dispersed. Also written per β: the share of double-well coordinates on the deep side (x₁ > 0;
exact 0.843) and the std of the Gaussian coordinates.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posterior.constraints import Manywell  # noqa: E402
from posterior.training.checkpoint import write_json  # noqa: E402
from posterior.evaluation.evaluation import summarize_repeats  # noqa: E402
from posterior.core.metrics import wasserstein2  # noqa: E402


def parse_betas(text: str) -> list[float]:
    """``--betas``: comma-separated finite numbers > 0 (ValueError naming the flag otherwise)."""
    try:
        betas = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--betas must be comma-separated numbers, got {text!r}") from None
    if not betas or any(not (math.isfinite(b) and b > 0) for b in betas):
        raise ValueError(f"--betas must be finite numbers > 0, got {text!r}")
    return betas


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--betas", default="0.9,1,1.1,1.25,1.5,2")
    p.add_argument("--n", type=int, default=2000, help="samples per set (the recipes' K)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    for flag, minimum in (("dim", 2), ("n", 2), ("repeats", 1)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag} must be an integer >= {minimum}, got {getattr(args, flag)}")
    if args.dim % 2:
        p.error(f"--dim must be even (Manywell pairs its coordinates), got {args.dim}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be an integer >= 1, got {args.threads}")
    try:
        betas = parse_betas(args.betas)
    except ValueError as exc:
        p.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    target = Manywell(args.dim)
    g = torch.Generator().manual_seed(args.seed)
    floor = [{"w2": wasserstein2(target.sample(args.n, g), target.sample(args.n, g))} for _ in range(args.repeats)]
    keys = ("w2", "deep_share", "gaussian_std")
    rows = []
    for beta in betas:
        repeats = []
        for _ in range(args.repeats):
            x = target.sample_tempered(args.n, beta, g)
            repeats.append({"w2": wasserstein2(x, target.sample(args.n, g)),
                            "deep_share": 1.0 - float(target.shallow_well_shares(x.double()).mean()),
                            "gaussian_std": target.well_spreads(x)["gaussian_std"]})
        stats = summarize_repeats(repeats, keys)
        rows.append({"beta": beta, **{key: stats[key] for key in keys}})
        print(f"beta {beta:g}: W2 {rows[-1]['w2']['mean']:.3f} ± {rows[-1]['w2']['std']:.3f}"
              f"  deep share {rows[-1]['deep_share']['mean']:.3f}", flush=True)
    result = {"target": "manywell", "dim": args.dim, "n": args.n, "repeats": args.repeats, "seed": args.seed,
              "floor": summarize_repeats(floor, ("w2",))["w2"], "tempered": rows}
    print(json.dumps({"floor": result["floor"]["mean"],
                      "w2_by_beta": {r["beta"]: r["w2"]["mean"] for r in rows}}, indent=2))
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
