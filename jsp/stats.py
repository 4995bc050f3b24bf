"""Statistics for comparing methods over seeds (method.md s.6): paired intervals, collapsed
runs, and the grouping of runs into settings.

Two methods run with the same seeds start from the same data order and initialisation, so
their per-seed differences cancel most of the seed-to-seed noise; a method beats another only
when the 95 % t-interval of those paired differences excludes zero.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

COLLAPSED_F1 = 0.05  # a binary run whose foreground F1 is below this predicts (almost) all background


@dataclass
class Paired:
    """Per-seed differences a - b: how many seeds, their mean, and the 95 % t-interval."""

    n: int
    mean: float
    low: float
    high: float
    unit: str = "seeds"

    @property
    def clear(self) -> bool:
        """True when the interval excludes zero (needs two or more seeds)."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.4f} over {self.n} {self.unit.rstrip('s')} (no interval)"
        return f"{self.mean:+.4f} [95% CI {self.low:+.4f}, {self.high:+.4f}] over {self.n} paired {self.unit}"


def paired(a: dict, b: dict, level: float = 0.95, unit: str = "seeds") -> Paired:
    """Paired difference of two methods' values per seed ({seed: value}) or per test image
    (``unit="images"``); only shared keys count."""
    from scipy.stats import t  # imported here: only jsp-report needs scipy

    seeds = sorted(set(a) & set(b), key=str)
    diffs = [a[s] - b[s] for s in seeds if not (math.isnan(a[s]) or math.isnan(b[s]))]
    if not diffs:
        return Paired(0, math.nan, math.nan, math.nan, unit)
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Paired(1, mean, math.nan, math.nan, unit)
    half = t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Paired(len(diffs), mean, mean - half, mean + half, unit)


def per_image_means(runs: list[dict], key: str = "per_image_f1") -> dict:
    """{image: mean over the runs (seeds)} for the images every run scored; {} when a run has none."""
    tables = [r.get(key) or {} for r in runs]
    shared = set.intersection(*(set(t) for t in tables)) if tables and all(tables) else set()
    return {image: statistics.fmean(t[image] for t in tables) for image in sorted(shared)}


def collapsed(f1: float) -> bool:
    """A binary segmentation run that collapsed to (almost) all background."""
    return isinstance(f1, (int, float)) and not math.isnan(f1) and f1 < COLLAPSED_F1


def groups_of(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Runs of one setting (dataset, method, model, lambdas, keep), i.e. its seeds."""
    grouped = defaultdict(list)
    for r in rows:
        grouped[(r["dataset"], r["method"], r["model"], r["lambdas"], str(r["keep"]))].append(r)
    return grouped


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std of the numbers in ``values`` (NaN and non-numbers left out; std 0 for one)."""
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
