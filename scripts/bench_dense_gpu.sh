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
# REPORT_ONLY=1 reports the runs that finished in OUT (e.g. after the sweep was stopped).
[ "${REPORT_ONLY:-0}" = 1 ] || python3 -m jsp.cli -m experiment=bench_gpu dataset.root="$root" method=dense \
    model.width="$widths" seed="$seeds" trainer.steps="$steps" trainer.val_every=250 \
    hydra/launcher=joblib hydra.launcher.n_jobs=3 trainer.num_workers=4 hydra.sweep.dir="$out/runs"
python3 -m jsp.report "$out/runs" --out "$out" || echo "jsp-report: no finished run to report"
python3 - "$out" <<'PY' > "$out/curves.txt"
import json, sys
from pathlib import Path
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for run in sorted(Path(sys.argv[1], "runs").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1):
    if not (run / "metrics.json").is_file():
        continue
    ea = EventAccumulator(str(run / "tensorboard")); ea.Reload()
    overrides = " ".join(o for o in (run / ".hydra" / "overrides.yaml").read_text().split() if "width" in o or "seed" in o)
    test = json.loads((run / "metrics.json").read_text())["dense"]
    print(f"{run.name} {overrides} test mIoU {test['miou']:.4f} F1 {test['f1']:.4f} AUC {test['auc']:.4f}")
    for tag in ("val/miou", "val/f1"):
        print("  " + tag, " ".join(f"{e.step}:{e.value:.4f}" for e in ea.Scalars(tag)))
PY
