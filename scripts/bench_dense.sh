#!/usr/bin/env bash
# The dense gate (method.md s.6): how good is the dense UNet a tier compares methods against?
# Dense UNets on DRIVE, every width x patch size x seed, validation every 250 steps: the
# validation curves (OUT/curves.txt) choose the recipe, the test figures only report it.
#
#   scripts/bench_dense.sh gpu DRIVE_ROOT OUT [STEPS] [WIDTHS] [SEEDS] [PATCHES]
#       bench_gpu recipe (batch 16, AMP), 3 jobs at once through joblib; default 3000 steps,
#       widths 16,32,64, seeds 0,1,2, patches of 128 px
#   scripts/bench_dense.sh cpu DRIVE_ROOT OUT [STEPS] [WIDTHS] [SEEDS] [PATCHES]
#       bench_cpu recipe (batch 8), one job at a time; default 3000 steps, width 8, seed 0,
#       patches of 96 and 128 px
#
# Writes OUT/runs/N/ (one run dir per job) and OUT/summary.{csv,md} (jsp-report), and
# OUT/curves.txt: every run's validation mIoU and F1 at each check (from its TensorBoard events).
set -euo pipefail
usage="usage: bench_dense.sh gpu|cpu DRIVE_ROOT OUT [STEPS] [WIDTHS] [SEEDS] [PATCHES]"
tier=${1:?$usage}
root=$(cd "${2:?$usage}" && pwd)
out=${3:?$usage}
steps=${4:-3000}
case $tier in
  gpu) widths=${5:-16,32,64}; seeds=${6:-0,1,2}; patches=${7:-128}
       run=(hydra/launcher=joblib hydra.launcher.n_jobs=3 trainer.num_workers=4) ;;
  cpu) widths=${5:-8}; seeds=${6:-0}; patches=${7:-96,128}; run=() ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
# REPORT_ONLY=1 reports the runs that finished in OUT (e.g. after the sweep was stopped).
[ "${REPORT_ONLY:-0}" = 1 ] || python3 -m jsp.cli -m experiment=bench_$tier dataset.root="$root" method=dense \
    model.width="$widths" seed="$seeds" dataset.process.patch_size="$patches" trainer.steps="$steps" \
    trainer.val_every=250 "${run[@]}" hydra.sweep.dir="$out/runs"
python3 -m jsp.report "$out/runs" --out "$out" || echo "jsp-report: no finished run to report"
python3 - "$out" <<'PY' > "$out/curves.txt"
import json, sys
from pathlib import Path
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for run in sorted(Path(sys.argv[1], "runs").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1):
    if not (run / "metrics.json").is_file():
        continue
    ea = EventAccumulator(str(run / "tensorboard")); ea.Reload()
    overrides = " ".join(o for o in (run / ".hydra" / "overrides.yaml").read_text().split() if "width" in o or "seed" in o or "patch" in o)
    test = json.loads((run / "metrics.json").read_text())["dense"]
    print(f"{run.name} {overrides} test mIoU {test['miou']:.4f} F1 {test['f1']:.4f} AUC {test['auc']:.4f}")
    for tag in ("val/miou", "val/f1"):
        print("  " + tag, " ".join(f"{e.step}:{e.value:.4f}" for e in ea.Scalars(tag)))
PY
