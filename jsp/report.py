"""jsp-report PATH...: compare runs. Reads run dirs (or multirun dirs holding them), writes

    summary.csv   one row per run: method, lambdas, keep, seed, cost and quality
    summary.md    that table, then mean +- std over seeds per (method, model, lambdas, keep)
    pareto.png    test mIoU against parameters (log x), one line per method

into ``--out`` (default: the first PATH).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

COLUMNS = ["dataset", "method", "model", "lambdas", "keep", "seed", "params", "macs", "weight_mb", "latency_ms",
           "miou", "f1", "auc", "run"]
QUALITY = ["params", "macs", "weight_mb", "latency_ms", "miou", "f1", "auc"]


def find_runs(paths: list[str]) -> list[Path]:
    """Every directory at or below ``paths`` that holds a finished run (metrics.json with "final")."""
    runs = []
    for p in map(Path, paths):
        for metrics in sorted(p.rglob("metrics.json")) if p.is_dir() else []:
            if "final" in json.loads(metrics.read_text()):
                runs.append(metrics.parent)
    return runs


def describe(run: Path) -> dict:
    """One summary row for a run dir."""
    final = json.loads((run / "metrics.json").read_text())["final"]
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text()) if (run / ".hydra" / "config.yaml").is_file() else {}
    hydra = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text()) if (run / ".hydra" / "hydra.yaml").is_file() else {}
    choices = (hydra.get("hydra") or {}).get("runtime", {}).get("choices", {})
    constraint, schedule = cfg.get("constraint", {}) or {}, cfg.get("schedule", {}) or {}
    method = choices.get("method")
    if not method:  # no preset: name it by constraint (and importance, when it pruned)
        name = choices.get("constraint", "?")
        method = (f"{name}+{schedule.get('importance', '?')}" if schedule.get("rounds")
                  else ("dense" if name == "none" else f"{name} (unpruned)"))
    lambdas = ",".join(f"{k}={constraint[k]:g}" for k in ("lambda_s", "lambda_r", "lambda") if k in constraint)
    keep = schedule.get("keep_params") if schedule.get("rounds") else 1.0
    keep = keep if keep is not None else ("threshold" if schedule.get("rounds") else 1.0)
    row = {"dataset": choices.get("dataset", "?"), "method": method, "model": choices.get("model", "?"), "lambdas": lambdas or "-", "keep": keep,
           "seed": cfg.get("seed", "?"), "run": str(run)}
    row.update({k: final.get(k, float("nan")) for k in QUALITY})
    return row


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    big = abs(mean) >= 1000
    return f"{mean:,.0f} +- {std:,.0f}" if big else f"{mean:.4f} +- {std:.4f}"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def groups_of(rows: list[dict]) -> dict[tuple, list[dict]]:
    grouped = defaultdict(list)
    for r in rows:
        grouped[(r["dataset"], r["method"], r["model"], r["lambdas"], str(r["keep"]))].append(r)
    return grouped


def write_tables(rows: list[dict], out: Path) -> None:
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
    cols = COLUMNS[:-1]
    lines = ["# Runs", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "# Mean +- std over seeds", "",
              "| dataset | method | model | lambdas | keep | seeds | " + " | ".join(QUALITY) + " |",
              "|" + "---|" * (6 + len(QUALITY))]
    for (dataset, method, model, lambdas, keep), rs in sorted(groups_of(rows).items()):
        lines.append(f"| {dataset} | {method} | {model} | {lambdas} | {keep} | {len(rs)} | "
                     + " | ".join(_mean_std([r[k] for r in rs]) for k in QUALITY) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def write_pareto(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    by_method = defaultdict(list)
    datasets = {r["dataset"] for r in rows}
    for (dataset, method, _, _, _), rs in groups_of(rows).items():
        method = method if len(datasets) == 1 else f"{method} ({dataset})"
        params = statistics.fmean(r["params"] for r in rs)
        mious = [r["miou"] for r in rs]
        by_method[method].append((params, statistics.fmean(mious), statistics.stdev(mious) if len(mious) > 1 else 0))
    for method, points in sorted(by_method.items()):
        points.sort()
        xs, ys, es = zip(*points)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test mIoU")
    ax.set_title("Quality against size: up and to the left is better")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(out / "pareto.png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="jsp-report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="run dirs or multirun dirs")
    ap.add_argument("--out", help="where to write (default: the first path)")
    args = ap.parse_args(argv)
    runs = find_runs(args.paths)
    if not runs:
        print(f"jsp-report: no finished runs (metrics.json with a 'final' entry) under {' '.join(args.paths)}",
              file=sys.stderr)
        return 2
    rows = [describe(r) for r in runs]
    out = Path(args.out or args.paths[0])
    out.mkdir(parents=True, exist_ok=True)
    write_tables(rows, out)
    write_pareto(rows, out)
    print(f"jsp-report: {len(rows)} runs -> {out / 'summary.csv'}, {out / 'summary.md'}, {out / 'pareto.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
