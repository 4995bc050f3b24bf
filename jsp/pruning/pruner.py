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

import math
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from jsp.constraints.units import CONVS, UnitLayer
from jsp.errors import ConfigError


@dataclass
class Target:
    """What to prune to. mode: "threshold" (units switched off: norm <= eps * layer max),
    "params" (keep this fraction of the parameters), "macs" (keep this fraction of the MACs),
    "latency" (keep this fraction of the measured latency)."""

    mode: str = "threshold"
    keep: float = 1.0

    def __post_init__(self):
        if self.mode not in ("threshold", "params", "macs", "latency"):
            raise ConfigError(f"pruning target must be threshold, params, macs or latency, got {self.mode!r}")
        if self.mode != "threshold" and not 0 < self.keep <= 1:
            raise ConfigError(f"the kept fraction must be in (0, 1], got {self.keep}")


def groups_of(model: nn.Module, layers: list[UnitLayer], example: torch.Tensor) -> tuple[list, tp.DependencyGraph]:
    """Torch-Pruning's channel groups rooted at the unit layers' convolutions, and its graph."""
    unit_convs = {id(l.conv) for l in layers}
    ignored = [m for m in model.modules() if isinstance(m, CONVS) and id(m) not in unit_convs]
    was = model.training
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    finally:
        # Torch-Pruning's trace leaves the model in eval mode; the budget controller builds a
        # graph of the model it is training, which must go on training (BatchNorm on batch
        # statistics), and a resumed run, which calls model.train(), would otherwise differ.
        model.train(was)
    return list(graph.get_all_groups(ignored_layers=ignored, root_module_types=list(CONVS))), graph


def _spatial_sizes(model: nn.Module, example: torch.Tensor) -> dict[int, int]:
    """{id(conv): output pixels} at the example input (for MAC costs)."""
    sizes, handles = {}, []
    for m in model.modules():
        if isinstance(m, CONVS):
            handles.append(m.register_forward_hook(
                lambda mod, i, o: sizes.__setitem__(id(mod), o.shape[-1] * o.shape[-2])))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return sizes


def _channel_cost(item, graph, pixels: dict[int, int], macs: bool) -> float:
    """Parameters (or MACs) one channel of ``item``'s dependency carries."""
    m = item.dep.target.module
    if isinstance(m, CONVS):
        out_axis = 1 if isinstance(m, nn.ConvTranspose2d) else 0
        axis = out_axis if graph.is_out_channel_pruning_fn(item.dep.handler) else 1 - out_axis
        n = m.weight.numel() / m.weight.shape[axis] + (m.bias is not None and axis == out_axis)
        return n * (pixels.get(id(m), 1) if macs else 1)
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
        return 2.0
    return 0.0


class ChannelGroups:
    """The model's channel groups with per-channel importance and switched-off flags.

    ``cost_aware``: "params" or "macs" divides each channel's importance by the cost its
    removal saves (relative to the mean channel cost), so budgets favour cheap importance
    (method.md s.4); None ranks by importance alone. ``off``: {layer: (U,) bool} switched-off
    units (default: ``UnitLayer.off(eps)``). ``built``: the (groups, graph) of ``groups_of``
    for the model as it is now, so a Pruner's one graph serves every call. ``costs``: per
    group, what one of its channels costs (needed for cost_aware="latency": ``Pruner`` gives
    the latency table's saving per channel).
    """

    def __init__(self, model: nn.Module, layers: list[UnitLayer], scores: dict[str, torch.Tensor],
                 in_channels: int, size: int, eps: float = 0.01, cost_aware: str | None = None,
                 off: dict[str, torch.Tensor] | None = None, built: tuple | None = None,
                 costs: list[float] | None = None):
        self.example_shape = (1, in_channels, size, size)
        param = next(model.parameters())
        example = torch.zeros(self.example_shape, device=param.device, dtype=param.dtype)
        # (groups, graph): ``built`` (a Pruner's, for this model as it is now) or traced here
        groups, graph = self.groups, self.graph = built or groups_of(model, layers, example)
        pixels = _spatial_sizes(model, example) if cost_aware == "macs" else {}
        by_conv = {id(l.conv): l for l in layers}
        off_of = {l.name: (l.off(eps) if off is None else off[l.name]).cpu() for l in layers}
        if cost_aware == "latency" and costs is None:
            raise ValueError("cost_aware='latency' needs the groups' latency costs (costs=...)")
        self.sizes, self.scores, self.off = [], [], []
        costs = costs or [sum(_channel_cost(item, graph, pixels, cost_aware == "macs") for item in group)
                          for group in (groups if cost_aware else ())]
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
                off[root] &= off_of[layer.name][idx]
            self.sizes.append(n)
            self.scores.append(total / count.clamp_min(1))
            self.off.append(off & (count > 0))
        if cost_aware and costs:
            mean = sum(costs) / len(costs)
            self.scores = [s * mean / max(c, 1e-12) for s, c in zip(self.scores, costs)]

    def select(self, k: int | None = None, min_channels: int = 1, round_to: int = 1,
               min_keep: float = 0.0) -> list[list[int]]:
        """Root channel positions to remove per group: the ``k`` globally least important
        (``k=None``: the switched-off ones), keeping >= min_channels and >= min_keep of each
        group's channels, and a multiple of round_to channels where possible."""
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
            keep = max(n - len(order), min(min_channels, n), min(n, math.ceil(min_keep * n)))
            if round_to > 1:
                keep = min(n, -(-keep // round_to) * round_to)
            chosen[g] = sorted(order[: n - keep])
        return chosen

    def total(self) -> int:
        return sum(self.sizes)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """{conv name: output channels} for every convolution (for before/after tables)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.ConvTranspose2d):
            out[name] = m.weight.shape[1] * m.groups
        elif isinstance(m, nn.Conv2d):
            out[name] = m.weight.shape[0]
    return out
