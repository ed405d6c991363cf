#!/usr/bin/env bash
# Paper-budget Table 1 runs (25k iterations; 10k with the Langevin parametrization), in two
# single-threaded lanes so that they share a 2-core machine. Each run checkpoints every 1000
# iterations; rerunning this script resumes unfinished runs (--resume).
#   bash recipes/table1.sh [OUT=runs/table1] [SEED=0]
set -u
OUT=${1:-runs/table1}
SEED=${2:-0}
PY=${PYTHON:-python}
run() { name=$1; shift; $PY recipes/boltzmann.py "$@" --seed "$SEED" --threads 1 --no-progress --resume \
          --out "$OUT/$name-s$SEED" > "$OUT/$name-s$SEED.log" 2>&1; }
mkdir -p "$OUT"
(
  run manywell-tb              --target manywell --objective tb --iters 25000
  run manywell-tb-expl-lp      --target manywell --objective tb --explore 0.2 --langevin --iters 10000
  run manywell-vargrad-expl    --target manywell --objective vargrad --explore 0.2 --iters 25000
  run manywell-flsubtb-lp      --target manywell --objective fl-subtb --langevin --flow-embedding separate --iters 10000
  run manywell-flsubtb-shared-lp --target manywell --objective fl-subtb --langevin --flow-embedding shared --iters 10000
  run manywell-pis-lp          --target manywell --objective pis --langevin --iters 10000
) &
(
  run gmm25-tb-expl-lp         --target gmm25 --objective tb --explore 0.2 --langevin --iters 10000
  run gmm25-tb-expl            --target gmm25 --objective tb --explore 0.2 --iters 25000
  run gmm25-tb-explstep        --target gmm25 --objective tb --explore-step-std 0.2 --iters 25000
  run funnel-tb                --target funnel --objective tb --iters 25000
) &
wait
