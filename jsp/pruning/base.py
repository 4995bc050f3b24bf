"""``Pruner``: the prunable units of one model state and everything that measures or changes
them, built once (in the spirit of Torch-Pruning's ``BasePruner``, with its settings in one
small dataclass instead of a long constructor).

It owns the unit layers, the dependency graph traced once on the live model, the trace
geometry (a square input of ``size``), the framework's settings (``PruneSettings``: eps,
min_channels, min_keep, round_to, cost_aware) and, built on first use, a meta-device copy for
costing candidates (``MetaProbe``). The budget controller, the budget search and the surgery
all go through it, so one graph serves a whole training stage. A surgery changes the model's
structure: build a new Pruner after ``prune`` (calls on a stale one fail with a clear error).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from jsp.constraints.units import UnitLayer
from jsp.errors import JSPError
from jsp.models import pad_multiple
from jsp.pruning.latency_search import choose_latency
from jsp.pruning.pruner import ChannelGroups, Target, groups_of, layer_widths
from jsp.pruning.surgery import MetaProbe, model_cost, remove_channels, zero_channels


@dataclass(frozen=True)
class PruneSettings:
    """How the framework shares a budget between layers, the same for every criterion
    (method.md s.4). eps: a unit is off when its norm is at most eps of its layer's largest;
    min_channels / min_keep: never leave a group narrower than this many / this fraction;
    round_to: kept widths rounded up to a multiple; cost_aware: rank by importance per
    parameter ("params"), MAC ("macs") or predicted ms ("latency") a channel saves, None by
    importance alone; tolerance: a latency target is met when the measured fraction is within
    this relative distance of it."""
    eps: float = 0.01
    min_channels: int = 1
    min_keep: float = 0.0
    round_to: int = 1
    cost_aware: str | None = None
    tolerance: float = 0.05


class Pruner:
    """The prunable units of ``model`` as it is now.

    layers: its unit layers (``find_units``); in_channels, full_size: the input the costs are
    counted at (MACs at the full image size); size: side of the square trace input (default
    twice the model's stride); latency: a ``LatencyTable`` (jsp/pruning/latency.py) for
    latency targets and cost_aware="latency".
    """

    def __init__(self, model: nn.Module, layers: list[UnitLayer], in_channels: int, full_size: tuple[int, int],
                 settings: PruneSettings = PruneSettings(), size: int | None = None, latency=None):
        self.model, self.layers, self.settings, self.latency = model, layers, settings, latency
        self.measured_keep: float | None = None  # the last latency cut's measured fraction
        # (network, the fraction of its latency the model keeps): what latency targets are of
        self.latency_reference: tuple[nn.Module, float] | None = None
        self.in_channels, self.full_size = in_channels, full_size
        self.size = size or 2 * pad_multiple(model)
        self.example_shape = (1, in_channels, self.size, self.size)
        param = next(model.parameters())
        with torch.enable_grad():  # Torch-Pruning traces the graph through autograd
            self.built = groups_of(model, layers, torch.zeros(self.example_shape, device=param.device,
                                                              dtype=param.dtype))
        self._widths, self._probe, self._latency_costs = layer_widths(model), None, None

    def _check(self) -> None:
        if layer_widths(self.model) != self._widths:
            raise RuntimeError("the model's structure changed since this Pruner was built (a surgery): build a new one")

    @property
    def probe(self) -> MetaProbe:
        if self._probe is None:
            self._probe = MetaProbe(self.model, self.layers, self.example_shape, self.in_channels, self.full_size,
                                    self.latency)
        return self._probe

    def groups(self, scores: dict[str, torch.Tensor] | None = None,
               off: dict[str, torch.Tensor] | None = None) -> ChannelGroups:
        """The channel groups with ``scores`` ({layer: (U,)}; None: all equal) and the
        switched-off flags of the current weights (or ``off``)."""
        self._check()
        scores = scores or {l.name: torch.ones(l.size) for l in self.layers}
        costs = self.latency_costs() if self.settings.cost_aware == "latency" else None
        return ChannelGroups(self.model, self.layers, scores, self.in_channels, self.size, self.settings.eps,
                             self.settings.cost_aware, off, built=self.built, costs=costs)

    def latency_costs(self) -> list[float]:
        """Per group, the predicted ms one channel saves: the table's saving when the group
        loses round_to channels (its step, where kernels change speed), per channel; 0 for a
        group at its floor."""
        if self._latency_costs is None:
            groups, k, floor = self.built[0], self.settings.round_to, max(1, self.settings.min_channels)
            base, out = self.probe.cost([[] for _ in groups], "latency"), []
            for g, group in enumerate(groups):
                n = len(group[0].root_idxs)
                drop = list(range(n - max(0, min(k, n - floor)), n))
                chosen = [drop if h == g else [] for h in range(len(groups))]
                out.append((base - self.probe.cost(chosen, "latency")) / max(len(drop), 1) if drop else 0.0)
            self._latency_costs = out
        return self._latency_costs

    def cost(self, mode: str) -> float:
        """Parameters, MACs (at full_size) or the latency table's predicted ms of the model now.
        MACs and latency are counted on the meta copy (the same structure while this Pruner
        lives): the budget controller asks at every check, and a forward pass of the live model
        at the full image size would cost real compute each time."""
        if mode == "params":
            return model_cost(self.model, mode, self.in_channels, self.full_size)
        return self.probe.cost([[] for _ in self.built[0]], mode)

    def cost_if_pruned(self, mode: str, off: dict[str, torch.Tensor] | None = None) -> float:
        """Fraction of the current cost left if the switched-off units (or those flagged in
        ``off``, {layer: (U,) bool}) were removed: what the budget controller steers."""
        st = self.settings  # the widths the cut would leave, rounded as the cut rounds them
        off_channels = self.groups(off=off).select(None, st.min_channels, st.round_to, st.min_keep)
        return self.probe.cost(off_channels, mode) / self.cost(mode)

    def smallest(self, mode: str) -> float:
        """The least fraction of the current cost any cut can leave: every group at its floor
        (min_channels, min_keep, rounded up to round_to)."""
        st, groups = self.settings, self.groups()
        return self.probe.cost(groups.select(groups.total(), st.min_channels, st.round_to, st.min_keep), mode) \
            / self.cost(mode)

    def calibrate_latency(self, cut: list[list[int]] | None = None) -> list[float]:
        """Fit the latency table's line (``LatencyTable.calibrate``) through the model's
        architecture and the one ``cut`` leaves (root channels per group; None: the smallest cut
        the settings allow), both built with fresh weights and timed side by side; returns their
        ms. Nothing to cut: the dense network alone scales the table's sum."""
        if cut is None:
            st, groups = self.settings, self.groups()
            cut = groups.select(groups.total(), st.min_channels, st.round_to, st.min_keep)
        ends = [[[] for _ in cut]] + ([cut] if any(cut) else [])
        return self.latency.calibrate([self.probe.materialise(c, self.latency.device) for c in ends],
                                      self.in_channels, self.full_size)

    def choose(self, groups: ChannelGroups, target: Target) -> list[list[int]]:
        """Root channels to remove per group so the model meets ``target``: the switched-off
        ones (threshold), or the largest removal of the globally least important whose model
        keeps at most ``target.keep`` of the current cost (a binary search, each candidate
        costed on the meta copy); with round_to, then the most important removed channels
        given back, round_to at a time, while the model stays within the target. A latency
        target: the table's search, each candidate timed (``latency_search.choose_latency``)."""
        st = self.settings
        select = lambda k: groups.select(k, st.min_channels, st.round_to, st.min_keep)  # noqa: E731
        if target.mode == "threshold":
            return select(None)
        if target.mode == "latency":
            return choose_latency(self, groups, target)
        return self.search(groups, target)

    def search(self, groups: ChannelGroups, target: Target) -> list[list[int]]:
        """The largest removal of the globally least important channels whose cost, counted on
        the meta copy (for latency: the table's prediction), is within ``target`` (see ``choose``)."""
        st = self.settings
        select = lambda k: groups.select(k, st.min_channels, st.round_to, st.min_keep)  # noqa: E731
        budget = target.keep * self.cost(target.mode)
        cost_after = lambda k: self.probe.cost(select(k), target.mode)  # noqa: E731
        lo, hi = 0, groups.total()  # cost_after(lo) > budget unless nothing needs removing
        if cost_after(lo) <= budget:
            return select(0)
        if cost_after(hi) > budget:
            raise JSPError(f"no cut meets {target.mode} {target.keep:.4g}: the smallest network these settings "
                           f"allow keeps {cost_after(hi) / self.cost(target.mode):.4g} (schedule.round_to="
                           f"{st.round_to}, min_channels={st.min_channels}, min_keep={st.min_keep}); lower them "
                           "or raise the budget")
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if cost_after(mid) <= budget else (mid, hi)
        chosen = select(hi)
        return self._give_back(groups, chosen, budget, target.mode) if st.round_to > 1 else chosen

    def _give_back(self, groups: ChannelGroups, chosen: list[list[int]], budget: float, mode: str) -> list[list[int]]:
        """Rounding removes channels round_to at a time, so the search can stop well under the
        budget (0.284 for 0.3 on a UNet): give back to a group its round_to most important
        removed channels, the group whose chunk scores highest first, while the cost stays
        within the budget."""
        k, live = self.settings.round_to, {g for g, c in enumerate(chosen) if c}
        best_first = lambda g: sorted(chosen[g], key=lambda i: -float(groups.scores[g][i]))[:k]  # noqa: E731
        while live:
            g = max(live, key=lambda g: float(groups.scores[g][best_first(g)].mean()))
            back = set(best_first(g))
            trial = [c if h != g else [i for i in c if i not in back] for h, c in enumerate(chosen)]
            # A group's channels all cost the same and the slack only shrinks: a chunk that
            # does not fit now never will, so each group fails at most once.
            if self.probe.cost(trial, mode) <= budget:
                chosen = trial
                if not chosen[g]:
                    live.discard(g)
            else:
                live.discard(g)
        return chosen

    def prune(self, scores: dict[str, torch.Tensor], target: Target) -> dict[str, list[int]]:
        """Rank, choose and remove channels in place to meet ``target``. Returns {unit layer:
        removed output-channel indices}. The Pruner is spent: the model has a new structure."""
        groups = self.groups(scores)
        chosen = self.choose(groups, target)
        return remove_channels(self.model, self.layers, chosen, self.example_shape, built=self.built)

    def zero(self, scores: dict[str, torch.Tensor], target: Target) -> int:
        """Zero in place what ``prune`` would remove to meet ``target``, the switched-off
        channels first; returns the number of units that were not zero before."""
        groups = self.groups(scores)
        for s, off in zip(groups.scores, groups.off):
            s[off] = -math.inf
        return zero_channels(self.layers, groups, self.choose(groups, target))

    def shrink_uniformly(self, target: Target) -> float:
        """Keep the first ceil(f * n) channels of every group, f the largest width factor (by
        bisection) whose model meets ``target`` (params or MACs). Returns f. Spends the Pruner."""
        sizes, base, k = self.groups().sizes, self.cost(target.mode), self.settings.round_to

        def chosen(f):
            keep = [min(n, -(-max(self.settings.min_channels, math.ceil(f * n)) // k) * k) for n in sizes]
            return [list(range(k, n)) for k, n in zip(keep, sizes)]

        cost = lambda f: self.probe.cost(chosen(f), target.mode) / base  # noqa: E731
        lo, hi = 0.0, 1.0  # cost(lo) <= keep < cost(hi) (unless keep = 1)
        if cost(hi) <= target.keep:
            return 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if cost(mid) <= target.keep else (lo, mid)
        remove_channels(self.model, self.layers, chosen(lo), self.example_shape, fold=False, built=self.built)
        return lo


# One-call forms (tests, scripts, users' own loops): a Pruner for the model, used once.

def prune(model: nn.Module, layers: list[UnitLayer], scores: dict[str, torch.Tensor], target: Target,
          in_channels: int, size: int, full_size: tuple[int, int], eps: float = 0.01, min_channels: int = 1,
          round_to: int = 1, min_keep: float = 0.0, cost_aware: str | None = None) -> dict[str, list[int]]:
    """``Pruner.prune``: rank, choose and remove channels of ``model`` in place to meet ``target``."""
    settings = PruneSettings(eps, min_channels, min_keep, round_to, cost_aware)
    return Pruner(model, layers, in_channels, full_size, settings, size).prune(scores, target)


def zero_to_target(model: nn.Module, layers: list[UnitLayer], scores: dict[str, torch.Tensor], target: Target,
                   in_channels: int, size: int, full_size: tuple[int, int], eps: float = 0.01, min_channels: int = 1,
                   round_to: int = 1, min_keep: float = 0.0, cost_aware: str | None = None) -> int:
    """``Pruner.zero``: zero in place what ``prune`` would remove (the switched-off channels first)."""
    settings = PruneSettings(eps, min_channels, min_keep, round_to, cost_aware)
    return Pruner(model, layers, in_channels, full_size, settings, size).zero(scores, target)


def cost_if_pruned(model: nn.Module, layers: list[UnitLayer], eps: float, mode: str, in_channels: int, size: int,
                   full_size: tuple[int, int], min_channels: int = 1,
                   off: dict[str, torch.Tensor] | None = None) -> float:
    """``Pruner.cost_if_pruned``: the fraction of the cost left without the switched-off units."""
    pruner = Pruner(model, layers, in_channels, full_size, PruneSettings(eps, min_channels), size)
    return pruner.cost_if_pruned(mode, off)


def shrink_uniformly(model: nn.Module, layers: list[UnitLayer], target: Target, in_channels: int, size: int,
                     full_size: tuple[int, int], min_channels: int = 1) -> float:
    """``Pruner.shrink_uniformly``: every group narrowed by one width factor to meet ``target``."""
    return Pruner(model, layers, in_channels, full_size, PruneSettings(min_channels=min_channels),
                  size).shrink_uniformly(target)
