#!/usr/bin/env bash
# The compression benchmark on DRIVE: every method of method.md s.5 at matched parameter
# budgets (keep 10 % and 1 %) on the classic UNet, with the two controls (uniform: a narrower
# UNet from scratch; scratch: jsp's pruned architecture re-initialised), plus MobileNetV3
# dense vs jsp at 50 %.
#
#   scripts/bench_compression.sh cpu ../shared/data/DRIVE [OUT] [SEEDS]  # UNet width 16, seed 0 (~35 min, 2 cores)
#   scripts/bench_compression.sh gpu /data/DRIVE [OUT] [SEEDS]           # UNet width 64, seeds 0,1,2, joblib
#
# Writes OUT/{unet_dense,unet_pruned,mnv3}/N/ run dirs and OUT/summary.{csv,md}, OUT/pareto.png.
set -euo pipefail
tier=${1:?usage: bench_compression.sh cpu|gpu DRIVE_ROOT [OUT] [SEEDS]}
root=$(cd "${2:?usage: bench_compression.sh cpu|gpu DRIVE_ROOT [OUT] [SEEDS]}" && pwd)
out=${3:-outputs/bench_compression_$tier}
# Methods that train without a constraint (l1_norm, correlation, random) share the dense
# network of `method=dense` through dense_cache; they are listed apart so that parallel jobs
# rarely wait on each other for it. Keep is the outer loop: the second budget reuses every
# dense network the first one trained.
methods=l1_norm,slimming,group_lasso,gradient_count,redundancy,jsp,correlation,random,uniform,scratch
if [ "$tier" = cpu ]; then
  width=16; seeds=${4:-0}; launch=()
else
  width=64; seeds=${4:-0,1,2}; launch=(hydra/launcher=joblib hydra.launcher.n_jobs=4)
fi
common=(experiment=bench_$tier dataset.root="$root" dense_cache="$out/dense_cache")
run() { jsp-train -m "${common[@]}" "${launch[@]}" "$@"; }

run model=unet model.width=$width method=dense seed=$seeds hydra.sweep.dir="$out/unet_dense"
run schedule.keep_params=0.1,0.01 model=unet model.width=$width method=$methods seed=$seeds \
    hydra.sweep.dir="$out/unet_pruned"
run model=mobilenetv3 method=dense,jsp schedule.keep_params=0.5 seed=$seeds hydra.sweep.dir="$out/mnv3"
jsp-report "$out"
