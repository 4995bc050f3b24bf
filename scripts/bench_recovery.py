"""The recovery benchmark's table (docs/benchmarks.md): read OUT/unet/<variant>/sN/metrics.json
from scripts/bench_compression.sh's recovery parts, print per variant the mean +- std over
seeds of validation and test mIoU, the pruned network before fine-tuning, the cut's logit
change, the zeroed fraction against the budget and the training compute, then the paired
differences (95 % t-intervals over seeds) the recovery issue asks about; write OUT/recovery.json.

    python scripts/bench_recovery.py outputs/bench_rec
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from benchlib import write_report
from jsp.stats import mean_std, paired

PAIRS = [("jsp_params{f}", "dense"), ("scratch_params{f}", "jsp_params{f}"), ("jsp_params{f}_rec", "jsp_params{f}"),
         ("jsp_params{f}_rec", "scratch_params{f}"), ("jsp_params{f}_rec", "scratch_params{f}_kd"),
         ("scratch_params{f}_kd", "scratch_params{f}"),
         ("jsp_params{f}", "correlation_params{f}"), ("jsp_params{f}", "taylor_params{f}"),
         ("jsp_params{f}", "redundancy_params{f}")]


def runs(out: Path) -> dict[str, dict[int, dict]]:
    """{variant: {seed: metrics.json}} of the finished runs."""
    found: dict[str, dict[int, dict]] = {}
    for path in sorted((out / "unet").glob("*/s*/metrics.json")):
        m = json.loads(path.read_text())
        if "final" in m:
            found.setdefault(path.parent.parent.name, {})[int(path.parent.name[1:])] = m
    return found


def row(seeds: dict[int, dict]) -> dict:
    pick = lambda key, stage="final": [m.get(stage, {}).get(key, float("nan")) for m in seeds.values()]  # noqa: E731
    first = {s: m.get("pruned", {}) for s, m in seeds.items()}
    return {"seeds": sorted(seeds), "val_miou": mean_std(pick("val_miou")), "miou": mean_std(pick("miou")),
            "pruned_miou": mean_std([f.get("miou", float("nan")) for f in first.values()]),
            "cut_change": max([f.get("cut_logit_change", float("nan")) for f in first.values()] or [float("nan")]),
            "zeroed": mean_std(pick("units_off", "dense")), "params_ratio": mean_std(pick("params_ratio")),
            "train_steps": mean_std(pick("train_steps_total")),
            "train_tmacs": mean_std([v / 1e12 for v in pick("train_macs_total")])}


def main(out: Path) -> None:
    found = runs(out)
    table = {name: row(seeds) for name, seeds in sorted(found.items())}
    print("| variant | seeds | val mIoU | test mIoU | before fine-tuning | cut change | params | steps | TMACs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in table.items():
        pm = lambda k, d=4: f"{r[k][0]:.{d}f} +- {r[k][1]:.{d}f}"  # noqa: E731
        print(f"| {name} | {len(r['seeds'])} | {pm('val_miou')} | {pm('miou')} | {pm('pruned_miou')} | "
              f"{r['cut_change']:.2g} | {r['params_ratio'][0]:.4f} | {r['train_steps'][0]:.0f} | {r['train_tmacs'][0]:.2f} |")
    diffs = {}
    for f in ("0.01", "0.1"):
        for a, b in PAIRS:
            a, b = a.format(f=f), b.format(f=f)
            if a in found and b in found:
                for key in ("miou", "val_miou"):
                    d = paired({s: m["final"][key] for s, m in found[a].items()},
                               {s: m["final"][key] for s, m in found[b].items()})
                    diffs[f"{a} - {b} ({key})"] = [d.n, d.mean, d.low, d.high]
                    print(f"{a} - {b} ({key}): {d}")
    write_report(json.loads(json.dumps({"variants": table, "paired": diffs}, default=float)), out / "recovery.json")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/bench_rec"))
