"""What pruning buys on a CPU: surgery time for the classic 31 M-parameter UNet, and batch-1
latency of dense vs pruned models at several kept-parameter ratios, next to the MAC ratio
(how much of the theoretical speed-up is real).

Importance is ``l1_norm`` on the untrained network: this measures surgery and speed, not
accuracy.

    python scripts/bench_pruning.py [--width 64] [--size 584 565] [--keep 0.5 0.25 0.1 0.01] [--out FILE]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from jsp.constraints import find_units
from jsp.metrics import count_macs, count_params
from jsp.metrics.cost import latency
from jsp.models import UNet
from jsp.pruning import Target, layer_scores, prune

from benchlib import write_report  # scripts/benchlib.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=2, default=[584, 565], help="H W (DRIVE's full image)")
    ap.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.25, 0.1, 0.01])
    ap.add_argument("--latency-s", type=float, default=10.0, help="at most this many seconds timing each network")
    ap.add_argument("--out", default="outputs/bench_pruning.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    size = tuple(args.size)
    dense = UNet(3, 2, args.width, args.depth).eval()
    d_params, d_macs = count_params(dense), count_macs(dense, 3, size)
    d_lat = latency(dense, 3, size, "cpu", args.latency_s)["ms"]
    rows = [{"keep": 1.0, "params": d_params, "macs": d_macs, "latency_ms": d_lat, "surgery_s": 0.0}]
    print(f"dense: {d_params / 1e6:.2f} M params, {d_macs / 1e9:.1f} GMACs, {d_lat:.0f} ms")
    for keep in args.keep:
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        layers = find_units(model, 3)
        prune(model, layers, layer_scores("l1_norm", layers, {}), Target("params", keep), 3, 64, size)
        surgery = time.perf_counter() - t0
        row = {"keep": keep, "params": count_params(model), "macs": count_macs(model, 3, size),
               "latency_ms": latency(model, 3, size, "cpu", args.latency_s)["ms"], "surgery_s": surgery}
        rows.append(row)
        print(f"keep {keep}: {row['params'] / 1e6:.3f} M params, surgery {surgery:.1f} s, {row['latency_ms']:.0f} ms")
    print(f"\n{'keep':>6} {'params':>10} {'params%':>8} {'GMACs':>8} {'MACs%':>7} {'latency ms':>11} "
          f"{'speed-up':>9} {'MAC speed-up':>13} {'surgery s':>10}")
    for r in rows:
        r["params_ratio"], r["macs_ratio"] = r["params"] / d_params, r["macs"] / d_macs
        r["speedup"], r["mac_speedup"] = d_lat / r["latency_ms"], d_macs / r["macs"]
        print(f"{r['keep']:>6} {r['params']:>10,} {100 * r['params_ratio']:>7.1f}% {r['macs'] / 1e9:>8.2f} "
              f"{100 * r['macs_ratio']:>6.1f}% {r['latency_ms']:>11.1f} {r['speedup']:>8.2f}x {r['mac_speedup']:>12.2f}x "
              f"{r['surgery_s']:>10.2f}")
    write_report({"rows": rows, "config": vars(args)}, args.out)


if __name__ == "__main__":
    main()
