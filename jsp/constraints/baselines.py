"""Single-idea baselines of method.md s.5, on the same units as JSP.

Each penalty is a sum over units of a per-unit magnitude, so one ``lambda`` means roughly
the same pressure for every method:
  l1           lambda * sum_u ||W_u||_1 / dim W_u           (mean |weight| of the filter)
  group_lasso  lambda * sum_u ||theta_u||_2 / sqrt(dim theta_u)   (Wen et al. 2016, uniform)
  slimming     lambda * sum_u |gamma_u|                      (Liu et al. 2017, BN scales)
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

    def __init__(self, lam: float = 0.0, eps: float = 0.01, **kwargs):
        lam = kwargs.pop("lambda", lam)  # "lambda" is a Python keyword but the natural YAML key
        if kwargs:
            raise ConfigError(f"unknown constraint settings {sorted(kwargs)} for {type(self).__name__}")
        if lam < 0:
            raise ConfigError(f"constraint.lambda must be >= 0, got {lam}")
        super().__init__(eps=eps)
        self.lam = float(lam)

    def magnitudes(self, layer) -> torch.Tensor | None:
        raise NotImplementedError

    def penalty(self, model: nn.Module) -> torch.Tensor:
        device = next(model.parameters()).device
        if self.lam == 0:
            self.terms = {}
            return torch.zeros((), device=device)
        total = torch.zeros((), device=device)
        for layer in self.layers:
            m = self.magnitudes(layer)
            if m is not None:
                total = total + m.sum()
        total = self.lam * total
        self.terms = {self.term: total.detach()}
        return total

    def settings(self) -> dict:
        return {"lambda": self.lam, "eps": self.eps}


class L1(SingleTerm):
    """L1 on the filter weights."""

    term = "l1"

    def magnitudes(self, layer):
        return layer.filters().abs().mean(1)


class GroupLasso(SingleTerm):
    """Uniform group lasso over whole units."""

    term = "group"
    _units = None

    def penalty(self, model: nn.Module) -> torch.Tensor:
        if self.lam == 0 or not self.layers:
            return super().penalty(model)
        # Same per-unit magnitude as JSP's terms, with its cheaper analytic backward pass.
        if self._units is None or self._units.layers is not self.layers:
            self._units = UnitSet(self.layers)
        coefs = torch.full((self._units.total,), self.lam, device=self._units.inv_sqrt_dim.device)
        total, _ = weighted_group_norm(self._units, coefs)
        self.terms = {self.term: total.detach()}
        return total


class Slimming(SingleTerm):
    """L1 on BatchNorm scales; units without a BatchNorm are not penalised."""

    term = "slimming"

    def magnitudes(self, layer):
        gamma = layer.gammas()
        return None if gamma is None else gamma.abs()
