#!/usr/bin/env bash
# The compression benchmark on DRIVE: every method of method.md s.5 at matched parameter
# budgets (keep 10 % and 1 %) on the classic UNet, plus MobileNetV3 dense vs jsp at 50 %.
#
#   scripts/bench_compression.sh cpu ../shared/data/DRIVE [OUT]   # UNet width 16, 1 seed (~45 min, 2 cores)
#   scripts/bench_compression.sh gpu /data/DRIVE [OUT]            # UNet width 64, 3 seeds, joblib
#
# Writes OUT/{unet_dense,unet_pruned,mnv3}/N/ run dirs and OUT/summary.{csv,md}, OUT/pareto.png.
set -euo pipefail
tier=${1:?usage: bench_compression.sh cpu|gpu DRIVE_ROOT [OUT]}
root=$(cd "${2:?usage: bench_compression.sh cpu|gpu DRIVE_ROOT [OUT]}" && pwd)
out=${3:-outputs/bench_compression_$tier}
methods=l1_norm,slimming,group_lasso,correlation,random,gradient_count,redundancy,jsp
if [ "$tier" = cpu ]; then
  width=16; seeds=0; launch=()
else
  width=64; seeds=0,1,2; launch=(hydra/launcher=joblib hydra.launcher.n_jobs=4)
fi
common=(experiment=bench_$tier dataset.root="$root")
run() { jsp-train -m "${common[@]}" "${launch[@]}" "$@"; }

run model=unet model.width=$width method=dense seed=$seeds hydra.sweep.dir="$out/unet_dense"
run model=unet model.width=$width method=$methods schedule.keep_params=0.1,0.01 seed=$seeds \
    hydra.sweep.dir="$out/unet_pruned"
run model=mobilenetv3 method=dense,jsp schedule.keep_params=0.5 seed=$seeds hydra.sweep.dir="$out/mnv3"
jsp-report "$out"
