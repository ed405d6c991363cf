"""Run a grid of methods x targets x seeds with recipes/boltzmann.py and write a markdown table.

    python recipes/boltzmann_table.py --methods tb-expl-ls,tb-expl-lp-ls --targets gmm25,manywell \
        --seeds 0,1,2 --out runs/table --results runs/table/results.md [--jobs 2] [--iters N] [--dim 8,32,128]

A method is a named set of boltzmann.py flags (see METHODS; the paper's budget: 25k iterations,
10k with the Langevin parametrization). ``*-expl*`` methods use ``--explore 0.2`` (variance per unit
time, decayed over training); ``*-step`` methods use the paper's public-code exploration
(``--explore-step-std``: per-step std, decayed over 5000 iterations), about 20x more noise at first;
``*-stepdecay`` also decays that std, not the variance, linearly (``--explore-decay std``, the public code). Each run lives in OUT/<target>-<method>-s<seed>/, is
resumed if interrupted, and is skipped when its metrics.json exists. ``--jobs`` runs that many
single-threaded runs at once. The table holds mean ± std over seeds of Δlog Z, Δlog Z_RW, W2
(with the exact-sample floor) and seconds per iteration (median, and mean including local search).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from posterior.constraints.registry import TARGET_NAMES  # noqa: E402  (the targets recipes/boltzmann.py accepts)

LP_ITERS, ITERS = 10_000, 25_000
METHODS: dict[str, tuple[str, list[str]]] = {
    # name: (label in the table, flags)
    "tb": ("TB", ["--objective", "tb"]),
    "tb-ema": ("TB, weight average 0.998", ["--objective", "tb", "--ema", "0.998"]),
    "tb-expl": ("TB + Expl", ["--objective", "tb", "--explore", "0.2"]),
    "tb-expl-lp": ("TB + Expl + LP", ["--objective", "tb", "--explore", "0.2", "--langevin"]),
    "tb-expl-ls": ("TB + Expl + LS", ["--objective", "tb", "--explore", "0.2", "--local-search"]),
    "tb-expl-lp-ls": ("TB + Expl + LP + LS", ["--objective", "tb", "--explore", "0.2", "--langevin",
                                                "--local-search"]),
    "tb-expl-lp-ls-sep": ("TB + Expl + LP + LS, replay log Z", ["--objective", "tb", "--explore", "0.2", "--langevin",
                                                               "--local-search", "--replay-log-z", "separate",
                                                               "--log-z-init", "batch"]),
    "tb-lp": ("TB + LP", ["--objective", "tb", "--langevin"]),
    "tb-ls": ("TB + LS", ["--objective", "tb", "--local-search"]),
    "tb-lp-ls": ("TB + LP + LS", ["--objective", "tb", "--langevin", "--local-search"]),
    "vargrad-expl": ("VarGrad + Expl", ["--objective", "vargrad", "--explore", "0.2"]),
    "vargrad-expl-lp-ls": ("VarGrad + Expl + LP + LS", ["--objective", "vargrad", "--explore", "0.2",
                                                          "--langevin", "--local-search"]),
    # the paper's public-code exploration: per-step std ε (0.1 with LS), decayed over 5000 iterations
    "tb-expl-step": ("TB + Expl (step std 0.2)", ["--objective", "tb", "--explore-step-std", "0.2"]),
    "tb-expl-lp-step": ("TB + Expl (step std 0.2) + LP", ["--objective", "tb", "--explore-step-std", "0.2",
                                                           "--langevin"]),
    "tb-expl-ls-step": ("TB + Expl (step std 0.1) + LS", ["--objective", "tb", "--explore-step-std", "0.1",
                                                           "--local-search"]),
    "vargrad-expl-step": ("VarGrad + Expl (step std 0.2)", ["--objective", "vargrad", "--explore-step-std", "0.2"]),
    # the paper's exploration size kept twice as long (decayed over 10k iterations) or 1.5x larger (std 0.3)
    "tb-expl-step10k": ("TB + Expl (step std 0.2, decayed over 10k iterations)",
                        ["--objective", "tb", "--explore-step-std", "0.2", "--explore-horizon", "10000"]),
    "tb-expl-step03": ("TB + Expl (step std 0.3)", ["--objective", "tb", "--explore-step-std", "0.3"]),
    # the same with the public code's decay of the std (not the variance) to 0: variance ε²(1 - i/5000)²
    "tb-expl-stepdecay": ("TB + Expl (step std 0.2, std decayed linearly)",
                          ["--objective", "tb", "--explore-step-std", "0.2", "--explore-decay", "std"]),
    "flsubtb-lp": ("FL-SubTB + LP (flow with its own embeddings)",
                   ["--objective", "fl-subtb", "--langevin", "--flow-embedding", "separate"]),
    "flsubtb-lp-shared": ("FL-SubTB + LP (flow on the policy's embeddings, the paper's)",
                          ["--objective", "fl-subtb", "--langevin", "--flow-embedding", "shared"]),
    "pis-lp": ("PIS + LP", ["--objective", "pis", "--langevin"]),
    "smc": ("SMC (100 temperatures x 5 MALA steps)", ["--method", "smc"]),
    "mala": ("MALA (10k steps)", ["--method", "mala"]),
    "dds": ("DDS (KL, VP noising)", ["--method", "dds"]),
    "dis": ("DIS (KL, VP noising, score term)", ["--method", "dis", "--langevin"]),
}
# the Manywell LP + LS rows with the policy's learning rate at 3e-3 instead of the paper's 1e-3 (BENCHMARKS.md, issue 3)
METHODS.update({f"{base}-lr3e-3": (f"{METHODS[base][0]}, lr 3e-3", [*METHODS[base][1], "--lr-policy", "3e-3"])
                for base in ("tb-expl-lp-ls-sep", "vargrad-expl-lp-ls")})
# ... and evaluated with the moving average of the weights (--ema 0.998; BENCHMARKS.md, issue 3)
METHODS.update({f"{base}-lr3e-3-ema": (f"{METHODS[base][0]}, lr 3e-3, weight average 0.998",
                                       [*METHODS[base][1], "--lr-policy", "3e-3", "--ema", "0.998"])
                for base in ("tb-expl-lp-ls-sep", "vargrad-expl-lp-ls")})
COLUMNS = (("delta_log_z", "Δlog Z", ".3f"), ("delta_log_z_rw", "Δlog Z_RW", ".3f"), ("w2", "W2", ".3f"),
           ("seconds_per_iter", "s/iter", ".3f"), ("mean_seconds_per_iter", "s/iter (mean, incl. LS)", ".3f"),
           ("seconds_total", "s total", ".0f"), ("energy_evals", "energy evals", ".3g"))


def mean_seconds_per_iter(metrics: dict) -> float | None:
    """Total training seconds over iterations (the median s/iter hides local-search rounds)."""
    if metrics.get("seconds_total") is None or not metrics.get("iters"):
        return None
    return metrics["seconds_total"] / metrics["iters"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="tb-expl,tb-expl-lp,tb-expl-ls,tb-expl-lp-ls",
                   help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--targets", default="gmm25", help="comma-separated targets")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--dim", default=None,
                   help="target dimension, or several comma-separated (a scaling study: one table per d)")
    p.add_argument("--iters", type=int, default=None, help="override the paper's budget for every run")
    p.add_argument("--extra", default="", help="extra flags passed to every run (one string)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each single-threaded)")
    p.add_argument("--out", default="runs/table")
    p.add_argument("--results", default=None, help="markdown file (default OUT/results.md)")
    p.add_argument("--no-run", action="store_true", help="only tabulate existing runs")
    args = p.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        p.error(f"--iters must be an integer >= 1, got {args.iters}")
    if args.jobs < 1:
        p.error(f"--jobs must be an integer >= 1, got {args.jobs}")
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        p.error(f"--methods must be comma-separated names from {', '.join(sorted(METHODS))}, got {args.methods!r}")
    targets = [t for t in args.targets.split(",") if t]
    if not targets or not set(targets) <= set(TARGET_NAMES):
        p.error(f"--targets must be comma-separated names from {', '.join(TARGET_NAMES)}, got {args.targets!r}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seeds or min(seeds) < 0:
        p.error(f"--seeds must be integers >= 0, got {args.seeds!r}")
    try:
        parse_dims(args.dim)
    except ValueError as exc:
        p.error(str(exc))
    if args.extra.strip():  # every run's flags through recipes/boltzmann.py's own checks, before any run starts
        sys.path.insert(0, str(ROOT / "recipes"))
        import boltzmann

        for method in methods:
            message = io.StringIO()
            try:
                with contextlib.redirect_stderr(message):
                    boltzmann.parse_args([*METHODS[method][1], *args.extra.split(), "--out", "unused"])
            except SystemExit:
                reason = (message.getvalue().strip().splitlines() or ["refused"])[-1].split("error: ", 1)[-1]
                p.error(f"--extra must be flags recipes/boltzmann.py accepts (with method {method}): {reason}")
    return args


def run_name(target: str, method: str, seed: int, dim: int | None = None) -> str:
    return f"{target}{'' if dim is None else dim}-{method}-s{seed}"


def parse_dims(text: str | None) -> list[int | None]:
    """``--dim``: None (the target's default) or comma-separated positive integers."""
    if text is None:
        return [None]
    try:
        dims = [int(d) for d in text.split(",") if d]
    except ValueError:
        raise ValueError(f"--dim must be comma-separated integers, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise ValueError(f"--dim must be positive integers, got {text!r}")
    return dims


def command(args: argparse.Namespace, target: str, method: str, seed: int, out: Path,
            dim: int | None = None) -> list[str]:
    flags = METHODS[method][1]
    iters = args.iters or (LP_ITERS if "--langevin" in flags else ITERS)
    cmd = [sys.executable, str(ROOT / "recipes" / "boltzmann.py"), "--target", target, *flags,
           "--iters", str(iters), "--seed", str(seed), "--threads", "1", "--no-progress", "--resume",
           "--out", str(out)]
    if dim is not None:
        cmd += ["--dim", str(dim)]
    return cmd + args.extra.split()


def run_one(cmd: list[str], out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "a") as log:
        return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def summarize(values: list[float | None], spec: str = ".3f") -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    if len(known) == 1:
        return format(known[0], spec)
    return f"{format(statistics.mean(known), spec)} ± {format(statistics.stdev(known), spec)}"


def table(out: Path, targets: list[str], methods: list[str], seeds: list[int], dim: int | None = None) -> str:
    lines = []
    for target in targets:
        lines += [f"**{target}{'' if dim is None else f' (d = {dim})'}**", "", "| method | seeds | " + " | ".join(c[1] for c in COLUMNS) + " | W2 floor |",
                  "|---|---|" + "---|" * (len(COLUMNS) + 1)]
        for method in methods:
            found = [json.loads(p.read_text()) for s in seeds
                     if (p := out / run_name(target, method, s, dim) / "metrics.json").exists()]
            for m in found:
                m["mean_seconds_per_iter"] = mean_seconds_per_iter(m)
            if not found:
                continue
            cells = [summarize([m.get(key) for m in found], spec) for key, _, spec in COLUMNS]
            floor = summarize([m.get("w2_floor") for m in found])
            lines.append(f"| {METHODS[method][0]} | {len(found)} | " + " | ".join(cells) + f" | {floor} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]  # checked by parse_args
    targets = [t for t in args.targets.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    dims = parse_dims(args.dim)
    out = Path(args.out)
    jobs = []
    for seed in seeds:
        for dim in dims:
            for target in targets:
                for method in methods:
                    run_dir = out / run_name(target, method, seed, dim)
                    if not (run_dir / "metrics.json").exists():
                        jobs.append((command(args, target, method, seed, run_dir, dim), run_dir))
    if not args.no_run and jobs:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            codes = list(pool.map(lambda job: run_one(*job), jobs))
        failed = [str(d) for (_, d), c in zip(jobs, codes) if c != 0]
        if failed:
            print(f"failed runs (see their .log): {failed}", file=sys.stderr)
    text = "\n".join(table(out, targets, methods, seeds, dim) for dim in dims)
    results = Path(args.results) if args.results else out / "results.md"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
