"""Structured pruning: group coupled channels with torch-pruning's DependencyGraph, rank them by
importance, choose what to remove to meet a target, and remove it (the network shrinks).

A *group* is a set of channels that must go together (a conv's output channels with its
BatchNorm, the matching input channels of every consumer, concatenation partners, depthwise
and squeeze-excitation partners). A group channel's importance is the mean of the
(per-layer normalised) importances of the units in it. Parameter and MAC budgets are met by
a search over how many of the globally least important channels to remove, each candidate
checked by real surgery on a copy of the model on the ``meta`` device (no memory, no compute).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from jsp.constraints.units import CONVS, UnitLayer
from jsp.errors import ConfigError
from jsp.metrics.cost import count_macs, count_params


@dataclass
class Target:
    """What to prune to. mode: "threshold" (units switched off: norm <= eps * layer max),
    "params" (keep this fraction of the parameters), "macs" (keep this fraction of the MACs)."""

    mode: str = "threshold"
    keep: float = 1.0
    eps: float = 0.01

    def __post_init__(self):
        if self.mode not in ("threshold", "params", "macs"):
            raise ConfigError(f"pruning target must be threshold, params or macs, got {self.mode!r}")
        if self.mode != "threshold" and not 0 < self.keep <= 1:
            raise ConfigError(f"the kept fraction must be in (0, 1], got {self.keep}")


def _groups(model: nn.Module, layers: list[UnitLayer], example: torch.Tensor) -> list:
    unit_convs = {id(l.conv) for l in layers}
    ignored = [m for m in model.modules() if isinstance(m, CONVS) and id(m) not in unit_convs]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    return list(graph.get_all_groups(ignored_layers=ignored, root_module_types=list(CONVS))), graph


class ChannelGroups:
    """The model's channel groups with per-channel importance and switched-off flags."""

    def __init__(self, model: nn.Module, layers: list[UnitLayer], scores: dict[str, torch.Tensor],
                 in_channels: int, size: int, eps: float = 0.01):
        self.example_shape = (1, in_channels, size, size)
        param = next(model.parameters())
        groups, graph = _groups(model, layers, torch.zeros(self.example_shape, device=param.device,
                                                           dtype=param.dtype))
        by_conv = {id(l.conv): l for l in layers}
        self.sizes, self.scores, self.off = [], [], []
        for group in groups:
            n = len(group[0].root_idxs)
            total, count = torch.zeros(n), torch.zeros(n)
            off = torch.ones(n, dtype=torch.bool)
            for item in group:
                layer = by_conv.get(id(item.dep.target.module))
                if layer is None or not graph.is_out_channel_pruning_fn(item.dep.handler):
                    continue
                idx, root = torch.as_tensor(item.idxs), torch.as_tensor(item.root_idxs)
                total[root] += scores[layer.name].cpu()[idx]
                count[root] += 1
                norms = layer.norms().cpu()
                off[root] &= norms[idx] <= eps * norms.max().clamp_min(1e-12)
            self.sizes.append(n)
            self.scores.append(total / count.clamp_min(1))
            self.off.append(off & (count > 0))

    def select(self, k: int | None = None, min_channels: int = 1, round_to: int = 1) -> list[list[int]]:
        """Root channel positions to remove per group: the ``k`` globally least important
        (``k=None``: the switched-off ones), keeping >= min_channels per group and a multiple
        of round_to channels where possible."""
        chosen = [[] for _ in self.sizes]
        if k is None:
            for g, off in enumerate(self.off):
                chosen[g] = torch.nonzero(off).flatten().tolist()
        else:
            flat = [(float(s), g, i) for g, scores in enumerate(self.scores) for i, s in enumerate(scores)]
            flat.sort()
            for _, g, i in flat[:k]:
                chosen[g].append(i)
        for g, n in enumerate(self.sizes):
            order = sorted(chosen[g], key=lambda i: float(self.scores[g][i]))
            keep = max(n - len(order), min(min_channels, n))
            if round_to > 1:
                keep = min(n, -(-keep // round_to) * round_to)
            chosen[g] = sorted(order[: n - keep])
        return chosen

    def total(self) -> int:
        return sum(self.sizes)


def apply(model: nn.Module, layers: list[UnitLayer], chosen: list[list[int]], example_shape) -> dict[str, list[int]]:
    """Remove the chosen root channels of each group from ``model`` in place.

    Returns {unit layer name: removed output-channel indices} so per-unit statistics can
    follow the surgery.
    """
    param = next(model.parameters())
    groups, graph = _groups(model, layers, torch.zeros(example_shape, device=param.device, dtype=param.dtype))
    if len(groups) != len(chosen):
        raise RuntimeError("the model's channel groups changed between planning and surgery")
    names = {id(l.conv): l.name for l in layers}
    removed: dict[str, list[int]] = {}
    for group, idxs in zip(groups, chosen):
        if not idxs:
            continue
        drop = set(idxs)
        for item in group:
            name = names.get(id(item.dep.target.module))
            if name is not None and graph.is_out_channel_pruning_fn(item.dep.handler):
                removed[name] = sorted(int(i) for i, r in zip(item.idxs, item.root_idxs) if int(r) in drop)
        group.prune(idxs=idxs)
    return removed


def _meta_copy(model: nn.Module, layers: list[UnitLayer]) -> tuple[nn.Module, list[UnitLayer]]:
    memo = {}
    clone = copy.deepcopy(model, memo).to("meta")
    mapped = [UnitLayer(l.name, memo[id(l.conv)], memo.get(id(l.bn)) if l.bn is not None else None) for l in layers]
    return clone, mapped


def plan(model: nn.Module, layers: list[UnitLayer], groups: ChannelGroups, target: Target,
         full_size: tuple[int, int], min_channels: int = 1, round_to: int = 1) -> list[list[int]]:
    """Choose the channels to remove so the pruned model meets ``target``.

    For params / MACs: the largest removal whose pruned model keeps at most ``keep`` of the
    current cost (binary search over k; each k is checked by surgery on a meta-device copy).
    """
    if target.mode == "threshold":
        return groups.select(None, min_channels, round_to)
    in_channels = groups.example_shape[1]

    def cost(m):
        return count_params(m) if target.mode == "params" else count_macs(m, in_channels, full_size)

    budget = target.keep * cost(model)

    def cost_after(k):
        clone, mapped = _meta_copy(model, layers)
        apply(clone, mapped, groups.select(k, min_channels, round_to), groups.example_shape)
        return cost(clone)

    lo, hi = 0, groups.total()  # cost_after(lo) > budget unless nothing needs removing
    if cost_after(lo) <= budget:
        return groups.select(0, min_channels, round_to)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost_after(mid) <= budget:
            hi = mid
        else:
            lo = mid
    return groups.select(hi, min_channels, round_to)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """{conv name: output channels} for every convolution (for before/after tables)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.ConvTranspose2d):
            out[name] = m.weight.shape[1] * m.groups
        elif isinstance(m, nn.Conv2d):
            out[name] = m.weight.shape[0]
    return out
