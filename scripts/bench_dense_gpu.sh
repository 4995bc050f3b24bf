#!/usr/bin/env bash
# The dense gate of the GPU tier (method.md s.6): how good is the dense UNet the GPU tier
# would compare methods against? Dense UNets of width 16, 32 and 64 on DRIVE, 3 seeds each,
# the bench_gpu recipe (patches of 128 px, batch 16, AMP) with SEEDS x WIDTHS jobs through joblib.
#
#   scripts/bench_dense_gpu.sh DRIVE_ROOT OUT [STEPS] [WIDTHS] [SEEDS]
#
# Writes OUT/runs/N/ (one run dir per job) and OUT/summary.{csv,md} (jsp-report), and
# OUT/curves.txt: every run's validation mIoU at each check (from its train.log).
set -euo pipefail
root=$(cd "${1:?usage: bench_dense_gpu.sh DRIVE_ROOT OUT [STEPS] [WIDTHS] [SEEDS]}" && pwd)
out=${2:?usage: bench_dense_gpu.sh DRIVE_ROOT OUT [STEPS] [WIDTHS] [SEEDS]}
steps=${3:-3000}; widths=${4:-16,32,64}; seeds=${5:-0,1,2}
python3 -m jsp.cli -m experiment=bench_gpu dataset.root="$root" method=dense \
    model.width="$widths" seed="$seeds" trainer.steps="$steps" trainer.val_every=250 \
    hydra/launcher=joblib hydra.launcher.n_jobs=3 trainer.num_workers=4 hydra.sweep.dir="$out/runs"
python3 -m jsp.report "$out/runs" --out "$out"
for d in "$out"/runs/*/; do
  echo "== $d $(grep -o 'model.width=[0-9]*\|seed=[0-9]*' "$d/.hydra/overrides.yaml" | tr '\n' ' ')"
  grep -o "val mIoU [0-9.]* at step [0-9]*\|dense: test mIoU [0-9.]*" "$d/train.log" || true
done > "$out/curves.txt"
