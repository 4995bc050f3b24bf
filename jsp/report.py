"""jsp-report PATH...: compare runs. Reads run dirs (or multirun dirs holding them), writes

    summary.csv   one row per run: method, lambdas, setting, keep, seed, cost, validation
                  and test quality
    summary.md    a headline (per budget: the leader, whether its lead is clear, where jsp
                  stands), which method wins at each budget (mean over seeds, the leader's paired 95 %
                  interval against the runner-up, collapsed runs), the settings chosen on
                  validation where a method ran several, then mean +- std per setting, then
                  every run

Where a sweep tried several settings of a method at one budget, only the one with the best
mean validation mIoU is ranked (jsp/selection.py).
    pareto.png    test mIoU against parameters (log x), one line per method (and model);
    pareto_macs.png   the same against MACs; pareto_latency_ms.png, pareto_peak_mb.png against
                      measured latency and peak memory, when every run recorded them

into ``--out`` (default: the first PATH).
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from jsp.pareto import write_pareto
from jsp.runs import COLUMNS, QUALITY, _budget_of, _keep_order, describe, find_runs  # noqa: F401 (tests use them)
from jsp.selection import select, selection_lines
from jsp.stats import COLLAPSED_F1, collapsed, groups_of, mean_std, paired, per_image_means

def _fmt_mean_std(values: list[float]) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "-"
    big = abs(mean) >= 1000
    return f"{mean:,.0f} +- {std:,.0f}" if big else f"{mean:.4f} +- {std:.4f}"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def rank_budgets(rows: list[dict]) -> list[dict]:
    """Per (dataset, model, keep): the settings ranked by mean test mIoU, best first.

    Returns one dict per budget: ``dataset, model, keep, ranked`` (list of dicts with method,
    lambdas, seeds, collapsed runs, mean/std of every QUALITY column, and ``vs_leader``: the paired
    difference to the leader) and ``verdict``: the leader against the best other method, a win
    only when the 95 % interval of their per-seed paired differences excludes zero.
    """
    budgets = defaultdict(list)
    for (dataset, method, model, lambdas, keep), rs in groups_of(rows).items():
        entry = {"method": method, "lambdas": lambdas, "seeds": len(rs),
                 "own_dense": mean_std([r.get("own_dense_miou", float("nan")) for r in rs])[0],
                 "by_seed": {r["seed"]: r["miou"] for r in rs}, "collapsed": sum(collapsed(r["f1"]) for r in rs),
                 "by_image": per_image_means(rs)}
        for k in QUALITY:
            entry[k], entry[k + "_std"] = mean_std([r.get(k, float("nan")) for r in rs])
        budgets[(dataset, model, keep)].append(entry)
    dense = {(d, m): e["miou"] for (d, m, _), es in budgets.items() for e in es if e["method"] == "dense"}
    out = []
    for (dataset, model, keep), entries in sorted(budgets.items(), key=lambda kv: (kv[0][0], kv[0][1], _keep_order(kv[0][2]))):
        entries.sort(key=lambda e: -e["miou"] if not math.isnan(e["miou"]) else math.inf)
        for e in entries:
            e["vs_dense"] = e["miou"] - dense.get((dataset, model), e["own_dense"])
            e["vs_leader"] = paired(e["by_seed"], entries[0]["by_seed"]) if e is not entries[0] else None
        out.append({"dataset": dataset, "model": model, "keep": keep, "ranked": entries, "verdict": _verdict(entries)})
    return out


def _verdict(entries: list[dict]) -> str:
    """The leader against the runner-up: by the paired interval over seeds, then (where both have
    per_image.csv) over test images, each image's F1 averaged over seeds."""
    best = entries[0]
    if len(entries) == 1:
        return f"{best['method']} is the only method at this budget"
    second = entries[1]
    diff = paired(best["by_seed"], second["by_seed"])
    if best["miou"] == second["miou"]:
        head = f"{best['method']} and {second['method']} tie at {best['miou']:.4f} mIoU"
    else:
        head = f"{best['method']} leads {second['method']} by {best['miou'] - second['miou']:.4f} mIoU"
    images = paired(best["by_image"], second["by_image"], unit="images")
    by_image = (f". Per-image F1, paired {images}" + (": clear" if images.clear else ": includes zero")
                if images.n >= 2 else "")
    if diff.n < 2:
        return head + " (fewer than two paired seeds: no interval; do not read small gaps as wins)" + by_image
    if diff.clear and diff.mean > 0:
        return head + f"; paired {diff}: a clear win" + by_image
    tied = [best["method"]] + [e["method"] for e in entries[1:] if e["vs_leader"].n >= 2 and not e["vs_leader"].clear]
    return (head + f"; paired {diff} includes zero: no clear winner (not distinguishable from the leader: "
            f"{', '.join(tied)})" + by_image)


def headline_lines(budgets: list[dict], focus: str = "jsp") -> list[str]:
    """One row per budget with pruned methods: the leader, whether its lead over the runner-up is
    clear by the paired interval over seeds, and ``focus`` against the best other method."""
    lines = ["# Headline", "", "Per budget: the leader by mean test mIoU; its paired difference to the runner-up "
             "(a win only where the 95 % interval over seeds excludes zero); and " + focus + " against the best "
             "other method, paired the same way.", "",
             f"| budget | leader | mIoU | runner-up | leader - runner-up | verdict | {focus} - best other |", "|" + "---|" * 7]
    for b in budgets:
        ranked = [e for e in b["ranked"] if e["method"] != "dense"]
        if len(ranked) < 2:
            continue
        best, second = ranked[:2]
        diff = paired(best["by_seed"], second["by_seed"])
        verdict = ("one seed: no interval" if diff.n < 2 else "clear win" if diff.clear and diff.mean > 0
                   else "no clear winner")
        mine = next((e for e in ranked if e["method"] == focus), None)
        other = next((e for e in ranked if e is not mine), None)
        vs = "-"
        if mine is not None:
            d = paired(mine["by_seed"], other["by_seed"])
            vs = f"{d} vs {other['method']}" + (": clear" if d.clear else "")
        lines.append(f"| {b['model']} / {b['keep']} | {best['method']} | {_pm(best['miou'], best['miou_std'], best['seeds'])} "
                     f"| {second['method']} | {diff} | {verdict} | {vs} |")
    return lines + [""]


def _pm(mean: float, std: float, seeds: int, digits: int = 4) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" +- {std:.{digits}f}" if seeds > 1 else "")


def write_tables(rows: list[dict], out: Path, every_run: list[dict] | None = None,
                 choices: list[dict] | None = None) -> None:
    """summary.csv (every run) and summary.md: ranked tables of ``rows`` (the settings chosen
    on validation), the choices made, means per setting and every run."""
    every_run = every_run if every_run is not None else rows
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in every_run)
    lines = ["# Which method wins at which budget", "",
             "Ranked by mean test mIoU over seeds (+- sample std when there are several); "
             "`vs dense` is the gap to the unpruned network of the same model: the `dense` method's runs "
             "when the report has them, else each run's own network before pruning. `vs leader` is the "
             "mean per-seed paired difference to the leader with its 95 % t-interval; a method wins only "
             "where that interval excludes zero. `collapsed` counts runs that predict (almost) only "
             f"background (foreground F1 < {COLLAPSED_F1}); they are in the means, so look at them.", ""]
    budgets = rank_budgets(rows)
    lines += headline_lines(budgets)
    for b in budgets:
        lines += [f"## {b['dataset']} / {b['model']} / keep {b['keep']}", "", f"**{b['verdict']}**", "",
                  "| # | method | lambdas | seeds | collapsed | params | GMACs | MB | peak MB | latency ms | mIoU | F1 "
                  "| AUC | mIoU before FT | zeroed | vs dense | vs leader (paired) |",
                  "|" + "---|" * 17]
        for i, e in enumerate(b["ranked"], 1):
            lead = "-" if e["vs_leader"] is None else str(e["vs_leader"])
            lines.append(f"| {i} | {e['method']} | {e['lambdas']} | {e['seeds']} | {e['collapsed']} | {_fmt(round(e['params']))} | "
                         f"{e['macs'] / 1e9:.2f} | {e['weight_mb']:.3f} | {e['peak_mb']:.1f} | {_pm(e['latency_ms'], e['latency_ms_std'], 1, 1)} | "
                         f"{_pm(e['miou'], e['miou_std'], e['seeds'])} | {_pm(e['f1'], e['f1_std'], e['seeds'])} | "
                         f"{_pm(e['auc'], e['auc_std'], e['seeds'])} | {_pm(e['pruned_miou'], e['pruned_miou_std'], e['seeds'])} "
                         f"| {_pm(e['zeroed'], e['zeroed_std'], 1, 2)} | {e['vs_dense']:+.4f} | {lead} |".replace("+nan", "-"))
        lines.append("")
    lines += selection_lines(choices or [])
    cols = COLUMNS[:-1]
    lines += ["# Mean +- std over seeds", "",
              "| dataset | method | model | lambdas | keep | seeds | " + " | ".join(QUALITY) + " |",
              "|" + "---|" * (6 + len(QUALITY))]
    for (dataset, method, model, lambdas, keep), rs in sorted(groups_of(every_run).items()):
        lines.append(f"| {dataset} | {method} | {model} | {lambdas} | {keep} | {len(rs)} | "
                     + " | ".join(_fmt_mean_std([r.get(k, float("nan")) for r in rs]) for k in QUALITY) + " |")
    lines += ["", "# Runs", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, float("nan"))) for c in cols) + " |" for r in every_run]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def _version() -> str:
    from jsp.provenance import version_line

    return version_line("jsp-report")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="jsp-report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=_version())
    ap.add_argument("paths", nargs="+", help="run dirs or multirun dirs")
    ap.add_argument("--out", help="where to write (default: the first path)")
    args = ap.parse_args(argv)
    runs = find_runs(args.paths)
    if not runs:
        print(f"jsp-report: no finished runs (metrics.json with a 'final' entry) under {' '.join(args.paths)}",
              file=sys.stderr)
        return 2
    rows = []
    for run in runs:
        try:
            rows.append(describe(run))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as e:
            print(f"jsp-report: skipped {run}: {type(e).__name__}: {e}", file=sys.stderr)
    if not rows:
        print("jsp-report: no run could be read", file=sys.stderr)
        return 2
    out = Path(args.out or args.paths[0])
    out.mkdir(parents=True, exist_ok=True)
    chosen, choices = select(rows)  # validation picks each method's setting; test only reports it
    write_tables(chosen, out, rows, choices)
    write_pareto(chosen, out)
    write_pareto(chosen, out, "macs")
    for cost in ("latency_ms", "peak_mb"):  # measured costs, where the runs recorded them
        if chosen and all(math.isfinite(r.get(cost, math.nan)) for r in chosen):
            write_pareto(chosen, out, cost)
    made = sum(len(c["tried"]) > 1 for c in choices)
    print(f"jsp-report: {len(rows)} runs -> {out / 'summary.csv'}, {out / 'summary.md'}, {out / 'pareto.png'}"
          + (f"; {made} setting choice(s) made on validation" if made else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
