"""pareto.png / pareto_macs.png / pareto_latency_ms.png / pareto_peak_mb.png: test mIoU against
parameters, MACs, measured latency or peak inference memory, one line per method."""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from jsp.stats import groups_of, mean_std


def pareto_curves(rows: list[dict], cost: str = "params") -> dict[tuple, list[tuple]]:
    """(method, model, dataset) -> [(mean cost, mean mIoU, std)] per setting, cost = params or
    macs; "dense" from method=dense runs, else from the runs' own dense stages (the networks
    they pruned)."""
    curves = defaultdict(list)  # (method, model, dataset) -> [(params, mean, std)]
    for (dataset, method, model, _, _), rs in groups_of(rows).items():
        mean, std = mean_std([r["miou"] for r in rs])
        curves[(method, model, dataset)].append((statistics.fmean(r[cost] for r in rs), mean, std))
    for model, dataset in {(r["model"], r["dataset"]) for r in rows} - {(m, d) for k, m, d in curves if k == "dense"}:
        # No method=dense runs: the reference is the runs' own dense stages (what they pruned).
        own = [r for r in rows if (r["model"], r["dataset"]) == (model, dataset)
               and not math.isnan(r.get("own_dense_miou", math.nan)) and r.get(f"own_dense_{cost}", 0) > r[cost]]
        if own:
            mean, std = mean_std([r["own_dense_miou"] for r in own])
            curves[("dense", model, dataset)].append((statistics.fmean(r[f"own_dense_{cost}"] for r in own), mean, std))
    return curves


XLABEL = {"params": "parameters", "macs": "MACs per full-size image",
          "latency_ms": "CPU latency, batch 1, ms (each run's own timing: jsp-bench compares side by side)",
          "peak_mb": "peak inference memory of a full-size image, MB"}


def write_pareto(rows: list[dict], out: Path, cost: str = "params") -> None:
    """Two panels, same lines: every setting (left) and the top 0.03 mIoU zoomed in (right).

    One colour and marker per method, one line style per model/dataset; the dense network of
    each model is a dotted horizontal reference, so "above the dotted line" means no loss.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets, models = sorted({r["dataset"] for r in rows}), sorted({r["model"] for r in rows})
    curves = pareto_curves(rows, cost)
    methods = sorted({m for m, _, _ in curves if m != "dense"})
    colours = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    markers = "osD^vP*Xhp<>"
    styles = ["-", "--", "-.", ":"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), dpi=120)
    for ax in axes:
        for (method, model, dataset), points in sorted(curves.items()):
            tags = [t for t, many in ((model, len(models) > 1), (dataset, len(datasets) > 1)) if many]
            label = f"{method} ({', '.join(tags)})" if tags else method
            style = styles[(models.index(model) + len(models) * datasets.index(dataset)) % len(styles)]
            if method == "dense":
                for params, mean, _ in points:
                    ax.axhline(mean, color="black", linestyle=":", linewidth=1)
                    ax.plot([params], [mean], "k*", markersize=10, label=label)
                continue
            i = methods.index(method)
            xs, ys, es = zip(*sorted(points))
            ax.errorbar(xs, ys, yerr=es, color=colours(i % colours.N), marker=markers[i % len(markers)],
                        linestyle=style, capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel(XLABEL[cost] + " (log scale)")
        ax.grid(True, which="both", alpha=0.3)
    means = [mean for points in curves.values() for _, mean, _ in points if not math.isnan(mean)]
    top = max(means)
    axes[0].set_ylabel("test mIoU (mean +- std over seeds)")
    axes[0].set_title("All settings")
    axes[1].set_ylim(top - 0.03, top + 0.006)
    axes[1].set_title("Zoom: within 0.03 mIoU of the best")
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), fontsize=8, loc="center right")
    fig.suptitle("Quality against size: up and to the left is better; dotted: the dense network")
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    fig.savefig(out / ("pareto.png" if cost == "params" else f"pareto_{cost}.png"))
    plt.close(fig)
