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
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from constraints import Manywell  # noqa: E402
from posterior.checkpoint import write_json  # noqa: E402
from posterior.metrics import wasserstein2  # noqa: E402


def summary(values: list[float]) -> dict:
    """Mean, std (0 for one value) and the values themselves."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def parse_betas(text: str) -> list[float]:
    try:
        betas = [float(b) for b in text.split(",") if b.strip()]
    except ValueError as exc:
        raise SystemExit(f"--betas must be comma-separated numbers, got {text!r}") from exc
    if not betas or any(not b > 0 for b in betas):
        raise SystemExit(f"--betas must be numbers > 0, got {text!r}")
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
    if args.n < 2 or args.repeats < 1:
        raise SystemExit(f"--n must be >= 2 and --repeats >= 1, got {args.n} and {args.repeats}")
    betas = parse_betas(args.betas)
    if args.threads:
        torch.set_num_threads(args.threads)
    target = Manywell(args.dim)
    g = torch.Generator().manual_seed(args.seed)
    floor = [wasserstein2(target.sample(args.n, g), target.sample(args.n, g)) for _ in range(args.repeats)]
    rows = []
    for beta in betas:
        w2, deep, gauss_std = [], [], []
        for _ in range(args.repeats):
            x = target.sample_tempered(args.n, beta, g)
            w2.append(wasserstein2(x, target.sample(args.n, g)))
            deep.append(float((x[:, 0::2] > 0).double().mean()))
            gauss_std.append(float(x[:, 1::2].std()))
        rows.append({"beta": beta, "w2": summary(w2), "deep_share": summary(deep),
                     "gaussian_std": summary(gauss_std)})
        print(f"beta {beta:g}: W2 {rows[-1]['w2']['mean']:.3f} ± {rows[-1]['w2']['std']:.3f}"
              f"  deep share {rows[-1]['deep_share']['mean']:.3f}", flush=True)
    result = {"target": "manywell", "dim": args.dim, "n": args.n, "repeats": args.repeats, "seed": args.seed,
              "floor": summary(floor), "tempered": rows}
    print(json.dumps({"floor": result["floor"]["mean"],
                      "w2_by_beta": {r["beta"]: r["w2"]["mean"] for r in rows}}, indent=2))
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
