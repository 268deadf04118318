#!/usr/bin/env bash
# Official vs tuned-on-validation (METHOD@tuned, docs/tuning.md) on four datasets, 5 splits each.
# Usage: benchmarks/tuning.sh A|B RESULTS_DIR   (two chains, meant to run side by side, 1 thread each)
# Every command resumes: rerun the chain to fill in what is missing.
set -u
chain=$1; R=$2
core="mrm,mrm@tuned,mrm-no-adapt,mrm-no-adapt@tuned,bt,bt@tuned,lore,lore@tuned"
nets="vpl,vpl@tuned,gpo,gpo@tuned"
run() { echo "### $(date -u +%H:%M:%S) bench run --methods $1 --dataset $2 --seeds 0-4 --threads 1 --results $R --no-table"; 
        bench run --methods "$1" --dataset "$2" --seeds 0-4 --threads 1 --results "$R" --no-table; echo "### rc=$? $(date -u +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg)"; }
if [ "$chain" = A ]; then
  run "$core" train-choice; run "$core" movielens; run "$nets" train-choice; run "$nets" movielens; run "pal,pal@tuned" train-choice
else
  run "$core" synthetic-reddit; run "$core" synthetic-prism; run "$nets" synthetic-reddit; run "$nets" synthetic-prism
fi
