"""log Ẑ against the number of steps T for fixed and learned forward variance (25GMM, TB + Expl).

    python recipes/variance_sweep.py --out runs/issue3 [--steps 8,16,32,64,128] [--iters 3000]
        [--log-var-ranges 4,1] [--log-var-lr-scales 1,0.1] [--log-z-inits zero,batch] [--no-run]

Runs (or, with --no-run, only reads) OUT/gmm25-sweep-T<T>-fixed and, for every learned log-variance
range R and log-variance learning-rate scale S, OUT/gmm25-sweep-T<T>-learned (R = 4, the default)
or -learned-r<R>, with the suffix -lr<S> when S != 1, with recipes/boltzmann.py, and writes
OUT/variance_sweep.png and OUT/variance_sweep.json. Every run is repeated for each TB log Z
initialization in --log-z-inits (suffix -lzbatch for "batch").
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from posterior.constraints.registry import TARGET_NAMES  # noqa: E402  (the targets recipes/boltzmann.py accepts)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/issue3")
    p.add_argument("--target", choices=TARGET_NAMES, default="gmm25")
    p.add_argument("--steps", default="8,16,32,64,128")
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=2000)
    p.add_argument("--log-var-ranges", default="4",
                   help="learned variance: comma-separated ranges of the log-variance around log sigma2")
    p.add_argument("--log-var-lr-scales", default="1",
                   help="learned variance: comma-separated learning-rate scales of the log-variance rows")
    p.add_argument("--log-z-inits", default="zero",
                   help="comma-separated TB log Z initializations (zero, batch), each a separate set of runs")
    p.add_argument("--no-run", action="store_true")
    args = p.parse_args(argv)
    for flag, minimum in (("iters", 1), ("eval_samples", 2)):
        if getattr(args, flag) < minimum:
            p.error(f"--{flag.replace('_', '-')} must be an integer >= {minimum}, got {getattr(args, flag)}")
    try:
        steps = [int(s) for s in args.steps.split(",") if s]
    except ValueError:
        p.error(f"--steps must be comma-separated integers, got {args.steps!r}")
    if not steps or min(steps) < 1:
        p.error(f"--steps must be integers >= 1, got {args.steps!r}")
    lists = {}
    for flag in ("log_var_ranges", "log_var_lr_scales"):
        text = getattr(args, flag)
        try:
            lists[flag] = [float(v) for v in text.split(",") if v]
        except ValueError:
            p.error(f"--{flag.replace('_', '-')} must be comma-separated numbers, got {text!r}")
        if not lists[flag] or not all(math.isfinite(v) and v > 0 for v in lists[flag]):
            p.error(f"--{flag.replace('_', '-')} must be finite numbers > 0, got {text!r}")
    ranges, scales = lists["log_var_ranges"], lists["log_var_lr_scales"]
    inits = [i for i in args.log_z_inits.split(",") if i]
    if not inits or not set(inits) <= {"zero", "batch"}:
        p.error(f"--log-z-inits must be from zero, batch; got {args.log_z_inits!r}")
    out = Path(args.out)
    suffix = {"zero": "", "batch": "-lzbatch"}
    learned = {("learned" if r == 4.0 else f"learned-r{r:g}") + ("" if s == 1.0 else f"-lr{s:g}") + suffix[i]: (r, s)
               for i in inits for r in ranges for s in scales}
    fixed = {"fixed" + suffix[i]: i for i in inits}
    init_of = {**fixed, **{kind: ("batch" if kind.endswith("-lzbatch") else "zero") for kind in learned}}
    rows: dict = {**{kind: {} for kind in fixed}, **{kind: {} for kind in learned}}
    for t in steps:
        for kind in rows:
            run = out / f"{args.target}-sweep-T{t}-{kind}"
            if not (run / "metrics.json").exists() and not args.no_run:
                cmd = [sys.executable, str(ROOT / "recipes" / "boltzmann.py"), "--target", args.target,
                       "--objective", "tb", "--explore", "0.2", "--steps", str(t), "--iters", str(args.iters),
                       "--seed", str(args.seed), "--eval-samples", str(args.eval_samples), "--threads", "1",
                       "--no-progress", "--resume", "--log-z-init", init_of[kind], "--out", str(run)]
                if kind in learned:
                    r, s = learned[kind]
                    cmd += ["--learn-variance", "--log-var-range", str(r), "--log-var-lr-scale", str(s)]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            if (run / "metrics.json").exists():
                m = json.loads((run / "metrics.json").read_text())
                rows[kind][t] = {"log_z_elbo": m["log_z_elbo"], "log_z_rw": m["log_z_rw"], "iters": m["iters"]}
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for kind, style in zip(rows, itertools.cycle(("o-", "s-", "^-", "v-", "d-", "P-", "X-", "*-"))):
        ts = sorted(rows[kind])
        init = ", log Z from batch 1" if init_of[kind] == "batch" else ""
        if kind in fixed:
            label = f"fixed variance{init}"
        else:
            r, s = learned[kind]
            label = (f"learned variance (log range ±{r:g}" + ("" if s == 1.0 else f", log-variance lr × {s:g}")
                     + f"{init})")
        if ts:
            ax.plot(ts, [rows[kind][t]["log_z_elbo"] for t in ts], style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("steps T")
    ax.set_ylabel("log Ẑ (ELBO), true log Z = 0")
    # log Ẑ <= log Z = 0 up to noise; diverged runs (log Ẑ << -10) leave the frame
    ax.set_ylim(max(-10.0, ax.get_ylim()[0]), min(0.5, ax.get_ylim()[1]))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize="small")
    ax.set_title(f"{args.target}: TB + Expl, {args.iters} iterations")
    fig.tight_layout()
    fig.savefig(out / "variance_sweep.png", dpi=120)
    (out / "variance_sweep.json").write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
