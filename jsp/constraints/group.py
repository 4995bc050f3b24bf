"""All units of a model as one flat vector; a weighted group norm with an analytic backward,
and its proximal step.

    P = sum_u c_u * ||g_u||_2 / sqrt(dim g_u)        g_u: unit u's group of parameters (a kind)

Per-unit quantities (coefficients, activity, redundancy) are flat (total units,) tensors;
layer i owns the slice ``offsets[i]:offsets[i+1]``. Arithmetic on them is a few whole-vector
operations instead of a dozen small ones per layer, which is what the constraint's cost on a
CPU is made of.

Two ways to apply P (method.md s.3):
- ``weighted_group_norm`` (``update=loss``, v1): P joins the loss; dP/dg_u = c_u g_u /
  (sqrt(dim) ||g_u||) is added to each .grad in one fused pass, and its record lets a
  constraint take the penalty's share back out of the gradient it counts.
- ``prox_step`` (``update=prox``, v2): after the optimiser step,
  g_u <- g_u * max(0, 1 - eta c_u / (sqrt(dim) ||g_u||)), so units reach exactly zero and one
  lambda is the same pressure whatever the optimiser does to gradients.
"""
from __future__ import annotations

import torch

from jsp.constraints.units import UnitLayer


WEIGHTINGS = ("rms", "sqrt_dim")


class UnitSet:
    """Layers of units laid out in one flat index; each unit's group is ``kind``.

    ``weighting`` is the penalty's weight per group: ``rms`` 1 / sqrt(dim) (the spec: the
    penalty is c_u times the RMS n_u), ``sqrt_dim`` sqrt(dim) (the classic group lasso of Yuan
    and Lin; under Adam a group's task-gradient step grows like sqrt(dim), so this weight gives
    a small and a large group the same pressure relative to what pushes them back).
    """

    def __init__(self, layers: list[UnitLayer], kind: str = "theta", weighting: str = "rms"):
        self.layers, self.kind = layers, kind
        self.sizes = [l.size for l in layers]
        device = layers[0].conv.weight.device if layers else torch.device("cpu")
        self.inv_sqrt_dim = torch.cat([torch.full((l.size,), max(l.dim_of(kind), 1) ** -0.5, device=device)
                                       for l in layers]) if layers else torch.zeros(0, device=device)
        self.weight = self.inv_sqrt_dim if weighting == "rms" else 1 / self.inv_sqrt_dim.clamp_min(1e-12)
        self.layer_index = torch.repeat_interleave(torch.arange(len(layers), device=device),
                                                   torch.tensor(self.sizes, dtype=torch.long, device=device))

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Views of ``flat`` (total,) per layer."""
        return torch.split(flat, self.sizes)

    @torch.no_grad()
    def norms(self) -> torch.Tensor:
        """(total,) ||g_u||_2, not normalised."""
        return torch.cat([l.sq_norms(self.kind) for l in self.layers]).sqrt() if self.layers \
            else self.inv_sqrt_dim.clone()

    @torch.no_grad()
    def grad_norms(self) -> torch.Tensor:
        """(total,) ||dL/dg_u||_2 from the parameters' .grad."""
        return torch.cat([l.sq_norms(self.kind, grad=True) for l in self.layers]).sqrt()

    @torch.no_grad()
    def grad_dots(self) -> torch.Tensor:
        """(total,) <dL/dg_u, g_u>."""
        out = []
        for l in self.layers:
            d = torch.zeros(l.size, device=l.conv.weight.device)
            for t, axis in l.params(self.kind):
                if t.grad is not None:
                    d += torch.linalg.vecdot(l.rows(t.grad, axis), l.rows(t, axis), dim=1)
            out.append(d)
        return torch.cat(out)

    def layer_mean(self, flat: torch.Tensor) -> torch.Tensor:
        """(total,) each unit's layer mean of ``flat``."""
        sums = torch.zeros(len(self.layers), device=flat.device, dtype=flat.dtype).index_add_(0, self.layer_index, flat)
        counts = torch.tensor(self.sizes, device=flat.device, dtype=flat.dtype)
        return (sums / counts)[self.layer_index]

    @torch.no_grad()
    def scale_(self, factors: torch.Tensor, grads: bool = False) -> None:
        """Multiply each unit's group (or, with ``grads``, add factor * group to its .grad) in place."""
        for layer, f in zip(self.layers, self.split(factors)):
            for t, axis in layer.params(self.kind):
                shape = [1] * t.dim()
                shape[axis] = -1
                f_t = f.view(shape).to(t.dtype)
                if not grads:
                    t.mul_(f_t)
                elif t.grad is None:
                    t.grad = t * f_t
                else:
                    t.grad.addcmul_(t, f_t)


class PenaltyRecord:
    """What one penalty evaluation saw and applied (all (total,) tensors)."""

    def __init__(self, norms: torch.Tensor, scales: torch.Tensor):
        self.norms = norms                # ||g_u||
        self.scales = scales              # c_u / (sqrt(dim) ||g_u||): dP/dg_u = scale_u g_u
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
        ctx.units.scale_(g * ctx.record.scales, grads=True)
        return (None,) * (3 + ctx.n_params)


def weighted_group_norm(units: UnitSet, coefs: torch.Tensor) -> tuple[torch.Tensor, PenaltyRecord]:
    """sum_u c_u w_u ||g_u|| (w_u = ``units.weight``); coefs (total,) are held constant.

    Returns the scalar (differentiable in the units' parameters) and its record.
    """
    coefs = coefs.detach()
    norms = units.norms()
    weighted = coefs * units.weight
    total = (weighted * norms).sum()
    record = PenaltyRecord(norms, weighted / norms.clamp_min(1e-12))
    params = [t for layer in units.layers for t, _ in layer.params(units.kind)]
    return _WeightedGroupNorm.apply(units, record, total, *params), record


@torch.no_grad()
def prox_step(units: UnitSet, coefs: torch.Tensor, lr: float, norms: torch.Tensor | None = None) -> torch.Tensor:
    """The proximal step of ``lr * sum_u c_u w_u ||g_u||``: shrink every group's norm by
    lr c_u w_u (w_u = ``units.weight``), to exactly zero when it would cross it. ``norms``: units.norms() if
    already computed. Returns the (total,) factors."""
    if not units.layers:
        return coefs
    shrink = lr * coefs.detach() * units.weight
    norms = units.norms() if norms is None else norms
    factors = (1 - shrink / norms.clamp_min(1e-30)).clamp_min(0)
    units.scale_(factors)
    return factors
