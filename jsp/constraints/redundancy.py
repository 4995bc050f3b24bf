"""Redundancy of units (method.md s.2): how well a unit's filter is reproduced by a unit ranked
above it in the same layer.

    rho_uv = f_u . f_v,  f = vec(W) centred and scaled to unit norm
    r_u    = max(0, max over v ranked above u of rho_uv)        (``sign="signed"``, v2)
    r_u    = max over v ranked above u of |rho_uv|              (``sign="abs"``, v1)

Under normalisation and ReLU, W and -W give complementary outputs, so v2 counts the signed
correlation. The largest of k chance correlations grows with k, so v2 corrects r_u for
chance: r_u <- max(0, (r_u - r0) / (1 - r0)), r0 the expected value of the same statistic at
the same rank for random filters of the layer's shape (estimated once per shape).
"""
from __future__ import annotations

import functools

import torch

_CHANCE_DRAWS = 16


def correlations(filters: torch.Tensor) -> torch.Tensor:
    """(U, U) Pearson correlations between the rows of ``filters`` (U, D)."""
    f = filters.float()
    f = f - f.mean(1, keepdim=True)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return f @ f.T


def rank_of(activity: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """(U,) position of each unit when sorted by activity, then norm, then index (0 = top)."""
    order = torch.argsort(norms, descending=True, stable=True)
    order = order[torch.argsort(activity[order], descending=True, stable=True)]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return rank


def _max_above(rho: torch.Tensor, rank: torch.Tensor, signed: bool) -> torch.Tensor:
    rho = rho if signed else rho.abs()
    above = rank[None, :] < rank[:, None]                    # above[u, v]: v outranks u
    return rho.masked_fill(~above, float("-inf")).amax(1).clamp_min(0).nan_to_num(0.0, neginf=0.0)


@functools.lru_cache(maxsize=256)
def chance_level(units: int, dim: int, signed: bool) -> torch.Tensor:
    """(units,) expected r at each rank (0 = top unit, no partner) for random Gaussian filters
    of shape (units, dim): the part of r that any layer of that shape shows by chance."""
    gen = torch.Generator().manual_seed(units * 7919 + dim)
    rank = torch.arange(units)
    draws = [_max_above(correlations(torch.randn(units, dim, generator=gen)), rank, signed)
             for _ in range(_CHANCE_DRAWS)]
    return torch.stack(draws).mean(0)


@torch.no_grad()
def layer_redundancy(filters: torch.Tensor, activity: torch.Tensor, norms: torch.Tensor,
                     signed: bool = True, chance: bool = True) -> torch.Tensor:
    """(U,) r_u of one layer's units from their filters (U, D), ranked by (activity, norm, index);
    0 for the top unit. ``signed``/``chance``: v2's signed, chance-corrected r (see module)."""
    units, dim = filters.shape
    if units < 2:
        return torch.zeros(units, device=activity.device)
    rank = rank_of(activity, norms)
    r = _max_above(correlations(filters), rank, signed)
    if chance:
        r0 = chance_level(units, dim, signed).to(r.device)[rank]
        r = ((r - r0) / (1 - r0).clamp_min(1e-6)).clamp_min(0)
    return r
