"""Importance of units: one score per output channel of a unit layer, higher = keep.

A registry, name -> function(layer, stats, ctx) -> (U,) raw scores. Statistics come from
the constraint that trained the network (``activity`` = a_u, ``redundancy`` = r_u, computed
on the weights being pruned) or from a pass over training data (``taylor``); where one is
missing, the importance computes what it can from the weights or says what it needs.
Scores are then normalised per layer (``normalize=max``: divided by the layer's largest;
``rank``: the unit's rank in its layer over the layer's size) so they rank globally (s.4).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from jsp.constraints.redundancy import layer_redundancy
from jsp.constraints.units import UnitLayer
from jsp.errors import ConfigError


@dataclass
class Context:
    """What an importance may use besides the layer: the statistics of the constraint
    ({stat: {layer: (U,)}}), the unit kind n_u is measured on, and a random generator."""

    stats: dict
    kind: str = "scale"
    generator: torch.Generator | None = None

    def stat(self, name: str, layer: UnitLayer) -> torch.Tensor | None:
        v = self.stats.get(name, {}).get(layer.name)
        return None if v is None else v.to(layer.conv.weight.device).float()

    def activity(self, layer: UnitLayer) -> torch.Tensor:
        a = self.stat("activity", layer)
        return torch.ones(layer.size, device=layer.conv.weight.device) if a is None else a

    def redundancy(self, layer: UnitLayer) -> torch.Tensor:
        """r_u recorded by the constraint, else computed now (v2: signed, chance-corrected)."""
        r = self.stat("redundancy", layer)
        return layer_redundancy(layer.filters(), self.activity(layer), layer.norms(self.kind)) if r is None else r


def _needs(name: str, source: str, value):
    if value is None:
        raise ConfigError(f"schedule.importance={name} needs {source}")
    return value


_ACTIVITY = "the gradient activity that constraint=jsp, gradient_count or redundancy collects"
IMPORTANCES: dict[str, Callable[[UnitLayer, Context], torch.Tensor]] = {
    # I_u = n_u a_u (1 - r_u) (method.md s.4)
    "jsp": lambda l, c: l.norms(c.kind) * c.activity(l) * (1 - c.redundancy(l)),
    "l1_norm": lambda l, c: l.filters().abs().sum(1),
    "group_norm": lambda l, c: l.norms("theta"),
    # Network slimming; layers without a BatchNorm fall back to n_u.
    "bn_scale": lambda l, c: l.norms(c.kind) if l.gammas() is None else l.gammas().detach().abs(),
    # The clean ablations: one factor of I_u each.
    "gradient_count": lambda l, c: l.norms(c.kind) * _needs("gradient_count", _ACTIVITY, c.stat("activity", l)),
    "redundancy": lambda l, c: l.norms(c.kind) * (1 - c.redundancy(l)),
    "correlation": lambda l, c: 1 - c.redundancy(l),
    # DepGraph: the norm of the unit's whole coupled group, from constraint=depgraph
    "depgraph": lambda l, c: _needs("depgraph", "the coupled-group norms that constraint=depgraph reports",
                                    c.stat("coupled", l)),
    "taylor": lambda l, c: _needs("taylor", "the taylor statistic (taylor_statistic)", c.stat("taylor", l)),
    "random": lambda l, c: torch.rand(l.size, generator=c.generator).to(l.conv.weight.device),
}
NORMALIZE = ("max", "rank")


def importance_fn(name: str) -> Callable[[UnitLayer, Context], torch.Tensor]:
    """The importance ``name``: jsp's own, else an installed plug-in's (entry point group
    ``jsp.importances``: a function (layer, ctx) -> (U,) scores, higher = keep)."""
    from jsp.plugins import plugins

    if name in IMPORTANCES:
        return IMPORTANCES[name]
    if name in plugins("importance"):
        return plugins("importance")[name].load()
    raise ConfigError(f"schedule.importance must be one of {[*IMPORTANCES, *plugins('importance')]}, got {name!r}")


def check_importance(name: str) -> None:
    importance_fn(name)


def normalized(scores: torch.Tensor, how: str) -> torch.Tensor:
    """(U,) scores in [0, 1]: divided by the largest, or rank / U (1 = the layer's best)."""
    if how == "max":
        return scores / scores.max().clamp_min(1e-12)
    order = torch.argsort(torch.argsort(scores, stable=True), stable=True)
    return (order + 1).float() / len(scores)


def layer_scores(name: str, layers: list[UnitLayer], stats: dict, seed: int = 0, kind: str = "scale",
                 normalize: str = "max") -> dict[str, torch.Tensor]:
    """{layer name: (U,) importance in [0, 1]}, normalised per layer by ``normalize``."""
    check_importance(name)
    if normalize not in NORMALIZE:
        raise ConfigError(f"schedule.normalize must be one of {list(NORMALIZE)}, got {normalize!r}")
    ctx = Context(stats, kind, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        fn = importance_fn(name)
        return {l.name: normalized(torch.as_tensor(fn(l, ctx)).float(), normalize) for l in layers}


def taylor_statistic(model, layers: list[UnitLayer], batches, loss_fn, device, kind: str = "scale") -> dict:
    """{"taylor": {layer: (U,)}}: |sum over s_u of p * dL/dp| averaged over ``batches``
    (Molchanov et al. 2019, first-order Taylor on the scale parameters)."""
    total = {l.name: torch.zeros(l.size, device=device) for l in layers}
    count = 0
    model.train()
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        task, _ = loss_fn(model(x.to(device)), y.to(device))
        task.backward()
        with torch.no_grad():
            for l in layers:
                for t, axis in l.params(kind):
                    if t.grad is not None:
                        total[l.name] += (l.rows(t, axis) * l.rows(t.grad, axis)).sum(1).abs()
        count += 1
    model.zero_grad(set_to_none=True)
    return {"taylor": {n: v / max(count, 1) for n, v in total.items()}}
