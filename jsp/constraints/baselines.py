"""Single-idea baselines of method.md s.5, on the same units as JSP.

Each penalty is a sum over units of a per-unit magnitude, so one ``lambda`` means roughly
the same pressure for every method:
  l1           lambda * sum_u ||W_u||_1 / dim W_u           (mean |weight| of the filter)
  group_lasso  lambda * sum_u ||theta_u||_2 / sqrt(dim theta_u)   (Wen et al. 2016, uniform)
  slimming     lambda * sum_u |gamma_u|                      (Liu et al. 2017, BN scales)
Group lasso and slimming take the same update rule as JSP (``update=prox``, the default: a
proximal step after the optimiser's, which soft-thresholds |gamma| for slimming) and the same
budget controller; ``update=loss`` adds the penalty to the loss. L1 has only ``loss``.
The YAML key is ``lambda``; Python callers may pass ``lam=``.
"""
from __future__ import annotations

import torch
from torch import nn

from jsp.constraints.base import Constraint
from jsp.constraints.group import UnitSet, weighted_group_norm
from jsp.errors import ConfigError


class SingleTerm(Constraint):
    """A penalty ``lambda * sum_u m_u`` with one per-unit magnitude ``m_u`` (``magnitudes``)."""

    term = "penalty"
    kind: str | None = None   # the unit group a proximal step shrinks (None: no prox form)

    def __init__(self, lam: float = 0.0, eps: float = 0.01, update: str | None = None, budget: float | None = None,
                 budget_every: int = 10, budget_ramp: float = 0.5, cost_aware: str | None = None,
                 weighting: str = "rms", budget_deadline: float | None = 0.9, **kwargs):
        lam = kwargs.pop("lambda", lam)  # "lambda" is a Python keyword but the natural YAML key
        if kwargs:
            raise ConfigError(f"unknown constraint settings {sorted(kwargs)} for {type(self).__name__}")
        if lam < 0:
            raise ConfigError(f"constraint.lambda must be >= 0, got {lam}")
        allowed = ("prox", "loss") if self.kind else ("loss",)
        update = allowed[0] if update is None else update
        if update not in allowed:
            raise ConfigError(f"constraint.update must be one of {list(allowed)} for {type(self).__name__}, "
                              f"got {update!r}")
        super().__init__(eps=eps, budget=budget, budget_every=budget_every, budget_ramp=budget_ramp,
                         cost_aware=cost_aware, weighting=weighting, budget_deadline=budget_deadline)
        self.lam, self.update = float(lam), update
        self._units: UnitSet | None = None

    @property
    def measured_on(self) -> str:
        return self.kind or "scale"

    def units(self) -> UnitSet:
        if self._units is None or self._units.layers is not self.layers:
            self._units = UnitSet([l for l in self.layers if l.dim_of(self.kind)], self.kind, self.weighting)
        return self._units

    def magnitudes(self, layer) -> torch.Tensor | None:
        raise NotImplementedError

    def penalty(self, model: nn.Module) -> torch.Tensor:
        device = next(model.parameters()).device
        if self.lam == 0 or self.update == "prox":
            if self.update != "prox":
                self.terms = {}
            return torch.zeros((), device=device)
        total = torch.zeros((), device=device)
        for layer in self.layers:
            m = self.magnitudes(layer)
            if m is not None:
                total = total + m.sum()
        total = self.factor * self.lam * total
        self.terms = {self.term: total.detach()}
        return total

    def prox_units(self) -> UnitSet | None:
        return self.units() if self.kind else None

    def prox_coefs(self) -> torch.Tensor:
        units = self.units()
        return torch.full((units.total,), self.lam, device=units.inv_sqrt_dim.device)

    def log_terms(self, coefs: torch.Tensor, n: torch.Tensor) -> None:
        super().log_terms(coefs, n)
        self.terms[self.term] = self.terms.pop("penalty")


class L1(SingleTerm):
    """L1 on the filter weights."""

    term = "l1"

    def magnitudes(self, layer):
        return layer.filters().abs().mean(1)


class GroupLasso(SingleTerm):
    """Uniform group lasso over whole units."""

    term = "group"
    kind = "theta"

    def penalty(self, model: nn.Module) -> torch.Tensor:
        if self.lam == 0 or not self.layers or self.update == "prox":
            return super().penalty(model)
        # Same per-unit magnitude as JSP's terms, with its cheaper analytic backward pass.
        units = self.units()
        coefs = torch.full((units.total,), self.factor * self.lam, device=units.inv_sqrt_dim.device)
        total, _ = weighted_group_norm(units, coefs)
        self.terms = {self.term: total.detach()}
        return total


class Slimming(SingleTerm):
    """L1 on BatchNorm scales; units without a BatchNorm are not penalised."""

    term = "slimming"
    kind = "gamma"
    # bn_scale takes |gamma_u|; a unit with no BatchNorm (a transposed convolution) is measured
    # on its scale (W_u, b_u), not scored 0 for lacking the group the proximal step shrinks.
    measured_on = "scale"

    def magnitudes(self, layer):
        gamma = layer.gammas()
        return None if gamma is None else gamma.abs()
