"""Measured speed-up against the MAC ratio (issue 30), a benchmark: the dense DRIVE UNet, the
architectures pruning gives it at several budgets with and without ``round_to``, and any
trained runs, timed side by side by jsp-bench (one process, interleaved rounds), eager torch
and ONNX Runtime, batch 1 and 8.

    python scripts/bench_latency.py START_RUN [RUN ...] [--out outputs/bench_latency] [--threads 2]
    python scripts/bench_latency.py --fresh mobilenetv3_small [--out ...]   # no trained start
    python scripts/bench_latency.py START_RUN RUN ... --no-variants        # the runs alone
    python scripts/bench_latency.py --fresh mobilenetv3_small --latency 0.5 0.25 --no-variants

START_RUN: a dense run dir (the benchmark's start); or --fresh: the CPU tier's MobileNetV3-Small
(or UNet) with new weights, saved at DRIVE's size (timing needs the widths, not trained weights). The architecture-only variants are the
start pruned by l1_norm to each budget (latency depends on the widths, not on the weights);
the trained RUNs add their own widths. --latency F ...: also the start cut by l1_norm to keep F
of its measured latency (schedule.keep_latency's search: the latency table, calibrated, then
candidates timed), with and without round_to=8; what each search measured is printed and written
beside the side-by-side timing, so "met within 5 %" is checked by a second, independent timing.
Writes OUT/latency.json and prints the table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchlib import write_report
from jsp.bench import bench, table
from jsp.constraints import find_units
from jsp.errors import JSPError
from jsp.models.saved import load_model, save_model
from jsp.pruning import Target, layer_scores
from jsp.saved_runs import model_folder

# (cost, keep, round_to, cost_aware): budgets the benchmark compares; round_to=8 where width 8
# allows it; cost_aware="latency": the MAC budget met by ranking channels by l1 norm per predicted
# millisecond (schedule.cost_aware=latency), which removes the slow full-resolution channels first
VARIANTS = [("params", 0.1, 1, None), ("params", 0.1, 8, None), ("params", 0.3, 1, None), ("params", 0.3, 8, None),
            ("macs", 0.05, 1, None), ("macs", 0.2, 1, None), ("macs", 0.2, 4, None),
            ("macs", 0.05, 1, "latency"), ("macs", 0.2, 1, "latency")]


def variants(start: Path, out: Path, cache: str) -> list[Path]:
    """The start pruned to each budget of VARIANTS, saved under OUT/models; those rounding
    cannot reach are skipped with a line."""
    from jsp.pruning import PruneSettings, Pruner
    from jsp.pruning.latency import LatencyTable

    folder, saved = model_folder(str(start)), []
    for mode, keep, k, aware in VARIANTS:
        model, meta = load_model(folder)
        layers = find_units(model, meta.get("in_channels", 3))
        size = tuple(meta["input_size"])
        table = LatencyTable("cpu", cache) if aware == "latency" else None
        pruner = Pruner(model, layers, meta["in_channels"], size, PruneSettings(min_channels=2, round_to=k,
                                                                                 cost_aware=aware), 64, table)
        try:
            if table is not None:
                pruner.calibrate_latency()
            pruner.prune(layer_scores("l1_norm", layers, {}), Target(mode, keep))
        except JSPError as e:
            print(f"skipped {mode} {keep} round_to={k}: {e}", file=sys.stderr)
            continue
        path = out / "models" / f"{start.name}_l1_{mode}{keep}_r{k}{'_' + aware if aware else ''}"
        save_model(path, model, meta["architecture"], stage="pruned", input_size=list(size),
                   in_channels=meta["in_channels"])
        saved.append(path)
    return saved


def latency_variants(start: Path, out: Path, keeps: list[float], cache: str) -> tuple[list[Path], dict]:
    """The start cut by l1_norm to keep each fraction of ``keeps`` of its measured latency
    (round_to 1 and 8), saved under OUT/models; returns the paths and {path: what the search
    measured}. A budget the settings cannot reach is skipped with a line."""
    from jsp.pruning import PruneSettings, Pruner
    from jsp.pruning.latency import LatencyTable

    folder, saved, searched = model_folder(str(start)), [], {}
    table = LatencyTable("cpu", cache)
    for keep in keeps:
        for k in (1, 8):
            model, meta = load_model(folder)
            layers = find_units(model, meta.get("in_channels", 3))
            settings = PruneSettings(min_channels=2, round_to=k, cost_aware="latency")
            pruner = Pruner(model, layers, meta["in_channels"], tuple(meta["input_size"]), settings, 64, table)
            if pruner.smallest("latency") > keep:  # by the uncalibrated table: a first, cheap refusal
                print(f"skipped latency {keep} round_to={k}: the smallest cut keeps {pruner.smallest('latency'):.3f}"
                      " by the table", file=sys.stderr)
                continue
            pruner.calibrate_latency()
            pruner.prune(layer_scores("l1_norm", layers, {}), Target("latency", keep))
            path = out / "models" / f"{start.name}_l1_latency{keep}_r{k}"
            save_model(path, model, meta["architecture"], stage="pruned", input_size=list(meta["input_size"]),
                       in_channels=meta["in_channels"])
            saved.append(path)
            searched[str(path)] = {"target": keep, "round_to": k, "search_measured": pruner.measured_keep}
            print(f"latency {keep} round_to={k}: the search measured {pruner.measured_keep:.3f}", flush=True)
    return saved, searched


def fresh(key: str, out: Path) -> Path:
    """A new dense network of the CPU tier's kind, saved as a start would be (DRIVE's size)."""
    args = ({"variant": "small", "decoder_channels": [128, 64, 32, 16, 8]} if key == "mobilenetv3_small"
            else {"width": 8, "depth": 4})
    name = "mobilenetv3" if key == "mobilenetv3_small" else "unet"
    architecture = {"name": name, "args": {**args, "in_channels": 3, "num_classes": 2}}
    from jsp.registry import check_args

    entry, checked = check_args("model", name, architecture["args"], "architecture")
    torch.manual_seed(0)
    path = out / "models" / f"{key}_dense"
    save_model(path, entry.build(**checked).eval(), architecture, stage="dense", input_size=[584, 565],
               in_channels=3)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("start", nargs="?")
    p.add_argument("--fresh", choices=["mobilenetv3_small", "unet"], help="time a new network of this kind instead")
    p.add_argument("runs", nargs="*")
    p.add_argument("--out", default="outputs/bench_latency")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--no-variants", action="store_true", help="time START and the RUNs only (no l1_norm variants)")
    p.add_argument("--latency", nargs="*", type=float, default=[], help="also cut to these latency fractions")
    p.add_argument("--latency-cache", default="~/.cache/jsp/latency")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    if a.fresh:
        a.start = str(fresh(a.fresh, out))
    lat, searched = latency_variants(Path(a.start), out, a.latency, a.latency_cache) if a.latency else ([], {})
    cuts = [] if a.no_variants else map(str, variants(Path(a.start), out, a.latency_cache))
    models = [a.start, *cuts, *map(str, lat), *a.runs]
    report = bench(models, ["torch", "onnxruntime"], a.batch, "cpu", a.rounds, 0.5)
    for row in report["rows"]:
        row.update(searched.get(row["model"], {}))
    print(table(report))
    for path, s in searched.items():
        side = next(r for r in report["rows"] if r["model"] == path and r["runtime"] == "torch" and r["batch"] == 1)
        print(f"{Path(path).name}: target {s['target']}, the search measured {s['search_measured']:.3f}, "
              f"side by side {1 / side['speedup']:.3f} (eager, batch 1)")
    write_report(report, out / "latency.json")


if __name__ == "__main__":
    main()
