#!/usr/bin/env bash
# The compression benchmark on DRIVE under the v2 protocol (method.md s.6; docs/benchmarks.md).
#
#   scripts/bench_compression.sh cpu DRIVE_ROOT [OUT] [SEEDS] [PARTS]   # UNet width 8, seeds 0,1,2
#   scripts/bench_compression.sh gpu DRIVE_ROOT [OUT] [SEEDS] [PARTS]   # UNet width 32, seeds 0-4
#
# Protocol. Per seed, a dense network is trained once by the tier's dense-gate recipe (the
# "start": 3000 steps) and every compared run starts from it (init_from): it trains
# trainer.steps more under its method's constraint, is pruned to the budget and fine-tuned
# schedule.finetune_steps. The dense reference trains trainer.steps + finetune_steps from the
# same start, so every run has the same training in all (start + steps + fine-tune); the
# controls, which cannot start from the dense weights, train that whole total from scratch
# (schedule.control_steps). Penalty methods (jsp, slimming, group_lasso, depgraph, the
# ablations) reach each budget through the budget controller (constraint.budget), so they
# need no lambda grid; importance methods and jsp_v1 prune to the budget
# (schedule.keep_params / keep_macs) and share their continued dense network through
# dense_cache. The grid is each method's default: validation chooses nothing here, and the
# test split chooses nothing ever.
#
# PARTS (default: all of them, in this order of priority) runs a part for every seed before
# the next part, so an interrupted benchmark has its most important comparisons on every seed:
#   p01    dense reference; jsp, slimming, group_lasso, l1_norm, taylor at 1 % of the params
#   p10    the same five at 10 %           m05  the same five at 5 % of the MACs
#   p01x   depgraph, jsp_v1 and the two ablations (gradient_count, redundancy) at 1 %
#   p01y   correlation and random at 1 %
#   p10x   depgraph, correlation, random, jsp_v1 at 10 %
#   p0025  the nine methods at 0.25 %      m20  the nine at 20 % of the MACs (and the four at 5 %)
#   ctrl   the controls at 1 %, 10 %, 0.25 %: uniform, and scratch (jsp's pruned architecture
#          re-initialised), both trained from scratch as long as start + run (the dearest part)
#   mnv3   MobileNetV3's dense gate: its start and dense reference per seed (the CPU tier uses
#          MobileNetV3-Small, 1.96 M parameters: a Large step costs 2.5 Small steps here; the
#          GPU tier uses MobileNetV3-Large)
#   mnv3p  MobileNetV3: jsp, slimming, group_lasso, l1_norm, taylor at 50 % and 25 % of the params
#   recgrid  recovery's grid, on the first seed at 1 %: jsp fine-tuned with distillation at
#          alpha 0.5, 0.9 x T 1, 4 (jsp+kd), and with learning-rate rewinding; jsp-report then
#          chooses each method's setting on validation
#   recbase  recovery's baselines at 1 % and 10 % (BUDGETS="0.01 0.1"): jsp, jsp's architecture
#          from scratch (equal steps), the dense reference
#   recmeth  at 1 % and 10 % (BUDGETS): jsp and the criteria the headline compares it with:
#          correlation, taylor, and jsp's redundancy ablation, each fine-tuned as jsp is
#          (KIND=macs BUDGETS=0.05: the same four at 5 % of the MACs)
#   lat    at a latency budget (LAT_BUDGETS, default "0.5 0.25": that fraction of the dense network's
#          latency measured on this machine, torch eager, batch 1, full image): jsp through its budget
#          controller (schedule.budget_on=latency), taylor and correlation to schedule.keep_latency; the
#          latency table is cached in ~/.cache/jsp/latency per device and thread count, so run it with
#          fixed OMP_NUM_THREADS and nothing else on the machine (the timings steer the cut)
#   latr8  the same with schedule.round_to=8
#   rec    at 1 % and 10 %: jsp with the recovery REC (the setting recgrid chose, e.g.
#          REC="schedule.distill=0.5 schedule.distill_temperature=4"), and jsp's architecture
#          from scratch distilled as REC distils
# A finished run (metrics.json with "final") is skipped, so the same command continues an
# interrupted benchmark; a run that another call is running is skipped too (a lock per run),
# so two calls on one OUT can share the work, e.g. SEEDS 0,1,2 and 2,1,0 on 2 cores with
# OMP_NUM_THREADS=1 each (about 10 % more runs per hour here; latencies are then not
# comparable). EXTRA="trainer.steps=4 ..." adds overrides to every run (a quick check of the
# script; a run's own lengths, such as the dense reference's, still win); START_STEPS
# overrides the start's length.
#
# Writes OUT/start/<model>/sN (the starts), OUT/<model>/<method>_<budget>/sN (the runs), then
# OUT/summary.{csv,md} and OUT/pareto*.png (jsp-report over the compared runs, not the starts).
set -euo pipefail
usage="usage: bench_compression.sh cpu|gpu DRIVE_ROOT [OUT] [SEEDS] [PARTS]"
tier=${1:?$usage}
root=$(cd "${2:?$usage}" && pwd)
out=${3:-outputs/bench_compression_$tier}
case $tier in
  cpu) width=8; seeds=${4:-0,1,2} ;;
  gpu) width=32; seeds=${4:-0,1,2,3,4} ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
parts=${5:-p01,p10,m05,p01x,p01y,p10x,p0025,m20,ctrl,mnv3,mnv3p}
start_steps=${START_STEPS:-3000}
read -r -a extra <<< "${EXTRA:-}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
# The compared runs' own lengths, from the tier's experiment config (for the dense reference).
read -r steps finetune < <(jsp-train experiment=bench_$tier "${extra[@]}" --cfg job 2>/dev/null | python3 -c \
  "import sys, yaml; c = yaml.safe_load(sys.stdin); print(c['trainer']['steps'], c['schedule']['finetune_steps'])")

finished() { [ -f "$1/metrics.json" ] && grep -q '"final"' "$1/metrics.json"; }

one() {  # one DIR SEED OVERRIDES...: a single jsp-train run, skipped when DIR holds a finished one
  local dir=$1 seed=$2 lock; shift 2
  if finished "$dir"; then return 0; fi
  mkdir -p "$(dirname "$dir")"
  # A run another call of this script is running (same OUT, e.g. seeds split over two streams)
  # is skipped: flock on DIR.lock, released when that run's process ends, even if killed.
  if command -v flock > /dev/null; then
    exec {lock}> "$dir.lock"
    if ! flock -n "$lock"; then echo "[bench] busy in another call: $dir"; exec {lock}>&-; return 0; fi
    if finished "$dir"; then exec {lock}>&-; return 0; fi
  fi
  echo "[bench $(date +%H:%M:%S)] $dir"
  jsp-train experiment=bench_$tier dataset.root="$root" seed="$seed" "${extra[@]}" "$@" hydra.run.dir="$dir" \
    > "$dir.log" 2>&1 || echo "[bench] FAILED: $dir (see $dir.log)"
  [ -z "${lock:-}" ] || exec {lock}>&-
}

model_args() {  # model_args KEY: the overrides of a model key
  case $1 in
    unet) echo "model=unet model.width=$width" ;;
    mnv3) [ "$tier" = cpu ] && echo "model=mobilenetv3_small" || echo "model=mobilenetv3" ;;
  esac
}

compare() {  # compare MODEL SEED METHOD KIND FRACTION [TAG OVERRIDES...]: one method at one budget, from
  # the seed's start; with TAG, the OVERRIDES (a recovery setting) apply and the run dir is named by TAG
  local key=$1 seed=$2 m=$3 kind=$4 f=$5 tag=${6:-} target total=$((start_steps + steps + finetune))
  read -r -a model <<< "$(model_args "$key")"
  one "$out/start/$key/s$seed" "$seed" "${model[@]}" method=dense trainer.steps="$start_steps"
  local from=(init_from="$out/start/$key/s$seed" dense_cache="$out/dense_cache")
  local dir="$out/$key/${m}_${kind}${f}${tag:+_$tag}/s$seed"
  model+=("${@:7}")
  case $m in
    dense) one "$out/$key/dense/s$seed" "$seed" "${model[@]}" "${from[@]}" method=dense \
             trainer.steps=$((steps + finetune)) ;;
    uniform) one "$dir" "$seed" "${model[@]}" method=uniform schedule.keep_params="$f" \
               schedule.control_steps="$total" ;;  # params budgets only
    scratch) one "$dir" "$seed" "${model[@]}" "${from[@]}" method=jsp control=scratch constraint.budget="$f" \
               schedule.budget_on="$kind" schedule.control_steps="$total" ;;  # jsp's architecture, new weights
    jsp|slimming|group_lasso|depgraph|gradient_count|redundancy)
      one "$dir" "$seed" "${model[@]}" "${from[@]}" method="$m" constraint.budget="$f" schedule.budget_on="$kind" ;;
    *) target=schedule.keep_$kind
       one "$dir" "$seed" "${model[@]}" "${from[@]}" method="$m" "$target=$f" ;;
  esac
}

part() {  # part NAME SEED
  local s=$2 m f five=(jsp slimming group_lasso l1_norm taylor) four=(depgraph correlation random jsp_v1)
  case $1 in
    p01) compare unet "$s" dense params 1; for m in "${five[@]}"; do compare unet "$s" "$m" params 0.01; done ;;
    p10) for m in "${five[@]}"; do compare unet "$s" "$m" params 0.1; done ;;
    m05) for m in "${five[@]}"; do compare unet "$s" "$m" macs 0.05; done ;;
    p01x) for m in depgraph jsp_v1 gradient_count redundancy; do compare unet "$s" "$m" params 0.01; done ;;
    p01y) for m in correlation random; do compare unet "$s" "$m" params 0.01; done ;;
    p10x) for m in "${four[@]}"; do compare unet "$s" "$m" params 0.1; done ;;
    p0025) for m in "${five[@]}" "${four[@]}"; do compare unet "$s" "$m" params 0.0025; done ;;
    m20) for m in "${five[@]}" "${four[@]}"; do compare unet "$s" "$m" macs 0.2; done
         for m in "${four[@]}"; do compare unet "$s" "$m" macs 0.05; done ;;
    ctrl) for f in 0.01 0.1 0.0025; do compare unet "$s" uniform params $f; compare unet "$s" scratch params $f; done ;;
    mnv3) compare mnv3 "$s" dense params 1 ;;
    mnv3p) for f in 0.5 0.25; do for m in "${five[@]}"; do compare mnv3 "$s" "$m" params $f; done; done ;;
    recgrid) [ "$s" = "${seed_list[0]}" ] || return 0
             compare unet "$s" jsp params 0.01
             for a in 0.5 0.9; do for t in 1 4; do
               compare unet "$s" jsp params 0.01 "kd${a}t$t" schedule.distill=$a schedule.distill_temperature=$t
             done; done
             compare unet "$s" jsp params 0.01 rewind schedule.finetune_lr=rewind ;;
    recbase) for f in ${BUDGETS:-0.01 0.1}; do compare unet "$s" jsp params $f; compare unet "$s" scratch params $f; done
             compare unet "$s" dense params 1 ;;
    recmeth) for f in ${BUDGETS:-0.01 0.1}; do
               for m in jsp correlation taylor redundancy; do compare unet "$s" "$m" "${KIND:-params}" $f; done
             done ;;
    rec) read -r -a rec <<< "${REC:?part rec needs REC, the recovery setting recgrid chose}"
         local kd=(); for o in "${rec[@]}"; do [[ $o == schedule.distill* ]] && kd+=("$o"); done
         for f in ${BUDGETS:-0.01 0.1}; do
           compare unet "$s" jsp params $f rec "${rec[@]}"
           [ ${#kd[@]} = 0 ] || compare unet "$s" scratch params $f kd "${kd[@]}"
         done ;;
    lat) for f in ${LAT_BUDGETS:-0.5 0.25}; do
           for m in jsp taylor correlation; do compare unet "$s" "$m" latency $f; done
         done ;;
    latr8) for f in ${LAT_BUDGETS:-0.5 0.25}; do
             for m in jsp taylor correlation; do compare unet "$s" "$m" latency $f r8 schedule.round_to=8; done
           done ;;
    *) echo "bench_compression.sh: unknown part $1 (p01 p10 m05 p01x p01y p10x p0025 m20 ctrl mnv3 mnv3p recgrid recbase recmeth rec lat latr8)" >&2
       exit 2 ;;
  esac
}

IFS=, read -r -a seed_list <<< "$seeds"
IFS=, read -r -a part_list <<< "$parts"
if [ "$tier" = cpu ]; then  # one run at a time (2 cores): every seed of a part before the next part
  for p in "${part_list[@]}"; do for s in "${seed_list[@]}"; do part "$p" "$s"; done; done
else  # one GPU: the seeds run side by side, each through the parts in order
  for s in "${seed_list[@]}"; do (for p in "${part_list[@]}"; do part "$p" "$s"; done) & done
  wait
fi
jsp-report "$out/unet" "$out/mnv3" --out "$out"
