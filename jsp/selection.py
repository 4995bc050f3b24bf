"""Choosing settings on the validation split (method.md s.6).

A benchmark grid may try several settings of one method at one budget (lambdas, a ramp, a
learning rate...). Per (dataset, model, budget, method) the setting with the best mean
*validation* mIoU over its seeds is kept, and only its test figures are reported: the test
split never chooses anything.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

# Overrides that say which run this is (its seed, budget, method, data, output), not which
# setting of the method: a grid over anything else is a choice selection makes.
NOT_A_SETTING = ("seed", "method", "model", "model.width", "dataset", "dataset.root", "experiment",
                 "schedule.keep_params", "schedule.keep_macs", "constraint.budget", "dense_cache", "init_from", "control",
                 "trainer.device", "resume")


def setting_of(run: Path) -> str:
    """The run's command-line overrides that define its setting, sorted (``-`` when none)."""
    path = run / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(path.read_text()) if path.is_file() else []
    kept = sorted(o for o in overrides or [] if o.split("=", 1)[0].lstrip("+~") not in NOT_A_SETTING
                  and not o.startswith(("hydra.", "hydra/")))
    return " ".join(kept) or "-"


def select(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows of the chosen settings, one record per choice). Rows need ``setting`` and ``val_miou``.

    Each record: dataset, model, keep, method, ``chosen`` setting, ``tried`` (setting -> (mean
    validation mIoU, seeds, mean test mIoU)). Ties go to the setting listed first (sorted).
    """
    grid = defaultdict(lambda: defaultdict(list))
    for r in rows:
        grid[(r["dataset"], r["model"], str(r["keep"]), r["method"])][r["setting"]].append(r)
    kept, records = [], []
    for (dataset, model, keep, method), settings in sorted(grid.items()):
        tried = {s: (_mean([r["val_miou"] for r in rs]), len(rs), _mean([r["miou"] for r in rs]))
                 for s, rs in sorted(settings.items())}
        chosen = max(tried, key=lambda s: -math.inf if math.isnan(tried[s][0]) else tried[s][0])
        kept += settings[chosen]
        records.append({"dataset": dataset, "model": model, "keep": keep, "method": method,
                        "chosen": chosen, "tried": tried})
    return kept, records


def selection_lines(records: list[dict]) -> list[str]:
    """The markdown section that shows every choice made on validation (only where there was one)."""
    made = [r for r in records if len(r["tried"]) > 1]
    lines = ["# Settings chosen on validation", ""]
    if not made:
        return lines + ["Every method ran one setting per budget: validation chose nothing.", ""]
    lines += ["Per budget and method, the setting with the best mean validation mIoU over seeds is the one "
              "ranked above; test mIoU is shown only to make the choice auditable.", "",
              "| dataset | model | keep | method | setting | seeds | val mIoU | test mIoU | chosen |", "|" + "---|" * 9]
    for r in made:
        for setting, (val, n, test) in r["tried"].items():
            lines.append(f"| {r['dataset']} | {r['model']} | {r['keep']} | {r['method']} | {setting} | {n} | "
                         f"{val:.4f} | {test:.4f} | {'**yes**' if setting == r['chosen'] else ''} |")
    return lines + [""]


def _mean(values: list[float]) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan
