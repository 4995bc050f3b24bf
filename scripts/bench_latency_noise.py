"""How far one latency fraction moves on this machine (issue 30), a benchmark: the dense start
and one fixed cut of it, timed side by side as keep_latency's search times a candidate
(``LatencyTable.measure``: paired ratio over 15 interleaved blocks), again and again, with each
thread count in turn. The spread is the floor under "keep_latency met within 5 %" here.

    python scripts/bench_latency_noise.py START_RUN CUT_RUN [--repeats 8] [--threads 1 2] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from jsp.models.saved import load_model
from jsp.pruning.latency import LatencyTable
from jsp.saved_runs import model_folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("start")
    p.add_argument("cut")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default="outputs/bench_latency_noise.json")
    a = p.parse_args()
    dense, meta = load_model(model_folder(a.start))
    cut, _ = load_model(model_folder(a.cut))
    size, table = tuple(meta["input_size"]), LatencyTable("cpu")
    keeps, ms = {n: [] for n in a.threads}, {n: [] for n in a.threads}
    for r in range(a.repeats):
        for n in a.threads:  # the thread counts alternate, so drift falls on both
            torch.set_num_threads(n)
            t = table.measure([dense, cut], meta.get("in_channels", 3), size)
            keeps[n].append(t.keep[1])
            ms[n].append(t.ms[0])
            print(f"repeat {r} threads {n}: dense {t.ms[0]:.1f} ms, the cut keeps {t.keep[1]:.3f}", flush=True)
    summary = {n: {"keep_mean": statistics.mean(k), "keep_sd": statistics.stdev(k), "keep_min": min(k),
                   "keep_max": max(k), "dense_ms_median": statistics.median(ms[n]), "keeps": k}
               for n, k in keeps.items()}
    for n, s in summary.items():
        print(f"threads {n}: the cut keeps {s['keep_mean']:.3f} +- {s['keep_sd']:.3f} (range {s['keep_min']:.3f}-"
              f"{s['keep_max']:.3f}; sd {s['keep_sd'] / s['keep_mean']:.1%} of the mean); dense "
              f"{s['dense_ms_median']:.1f} ms")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"start": a.start, "cut": a.cut, "summary": summary}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
