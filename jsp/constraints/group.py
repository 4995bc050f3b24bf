"""All units of a model as one flat vector, and a weighted group norm with an analytic backward.

    P = sum_u c_u * ||theta_u||_2 / sqrt(dim theta_u)

Per-unit quantities (coefficients, activity, redundancy) are flat (total units,) tensors;
layer i owns the slice ``offsets[i]:offsets[i+1]``. Arithmetic on them is a few whole-vector
operations instead of a dozen small ones per layer, which is what the constraint's cost on a
CPU is made of. dP/dtheta_u = c_u theta_u / (sqrt(dim) ||theta_u||) is added to each
parameter's .grad in one fused pass (autograd's chain of reshapes and powers costs about 4x
more). The
record of that factor lets a constraint take the penalty's share back out of
``weight.grad`` and count the task-loss gradient alone, whatever loss scaling (AMP)
multiplied both.
"""
from __future__ import annotations

import torch

from jsp.constraints.units import UnitLayer


class UnitSet:
    """Layers of units laid out in one flat index."""

    def __init__(self, layers: list[UnitLayer]):
        self.layers = layers
        self.sizes = [l.size for l in layers]
        device = layers[0].conv.weight.device if layers else torch.device("cpu")
        self.inv_sqrt_dim = torch.cat([torch.full((l.size,), l.dim ** -0.5, device=device) for l in layers]) \
            if layers else torch.zeros(0, device=device)
        self.layer_index = torch.repeat_interleave(torch.arange(len(layers), device=device),
                                                   torch.tensor(self.sizes, dtype=torch.long, device=device))

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Views of ``flat`` (total,) per layer."""
        return torch.split(flat, self.sizes)

    @torch.no_grad()
    def norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(||W_u||, ||theta_u||), each (total,): filter norms and whole-unit norms."""
        filt, full = [], []
        for layer in self.layers:
            f = torch.linalg.vector_norm(layer.filters(), dim=1)
            extras = layer.extras()
            filt.append(f)
            full.append(torch.linalg.vector_norm(torch.stack([f, *extras]), dim=0) if extras else f)
        return torch.cat(filt), torch.cat(full)

    def layer_mean(self, flat: torch.Tensor) -> torch.Tensor:
        """(total,) each unit's layer mean of ``flat``."""
        sums = torch.zeros(len(self.layers), device=flat.device, dtype=flat.dtype).index_add_(0, self.layer_index, flat)
        counts = torch.tensor(self.sizes, device=flat.device, dtype=flat.dtype)
        return (sums / counts)[self.layer_index]


class PenaltyRecord:
    """What one penalty evaluation saw and applied (all (total,) tensors)."""

    def __init__(self, filter_norms: torch.Tensor, norms: torch.Tensor, scales: torch.Tensor):
        self.filter_norms = filter_norms  # ||W_u||
        self.norms = norms                # ||theta_u||
        self.scales = scales              # c_u / (sqrt(dim) ||theta_u||): dP/dtheta_u = scale_u theta_u
        self.upstream: torch.Tensor | None = None  # gradient that reached P (1, or the AMP scale)


class _WeightedGroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, units, record, total, *params):
        ctx.units, ctx.record, ctx.n_params = units, record, len(params)
        return total.clone()

    @staticmethod
    def backward(ctx, g):
        # The gradient goes straight into .grad with one fused multiply-add per parameter
        # (as Torch-Pruning's regularisers do), instead of a temporary that autograd would
        # then add to the task-loss gradient. AccumulateGrad adds in place to whatever
        # .grad holds, so the order of the two contributions does not matter.
        ctx.record.upstream = g
        with torch.no_grad():
            for layer, s in zip(ctx.units.layers, ctx.units.split(g * ctx.record.scales)):
                w = layer.conv.weight
                shape = [1] * w.dim()
                shape[layer.out_dim] = -1
                for p, scale in ((w, s.view(shape)), *((e, s) for e in layer.extras())):
                    if p.grad is None:
                        p.grad = p * scale
                    else:
                        p.grad.addcmul_(p, scale)
        return (None,) * (3 + ctx.n_params)


def weighted_group_norm(units: UnitSet, coefs: torch.Tensor) -> tuple[torch.Tensor, PenaltyRecord]:
    """sum_u c_u ||theta_u|| / sqrt(dim theta_u); coefs (total,) are held constant.

    Returns the scalar (differentiable in the units' parameters) and its record.
    """
    coefs = coefs.detach()
    filter_norms, norms = units.norms()
    weighted = coefs * units.inv_sqrt_dim
    total = (weighted * norms).sum()
    record = PenaltyRecord(filter_norms, norms, weighted / norms.clamp_min(1e-12))
    params = [p for layer in units.layers for p in (layer.conv.weight, *layer.extras())]
    return _WeightedGroupNorm.apply(units, record, total, *params), record
