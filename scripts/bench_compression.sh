#!/usr/bin/env bash
# The compression benchmark on DRIVE under the v2 protocol (method.md s.6; docs/benchmarks.md):
# every method of method.md s.5 at parameter budgets 10 %, 1 %, 0.25 % and MAC budgets 20 %,
# 5 % on the classic UNet, the two ablations at 1 %, the two controls, and MobileNetV3 at 50 %
# and 25 % of its parameters.
#
#   scripts/bench_compression.sh cpu DRIVE_ROOT [OUT] [SEEDS]   # UNet width 8, seeds 0,1,2
#   scripts/bench_compression.sh gpu DRIVE_ROOT [OUT] [SEEDS]   # UNet width 64, seeds 0-4, joblib
#
# Equal training: a pruned run trains trainer.steps + schedule.finetune_steps in all, and so
# does the dense reference (trained for the sum in one stage) and each control. Penalty methods
# (jsp, slimming, group_lasso, depgraph, the ablations) reach every budget with the budget
# controller (constraint.budget), so they need no lambda grid; methods without a constraint,
# and jsp_v1, prune their dense network to the budget by their importance. No setting is
# tuned here: the grid is each method's default, so the test split selects nothing
# (jsp-report's selection table shows the one setting per method). Runs of methods without a
# constraint share their dense network through dense_cache, and scratch prunes jsp's.
# Split by seed (SEEDS=0, then 1, ...) and merge with `jsp-report OUT`.
# EXTRA="trainer.steps=4 ..." appends overrides to every run (for a quick check of the script).
#
# Size, per seed: 56 UNet runs and 11 MobileNetV3 runs. On the 2-core development CPU a width-8
# UNet run of 1200 steps takes about 3 minutes, so one seed is about 3.5 hours there: the CPU
# tier is for one seed at a time in the background; the GPU tier is sized for all seeds.
#
# Writes OUT/unet/<method>[_macs]/N/ and OUT/mnv3/N/ run dirs, then OUT/summary.{csv,md} and
# OUT/pareto*.png (jsp-report).
set -euo pipefail
usage="usage: bench_compression.sh cpu|gpu DRIVE_ROOT [OUT] [SEEDS]"
tier=${1:?$usage}
root=$(cd "${2:?$usage}" && pwd)
out=${3:-outputs/bench_compression_$tier}
case $tier in
  cpu) width=8; seeds=${4:-0,1,2}; launch=(); steps=800; finetune=400 ;;
  gpu) width=64; seeds=${4:-0,1,2,3,4}; launch=(hydra/launcher=joblib hydra.launcher.n_jobs=4)
       steps=1500; finetune=750 ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
read -r -a extra <<< "${EXTRA:-}"
base=(experiment=bench_$tier dataset.root="$root" seed="$seeds" "${launch[@]}" "${extra[@]}")
unet=(model=unet model.width=$width)
cache=(dense_cache="$out/dense_cache")
params=0.1,0.01,0.0025
macs=0.2,0.05
run() { jsp-train -m "${base[@]}" "$@"; }

# The dense reference, trained as long as a pruned run in all.
run "${unet[@]}" method=dense trainer.steps=$((steps + finetune)) hydra.sweep.dir="$out/unet/dense"
# Penalty methods: the constraint zeroes the budget's worth of units by itself.
for m in jsp slimming group_lasso depgraph; do
  run "${unet[@]}" "${cache[@]}" method=$m constraint.budget=$params hydra.sweep.dir="$out/unet/$m"
  run "${unet[@]}" "${cache[@]}" method=$m constraint.budget=$macs schedule.budget_on=macs \
      hydra.sweep.dir="$out/unet/${m}_macs"
done
# Importance only (and v1), and the uniform control: the schedule's target is the budget.
for m in l1_norm taylor correlation random jsp_v1 uniform; do
  run "${unet[@]}" "${cache[@]}" method=$m schedule.keep_params=$params hydra.sweep.dir="$out/unet/$m"
  run "${unet[@]}" "${cache[@]}" method=$m schedule.keep_macs=$macs hydra.sweep.dir="$out/unet/${m}_macs"
done
# The ablations at 1 %, and jsp's pruned architectures re-initialised (scratch control).
run "${unet[@]}" method=gradient_count,redundancy constraint.budget=0.01 hydra.sweep.dir="$out/unet/ablations"
run "${unet[@]}" "${cache[@]}" method=scratch constraint.budget=$params hydra.sweep.dir="$out/unet/scratch"
# MobileNetV3: dense (equal training) and five methods at 50 % and 25 % of its parameters.
run model=mobilenetv3 method=dense trainer.steps=$((steps + finetune)) hydra.sweep.dir="$out/mnv3/dense"
run model=mobilenetv3 "${cache[@]}" method=jsp,slimming,group_lasso constraint.budget=0.5,0.25 \
    hydra.sweep.dir="$out/mnv3/penalty"
run model=mobilenetv3 "${cache[@]}" method=l1_norm,taylor schedule.keep_params=0.5,0.25 \
    hydra.sweep.dir="$out/mnv3/importance"
jsp-report "$out"
