"""Removing channels: the surgery itself, folding constant units into their consumers,
zeroing units in place, and costing candidates on a meta-device copy (``MetaProbe``: one
dependency graph per copy). ``jsp.pruning.base.Pruner`` puts them together.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from jsp.constraints.units import CONVS, UnitLayer
from jsp.metrics.cost import count_macs, count_params
from jsp.pruning.pruner import ChannelGroups, groups_of

log = logging.getLogger("jsp")


def remove_channels(model: nn.Module, layers: list[UnitLayer], chosen: list[list[int]], example_shape,
                    fold: bool = True, built: tuple | None = None) -> dict[str, list[int]]:
    """Remove the chosen root channels of each group from ``model`` in place. With ``fold``,
    removed units whose output is a constant (gamma_u = 0 after a normalisation) first have
    that constant added to their consumers, so removing them changes no output (away from
    zero-padded borders, where a consumer saw padding instead of the constant).

    ``built``: (groups, graph) already built for ``model`` as it is now (``ChannelGroups``).
    Returns {unit layer name: removed output-channel indices} so per-unit statistics can
    follow the surgery.
    """
    param = next(model.parameters())
    example = torch.zeros(example_shape, device=param.device, dtype=param.dtype)
    groups, graph = built or groups_of(model, layers, example)
    if len(groups) != len(chosen):
        raise RuntimeError("the model's channel groups changed between planning and surgery")
    names = {id(l.conv): l.name for l in layers}
    removed: dict[str, list[int]] = {}
    consumers: list[tuple[nn.Module, list[int]]] = []
    for group, idxs in zip(groups, chosen):
        drop = set(idxs)
        for item in group:
            keep_idx = [int(i) for i, r in zip(item.idxs, item.root_idxs) if int(r) in drop]
            name = names.get(id(item.dep.target.module))
            if not drop:
                continue
            if name is not None and graph.is_out_channel_pruning_fn(item.dep.handler):
                removed[name] = sorted(keep_idx)
            elif isinstance(item.dep.target.module, CONVS) and not graph.is_out_channel_pruning_fn(item.dep.handler):
                consumers.append((item.dep.target.module, keep_idx))
    if fold:
        fold_constants(model, layers, removed, consumers, example)
    for group, idxs in zip(groups, chosen):
        if idxs:
            group.prune(idxs=idxs)
    return removed


@torch.no_grad()
def fold_constants(model: nn.Module, layers: list[UnitLayer], removed: dict[str, list[int]],
                   consumers: list[tuple[nn.Module, list[int]]], example: torch.Tensor) -> int:
    """Add the constant outputs of removed constant units to their consumers' biases (or
    subtract them from the running mean of the BatchNorm after a consumer without a bias).
    Returns the number of channels folded."""
    const = [(l, [i for i in removed.get(l.name, []) if l.normalised and l.bn.weight[i] == 0 and l.bn.bias[i] != 0])
             for l in layers]
    if not any(idx for _, idx in const) or not consumers:
        return 0
    seen: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, i, o: seen.__setitem__(id(mod), i[0][0, :, i[0].shape[2] // 2,
                                                                                       i[0].shape[3] // 2].clone()))
               for m, _ in consumers]
    was = model.training
    try:
        model.eval()
        model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    bn_after = {id(l.conv): l.bn for l in layers}
    folded = 0
    for m, idx in consumers:
        value = seen[id(m)][idx]                        # (k,) the consumer's constant inputs
        nz = value != 0
        if not nz.any():
            continue
        delta = _constant_response(m, torch.tensor(idx, device=value.device)[nz], value[nz])
        if m.bias is not None:
            m.bias += delta
        elif bn_after.get(id(m)) is not None:
            bn_after[id(m)].running_mean -= delta
        else:
            log.warning("pruning: a constant unit feeds %s, which has no bias to fold it into", type(m).__name__)
            continue
        folded += int(nz.sum())
    return folded


def _constant_response(conv: nn.Module, channels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(out,) what constant inputs ``values`` on input ``channels`` add to each output channel."""
    w = conv.weight
    if isinstance(conv, nn.ConvTranspose2d):       # (in, out/g, k, k)
        per = w[channels].sum((2, 3)) * values[:, None]            # (k, out/g)
        out_g = w.shape[1]
        delta = torch.zeros(out_g * conv.groups, device=w.device, dtype=w.dtype)
        for c, row in zip(channels.tolist(), per):
            g = c // (w.shape[0] // conv.groups)
            delta[g * out_g:(g + 1) * out_g] += row
        return delta
    in_g = w.shape[1]                                   # (out, in/g, k, k)
    out_g = w.shape[0] // conv.groups
    delta = torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)
    for c, v in zip(channels.tolist(), values):
        g, j = divmod(c, in_g)
        delta[g * out_g:(g + 1) * out_g] += w[g * out_g:(g + 1) * out_g, j].sum((1, 2)) * v
    return delta


def meta_copy(model: nn.Module, layers: list[UnitLayer]) -> tuple[nn.Module, list[UnitLayer]]:
    """A copy of ``model`` on the meta device (no memory, no compute) and its unit layers."""
    memo = {}
    clone = copy.deepcopy(model, memo).to("meta")
    mapped = [UnitLayer(l.name, memo[id(l.conv)], memo.get(id(l.bn)) if l.bn is not None else None) for l in layers]
    return clone, mapped


def model_cost(model: nn.Module, mode: str, in_channels: int, full_size: tuple[int, int], latency=None) -> float:
    """Parameters, MACs at ``full_size``, or the ``latency`` table's predicted ms."""
    if mode == "latency":
        if latency is None:
            raise RuntimeError("a latency cost needs a latency table (Pruner(latency=...))")
        return latency.predict(model, in_channels, full_size)
    return count_params(model) if mode == "params" else count_macs(model, in_channels, full_size)


class MetaProbe:
    """What ``model`` would cost after removing chosen channels, measured by real surgery on
    one meta-device copy (no memory, no compute) whose dependency graph is built once: each
    probe prunes the copy through its groups, counts, and puts back every tensor and size the
    surgery replaced (modules' parameters, buffers and widths; concatenation offsets).
    ``latency``: the LatencyTable that costs mode "latency"."""

    def __init__(self, model: nn.Module, layers: list[UnitLayer], example_shape, in_channels: int,
                 full_size: tuple[int, int], latency=None):
        self.clone, mapped = meta_copy(model, layers)
        self.groups, self.graph = groups_of(self.clone, mapped, torch.zeros(example_shape, device="meta"))
        self.in_channels, self.full_size, self.latency = in_channels, full_size, latency
        self.saved = [(m, dict(m._parameters), dict(m._buffers),
                       {k: copy.copy(v) for k, v in vars(m).items()
                        if not k.startswith("_") and isinstance(v, (int, float, bool, list, tuple))})
                      for m in self.graph.module2node if isinstance(m, nn.Module)]

    def cost(self, chosen: list[list[int]], mode: str) -> float:
        """Params, MACs or predicted ms of the model with ``chosen`` root channels removed from each group."""
        return self._pruned(chosen, lambda: model_cost(self.clone, mode, self.in_channels, self.full_size,
                                                       self.latency))

    def materialise(self, chosen: list[list[int]], device: torch.device | str) -> nn.Module:
        """A real model of the architecture ``chosen`` leaves, on ``device``, with fresh
        weights (to time it: the values do not matter)."""
        model = self._pruned(chosen, lambda: copy.deepcopy(self.clone)).to_empty(device=device)
        reinitialise(model)
        return model.eval()

    def _pruned(self, chosen: list[list[int]], what):
        """``what()`` while the copy has ``chosen`` removed; the copy is put back after."""
        if len(self.groups) != len(chosen):
            raise RuntimeError("the model's channel groups changed between planning and surgery")
        try:
            for group, idxs in zip(self.groups, chosen):
                if idxs:
                    group.prune(idxs=idxs)
            return what()
        finally:
            for m, params, buffers, sizes in self.saved:
                m._parameters.clear()
                m._parameters.update(params)
                m._buffers.clear()
                m._buffers.update(buffers)
                for k, v in sizes.items():
                    setattr(m, k, copy.copy(v))
            self.graph._pruning_history.clear()


@torch.no_grad()
def zero_channels(layers: list[UnitLayer], groups: ChannelGroups, chosen: list[list[int]]) -> int:
    """Zero the scale parameters of every unit in the ``chosen`` root channels of each group
    (``UnitLayer.zero_``): their outputs become exactly zero, so a threshold cut later removes
    them without changing any output. Returns the number of units zeroed."""
    by_conv, zeroed = {id(l.conv): l for l in layers}, 0
    for group, idxs in zip(groups.groups, chosen):
        drop = set(idxs)
        for item in group if drop else ():
            layer = by_conv.get(id(item.dep.target.module))
            if layer is None or not groups.graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            mask = torch.zeros(layer.size, dtype=torch.bool)
            mask[[int(i) for i, r in zip(item.idxs, item.root_idxs) if int(r) in drop]] = True
            zeroed += int((mask & (layer.norms().cpu() > 0)).sum())
            layer.zero_(mask)
    return zeroed


@torch.no_grad()
def reinitialise(model: nn.Module) -> None:
    """Every layer's default initialisation and fresh BatchNorm statistics, in place."""
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
