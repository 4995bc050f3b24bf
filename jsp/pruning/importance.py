"""Importance of units: one score per output channel of a unit layer, higher = keep.

Every importance is normalised per layer (divided by the layer's largest score), so scores
rank globally across layers (method.md s.4). Statistics come from the constraint that
trained the network (``activity`` = a_u, ``redundancy`` = r_u); where one is missing, the
importance computes what it can from the weights or says which constraint it needs.
"""
from __future__ import annotations

import torch

from jsp.constraints.jsp import layer_redundancy
from jsp.constraints.units import UnitLayer
from jsp.errors import ConfigError


def redundancy_from_weights(layer: UnitLayer, activity: torch.Tensor | None = None) -> torch.Tensor:
    """(U,) r_u computed now from the filters (units ranked by activity, default all 1, then norm)."""
    norms = layer.norms()
    return layer_redundancy(layer, torch.ones_like(norms) if activity is None else activity, norms)


def raw_scores(name: str, layer: UnitLayer, stats: dict[str, dict[str, torch.Tensor]],
               generator: torch.Generator | None = None) -> torch.Tensor:
    """(U,) un-normalised importance ``name`` of the units of ``layer``."""
    a = stats.get("activity", {}).get(layer.name)
    r = stats.get("redundancy", {}).get(layer.name)
    with torch.no_grad():
        norms = layer.norms()
        if name == "jsp":  # I_u = ||theta_u|| a_u (1 - r_u)
            a = torch.ones_like(norms) if a is None else a.to(norms.device)
            r = redundancy_from_weights(layer, a) if r is None else r.to(norms.device)
            return norms * a * (1 - r)
        if name == "l1_norm":
            return layer.filters().abs().sum(1)
        if name == "group_norm":
            return norms
        if name == "bn_scale":
            g = layer.gammas()
            return norms if g is None else g.detach().abs()  # no BatchNorm: fall back to the norm
        if name == "gradient_count":
            if a is None:
                raise ConfigError("schedule.importance=gradient_count needs the gradient activity that "
                                  "constraint=jsp, gradient_count or redundancy collects")
            return a.to(norms.device) + 1e-6 * norms / norms.max().clamp_min(1e-12)  # norm breaks ties
        if name == "correlation":
            r = redundancy_from_weights(layer, a.to(norms.device) if a is not None else None) if r is None \
                else r.to(norms.device)
            return 1 - r
        if name == "random":
            return torch.rand(layer.size, generator=generator).to(norms.device)
    raise ConfigError(f"schedule.importance must be one of {sorted(IMPORTANCES)}, got {name!r}")


IMPORTANCES = ("jsp", "l1_norm", "group_norm", "bn_scale", "gradient_count", "correlation", "random")


def layer_scores(name: str, layers: list[UnitLayer], stats: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """{layer name: (U,) importance in [0, 1]} (normalised by each layer's largest)."""
    if name not in IMPORTANCES:
        raise ConfigError(f"schedule.importance must be one of {list(IMPORTANCES)}, got {name!r}")
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for layer in layers:
        s = raw_scores(name, layer, stats, generator).float()
        out[layer.name] = s / s.max().clamp_min(1e-12)
    return out
