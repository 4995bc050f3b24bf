"""Reading finished runs for jsp-report: find the run dirs under some paths, and describe each
as one row (method, model, budget, setting, seed, cost, quality, compute) from its
metrics.json, its Hydra config and its per-image metrics."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml

from jsp.selection import setting_of

COLUMNS = ["dataset", "method", "model", "lambdas", "setting", "keep", "seed", "params", "macs", "weight_mb",
           "peak_mb", "latency_ms", "val_miou", "miou", "f1", "auc", "pruned_miou", "pruned_f1", "zeroed", "cut_change",
           "latency_kept", "train_steps", "train_tmacs", "run"]
QUALITY = ["params", "macs", "weight_mb", "peak_mb", "latency_ms", "miou", "f1", "auc", "pruned_miou", "pruned_f1", "zeroed",
           "cut_change", "latency_kept", "train_steps", "train_tmacs"]


def find_runs(paths: list[str]) -> list[Path]:
    """Every directory at or below ``paths`` that holds a finished run (metrics.json with "final")."""
    runs = []
    for p in map(Path, paths):
        for metrics in sorted(p.rglob("metrics.json")) if p.is_dir() else []:
            try:
                finished = "final" in json.loads(metrics.read_text())
            except (OSError, ValueError) as e:  # a run being written, or a damaged file: not fatal
                print(f"jsp-report: skipped {metrics}: not readable JSON ({e})", file=sys.stderr)
                continue
            if finished:
                runs.append(metrics.parent)
    return runs


def describe(run: Path) -> dict:
    """One summary row for a run dir."""
    stages = json.loads((run / "metrics.json").read_text())
    final = stages["final"]
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text()) if (run / ".hydra" / "config.yaml").is_file() else {}
    hydra = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text()) if (run / ".hydra" / "hydra.yaml").is_file() else {}
    choices = (hydra.get("hydra") or {}).get("runtime", {}).get("choices", {})
    constraint, schedule = cfg.get("constraint", {}) or {}, cfg.get("schedule", {}) or {}
    method = choices.get("method")
    if not method:  # no preset: name it by constraint (and importance, when it pruned)
        name = choices.get("constraint", "?")
        method = (f"{name}+{schedule.get('importance', '?')}" if schedule.get("rounds")
                  else ("dense" if name == "none" else f"{name} (unpruned)"))
    if cfg.get("control") == "scratch" and method != "scratch":  # any method's architecture from scratch
        method = f"scratch({method})"
    if schedule.get("distill"):  # recovered by distillation: its own row, its (alpha, T) chosen on validation
        method += "+kd"
    lambdas = ",".join(f"{k}={constraint[k]:g}" for k in ("lambda_s", "lambda_r", "lambda") if k in constraint)
    keep = _budget_of(constraint, schedule)
    width = (cfg.get("model") or {}).get("width")  # runs of different widths are different models
    model = choices.get("model", "?") + (f"-w{width}" if width is not None else "")
    row = {"dataset": choices.get("dataset", "?"), "method": method, "model": model, "lambdas": lambdas or "-", "keep": keep,
           "seed": cfg.get("seed", "?"), "run": str(run)}
    row.update({k: final.get(k, float("nan")) for k in QUALITY})
    row.update(val_miou=final.get("val_miou", float("nan")), setting=setting_of(run), per_image_f1=_per_image(run))
    row["own_dense_miou"] = stages.get("dense", {}).get("miou", float("nan"))  # before pruning
    row["own_dense_params"] = stages.get("dense", {}).get("params", float("nan"))
    row["own_dense_macs"] = stages.get("dense", {}).get("macs", float("nan"))
    first = stages.get("pruned", stages.get("pruned_1", {}))  # the pruned network before fine-tuning
    row.update(pruned_miou=first.get("miou", float("nan")), pruned_f1=first.get("f1", float("nan")),
               zeroed=stages.get("dense", {}).get("units_off", float("nan")),  # units the constraint switched off
               cut_change=first.get("cut_logit_change", float("nan")),  # largest logit change the cut caused
               # a latency budget's cut: the fraction of the uncut network's latency it kept, timed side by side
               latency_kept=first.get("latency_kept_measured", float("nan")),
               train_steps=final.get("train_steps_total", float("nan")),  # the run's training, all stages
               train_tmacs=final.get("train_macs_total", float("nan")) / 1e12)
    return row


def _per_image(run: Path) -> dict:
    """{image: foreground F1 (mIoU for multi-class)} of the final network, from per_image.csv."""
    path = run / "checkpoints" / "final" / "per_image.csv"
    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open()))
    key = "f1" if rows and rows[0].get("f1") not in (None, "") else "miou"
    return {row["image"]: float(row[key]) for row in rows if row.get(key) not in (None, "")}


def _budget_of(constraint: dict, schedule: dict):
    """The run's budget label: the kept fraction of the parameters (a number: ``keep_params``
    or the constraint's budget), ``"macs F"`` / ``"latency F"`` for a MAC or latency budget
    (``keep_macs`` / ``keep_latency``, or the budget with ``schedule.budget_on``), 1.0
    unpruned, "threshold" without a budget."""
    if not schedule.get("rounds"):
        return 1.0
    for kind in ("macs", "latency"):
        if schedule.get(f"keep_{kind}") is not None:
            return f"{kind} {schedule[f'keep_{kind}']:g}"
    if schedule.get("keep_params") is not None:
        return schedule["keep_params"]
    if constraint.get("budget") is not None:
        on = schedule.get("budget_on", "params")
        return constraint["budget"] if on == "params" else f"{on} {constraint['budget']:g}"
    return "threshold"


def _keep_order(keep: str) -> tuple:
    """Parameter budgets from the largest down, then MAC budgets, latency budgets, then threshold-pruned runs."""
    text = str(keep)
    try:
        return (0, -float(text))
    except ValueError:
        for rank, kind in ((1, "macs "), (2, "latency ")):
            if text.startswith(kind):
                return (rank, -float(text[len(kind):]))
        return (3, 0.0)
