"""The constraint interface: statistics from gradients, and a penalty added to the task loss.

The training loop calls, every step:
    loss = task + constraint.penalty(model)
    loss.backward()
    constraint.observe(model, step)    # statistics from the task-loss part of the gradients
A constraint that needs the task-loss gradient alone (gradient counting) separates the
penalty's contribution itself (see jsp.constraints.jsp._Tap).
"""
from __future__ import annotations

import torch
from torch import nn

from jsp.constraints.units import UnitLayer, find_units, off_fractions
from jsp.errors import ConfigError


class Constraint:
    """Base class and the ``none`` option: no statistics, zero penalty.

    Every constraint knows the model's units, so each run can report how many units are
    switched off (norm <= eps times the largest of its layer), whatever trained it.
    """

    def __init__(self, eps: float = 0.01):
        if not 0 <= eps < 1:
            raise ConfigError(f"constraint.eps must be in [0, 1), got {eps}")
        self.eps = eps
        self.layers: list[UnitLayer] = []
        #: weighted terms of the last penalty, for logging (e.g. {"sparse": tensor(0.1)}).
        self.terms: dict[str, torch.Tensor | float] = {}

    def attach(self, model: nn.Module, in_channels: int | None = None, size: int | None = None):
        """Find the units of ``model``; call once before training and again after any surgery."""
        self._trace = (in_channels, size)
        self.layers = find_units(model, in_channels, size)
        self._align()
        return self

    def after_surgery(self, model: nn.Module, removed: dict[str, list[int]]) -> None:
        """Re-find the units of a pruned ``model``; per-unit statistics follow the kept units.

        removed: {layer name: removed output-channel indices}.
        """
        state = self.state_dict()
        for per_layer in state.values():
            for name, idxs in removed.items():
                if name in per_layer:
                    keep = torch.ones(len(per_layer[name]), dtype=torch.bool)
                    keep[idxs] = False
                    per_layer[name] = per_layer[name][keep]
        self.attach(model, *self._trace)
        self.load_state_dict(state)

    def _align(self) -> None:
        """Fit per-unit statistics to ``self.layers`` (after attach or load_state_dict)."""

    def observe(self, model: nn.Module, step: int | None = None) -> None:
        """Update statistics after the backward pass."""

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """Scalar tensor added to the loss (zero, not requiring grad, for ``none``)."""
        return torch.zeros((), device=next(model.parameters()).device)

    def statistics(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per-unit statistics by name, then by layer, e.g. {"activity": {"inc.0": (U,)}}."""
        return {}

    def unit_report(self) -> dict:
        """Fractions of switched-off units, overall and per layer."""
        total, per_layer = off_fractions(self.layers, self.eps)
        return {"units_off": total, "units_total": sum(l.size for l in self.layers),
                "units_off_layers": per_layer}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def settings(self) -> dict:
        """Hyper-parameters, recorded in metrics.json and the TensorBoard hparams."""
        return {"eps": self.eps}


class NoConstraint(Constraint):
    """Plain training."""


class Scaled(Constraint):
    """Another constraint with its penalty multiplied by ``scale`` (e.g. during fine-tuning);
    statistics keep updating in the wrapped constraint."""

    def __init__(self, inner: Constraint, scale: float):
        super().__init__(eps=inner.eps)
        self.inner, self.scale, self.layers = inner, scale, inner.layers

    def observe(self, model, step=None):
        self.inner.observe(model, step)

    def penalty(self, model):
        if self.scale == 0:
            self.terms = {}
            return super().penalty(model)
        p = self.inner.penalty(model) * self.scale
        self.terms = {k: v * self.scale for k, v in self.inner.terms.items()}
        return p
