"""DepGraph's group sparsity (Fang et al. 2023): a group lasso over each whole *coupled* group.

A Torch-Pruning channel group holds every slice that goes with one root channel: the
producing convolution's output channel and bias, its BatchNorm, the input-channel slices of
every consumer (concatenation partners and transposed convolutions included). Fang et al.
regularise the norm of the whole group, as Torch-Pruning's ``GroupNormPruner`` does; here it
is applied with the same update rule as every other penalty (``update=prox``: the group is
shrunk after each optimiser step, reaching exact zeros) and the same budget controller:

    sum_g lambda * ||group_g||_2 / sqrt(dim group_g)

``statistics()["coupled"]`` gives each unit its group's norm, which ``importance=depgraph``
ranks by.
"""
from __future__ import annotations

import torch
from torch import nn

from jsp.constraints.base import Constraint
from jsp.constraints.units import CONVS
from jsp.errors import ConfigError


def _slices(item, graph) -> list[tuple[torch.Tensor, int]]:
    """(tensor, axis) the item's channel indices select, for convolutions and BatchNorms."""
    m = item.dep.target.module
    out = graph.is_out_channel_pruning_fn(item.dep.handler)
    if isinstance(m, CONVS):
        transposed = isinstance(m, nn.ConvTranspose2d)
        if m.groups > 1 and not out:
            return []  # a grouped consumer's input slice is its own output channel: counted there
        axis = (1 if transposed else 0) if out else (0 if transposed else 1)
        return [(m.weight, axis)] + ([(m.bias, 0)] if out and m.bias is not None else [])
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
        return [(m.weight, 0), (m.bias, 0)]
    return []


class CoupledGroupLasso(Constraint):
    """``constraint=depgraph``: group lasso over whole coupled channel groups.

    Args: ``lambda`` (YAML key; ``lam`` in Python), ``eps``, ``budget``, ``budget_every``.
    """

    update = "prox"

    def __init__(self, lam: float = 1.0, eps: float = 0.01, budget: float | None = None, budget_every: int = 10,
                 budget_ramp: float = 0.5, budget_deadline: float | None = 0.9, **kwargs):
        lam = kwargs.pop("lambda", lam)
        if kwargs:
            raise ConfigError(f"unknown constraint settings {sorted(kwargs)} for CoupledGroupLasso")
        if lam < 0:
            raise ConfigError(f"constraint.lambda must be >= 0, got {lam}")
        super().__init__(eps=eps, budget=budget, budget_every=budget_every, budget_ramp=budget_ramp,
                         budget_deadline=budget_deadline)
        self.lam = float(lam)
        self.groups: list[list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]]] = []
        self.units_of: list[list[tuple[str, torch.Tensor, torch.Tensor]]] = []

    def _align(self) -> None:
        """Record each group's slices (tensor, axis, channel idxs, root positions) once."""
        from jsp.pruning.pruner import groups_of  # pruning builds on constraints, not the reverse

        self.groups, self.units_of, self.sizes, self.dims = [], [], [], []
        if not self.layers:
            return
        model_param = self.layers[0].conv.weight
        in_channels, size = self._trace
        names = {id(l.conv): l.name for l in self.layers}
        example = torch.zeros(1, in_channels or self.layers[0].conv.in_channels, size or 64, size or 64,
                              device=model_param.device, dtype=model_param.dtype)
        groups, graph = groups_of(self._model, self.layers, example)
        for group in groups:
            slices, units, dim = [], [], 0
            for item in group:
                idx, root = torch.as_tensor(item.idxs), torch.as_tensor(item.root_idxs)
                for t, axis in _slices(item, graph):
                    slices.append((t, axis, idx.to(t.device), root.to(t.device)))
                    dim += t.numel() // t.shape[axis]
                name = names.get(id(item.dep.target.module))
                if name is not None and graph.is_out_channel_pruning_fn(item.dep.handler):
                    units.append((name, idx, root))
            self.groups.append(slices)
            self.units_of.append(units)
            self.sizes.append(len(group[0].root_idxs))
            self.dims.append(max(dim, 1))

    def attach(self, model: nn.Module, in_channels: int | None = None, size: int | None = None):
        self._model = model
        return super().attach(model, in_channels, size)

    @torch.no_grad()
    def group_norms(self) -> list[torch.Tensor]:
        """Per group: (root channels,) ||group||_2."""
        out = []
        for slices, n in zip(self.groups, self.sizes):
            sq = torch.zeros(n, device=slices[0][0].device if slices else "cpu")
            for t, axis, idx, root in slices:
                rows = t.detach().transpose(0, axis)[idx].reshape(len(idx), -1)
                sq.index_add_(0, root, rows.square().sum(1))
            out.append(sq.sqrt())
        return out

    @torch.no_grad()
    def step(self, model: nn.Module, lr: float, step: int | None = None, scale: float = 1.0,
             control: bool = True) -> None:
        if self.lam and self.groups:
            norms = self.group_norms()
            held = self.controller is not None and self.controller.met
            off = self._off_roots() if held else None
            for g, (slices, n, dim) in enumerate(zip(self.groups, norms, self.dims)):
                if held:   # budget met: hold the off groups at zero, push no other
                    factor = (~off[g]).to(n.dtype)
                else:
                    shrink = scale * lr * self.factor * self.lam / dim ** 0.5
                    factor = (1 - shrink / n.clamp_min(1e-30)).clamp_min(0)
                    factor[n.topk(min(self.min_units, len(n))).indices] = 1  # keep a layer alive
                for t, axis, idx, root in slices:
                    view = t.transpose(0, axis)
                    shape = (-1,) + (1,) * (t.dim() - 1)
                    view[idx] = view[idx] * factor[root].view(shape).to(t.dtype)
            if held:
                self.controller.held += 1
            total = sum(float((n / d ** 0.5).sum()) for n, d in zip(norms, self.dims))
            self.terms = {"coupled": self.factor * self.lam * total, "factor": self.factor}
        if control and self.controller is not None and step is not None:
            with torch.enable_grad():
                self.controller.update(step)

    def _off_roots(self) -> list[torch.Tensor]:
        """Per group: (root channels,) True where every unit in it is off."""
        off = {l.name: l.off(self.eps) for l in self.layers}
        out = []
        for units, n in zip(self.units_of, self.sizes):
            flags = torch.ones(n, dtype=torch.bool, device=self.layers[0].conv.weight.device)
            for name, idx, root in units:
                flags[root.to(flags.device)] &= off[name][idx.to(flags.device)]
            out.append(flags)
        return out

    @torch.no_grad()
    def forecast_off(self, horizon: float) -> dict[str, torch.Tensor]:
        out = {l.name: l.off(self.eps) for l in self.layers}
        for units, n, dim in zip(self.units_of, self.group_norms(), self.dims):
            soon = n <= horizon * self.factor * self.lam / dim ** 0.5
            soon[n.topk(min(self.min_units, len(n))).indices] = False
            for name, idx, root in units:
                out[name][idx.to(soon.device)] |= soon[root.to(soon.device)]
        return out

    def statistics(self) -> dict[str, dict[str, torch.Tensor]]:
        coupled = {l.name: torch.zeros(l.size, device=l.conv.weight.device) for l in self.layers}
        for units, n, dim in zip(self.units_of, self.group_norms(), self.dims):
            for name, idx, root in units:
                coupled[name][idx.to(n.device)] = n[root.to(n.device)] / dim ** 0.5
        return {"coupled": coupled}
