"""The search behind a latency target: the latency table proposes, a timing decides.

The table predicts a cut's latency from its convolutions; the search asks it for the largest
removal within a table target ``t`` (a fraction of the model's predicted ms), builds that
cut and times it against the model as it is now (paired, interleaved blocks). The measured
fraction ``m(t)`` rises with ``t`` but is not the table's line: what the table misses
(normalisation, activations, copies, how kernels overlap) can make ``m`` steep in one place
and flat in another. So ``t`` is searched on the measured ``m``: a bracket between a ``t``
that keeps too little and one that keeps too much (``t = 1``, nothing removed, keeps 1),
narrowed by interpolation (the secant through the bracket's ends) with bisection when the
interpolation proposes a cut already timed. A proportional correction alone jumps on such a
curve (measured on a UNet: table 0.5 -> measured 0.16, then 1.0 -> 1.0, 0.79 -> 0.32).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from jsp.errors import JSPError
from jsp.pruning.pruner import Target

log = logging.getLogger("jsp")


@dataclass(frozen=True)
class Point:
    """One timed candidate: the table target ``t`` that chose it, its measured fraction (the
    mean of ``timings`` timings) and the root channels it removes per group."""
    t: float
    keep: float
    chosen: tuple
    timings: int = 1


def choose_latency(pruner, groups, target: Target, candidates: int = 8) -> list[list[int]]:
    """Root channels to remove per group so that the model keeps ``target.keep`` of its
    measured latency, within ``pruner.settings.tolerance`` (relative) if any cut the table
    proposes does; otherwise the closest found, with a warning. At most ``candidates`` cuts
    are built and timed; one that meets the target is timed a second time and kept if the
    mean of both still does. ``pruner.latency_reference`` (a network, and the fraction of its
    latency the model keeps now) makes the target a fraction of that network's latency: a
    budget run's cut after its threshold cut, against the uncut network. Sets
    ``pruner.measured_keep``."""
    if pruner.latency is None:
        raise JSPError("a latency target needs a latency table (Pruner(latency=...))")
    goal, tol = target.keep, pruner.settings.tolerance * target.keep
    reference, now = pruner.latency_reference or (pruner.model, 1.0)
    floor = pruner.smallest("latency") * (1 + 1e-9)  # the least table fraction any cut leaves (+ rounding)
    propose = lambda t: (t, _key(pruner.search(groups, Target("latency", t))))  # noqa: E731
    timed: dict[tuple, Point] = {}
    lo, hi = None, Point(1.0, now, ())  # keep(lo) < goal < keep(hi); t = 1 removes nothing
    proposal = propose(min(max(goal / now, floor), 1.0))  # the calibrated table's own answer first
    for _ in range(candidates):
        t, key = proposal
        # a cut timed already, now reached from another t, keeps what it kept
        point = replace(timed[key], t=t) if key in timed else _time(pruner, reference, t, key, goal, now)
        if abs(point.keep - goal) <= tol and point.timings == 1:  # one timing can be off by 5 %: confirm it
            point = _time(pruner, reference, t, key, goal, now, point)
        timed[key] = point
        if abs(point.keep - goal) <= tol:
            break
        if point.keep < goal:
            lo = point if lo is None or point.t > lo.t else lo
        else:
            hi = point if point.t < hi.t else hi
        proposal = _next(lo, hi, goal, floor, timed, propose)
        if proposal is None:  # the bracket holds no cut not timed yet (or the floor keeps too much)
            break
    best = min(timed.values(), key=lambda p: abs(p.keep - goal))
    if abs(best.keep - goal) > tol:
        log.warning("latency cut: the closest cut found keeps %.3f of the measured latency, not %.3f (the "
                    "smallest these settings allow, e.g. schedule.round_to, or a noisy machine: time alone)",
                    best.keep, goal)
    pruner.measured_keep = best.keep
    return [list(c) for c in best.chosen]


def _key(chosen: list[list[int]]) -> tuple:
    """A cut as a dict key: its removed root channels per group."""
    return tuple(tuple(c) for c in chosen)


def _time(pruner, reference, t: float, key: tuple, goal: float, now: float, before: Point | None = None) -> Point:
    """Build the cut ``key`` and time it against ``reference``; with ``before`` (its earlier
    timings), the mean of all."""
    if not any(key):
        return Point(t, now, key, 2)
    candidate = pruner.probe.materialise([list(c) for c in key], pruner.latency.device)
    timing = pruner.latency.measure([reference, candidate], pruner.in_channels, pruner.full_size)
    log.info("latency cut: table target %.3f -> measured %.1f of %.1f ms (%.3f paired; goal %.3f)%s", t,
             timing.ms[1], timing.ms[0], timing.keep[1], goal, " again" if before else "")
    if before is None:
        return Point(t, timing.keep[1], key)
    n = before.timings + 1
    return Point(t, (before.keep * before.timings + timing.keep[1]) / n, key, n)


def _next(lo: Point | None, hi: Point, goal: float, floor: float, timed: dict, propose) -> tuple | None:
    """The next (table target, cut): within the bracket by the secant through its ends, else
    by bisection when the secant's cut was timed already; with no lower end yet, the upper
    end's t scaled by goal / its keep (at most halved), not below the floor."""
    if lo is None:
        if hi.t <= floor:
            return None  # the smallest cut already keeps too much
        return propose(max(floor, hi.t * max(0.5, goal / hi.keep)))
    if hi.keep <= lo.keep:  # noise made the curve fall: bisect
        guesses = [(lo.t + hi.t) / 2]
    else:
        secant = lo.t + (goal - lo.keep) * (hi.t - lo.t) / (hi.keep - lo.keep)
        guesses = [secant, (lo.t + hi.t) / 2]
    for t in guesses:
        proposal = propose(min(max(t, lo.t), hi.t))
        if proposal[1] not in timed:
            return proposal
    return None
