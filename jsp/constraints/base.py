"""The constraint interface: statistics from gradients, and a penalty that is either added to
the task loss (``update=loss``) or applied as a proximal step after the optimiser's
(``update=prox``, method.md s.3).

The training loop calls, every step:
    loss = task + constraint.penalty(model)      # zero under update=prox
    loss.backward()
    constraint.observe(model, step)              # statistics from the task-loss gradients
    optimizer.step()
    constraint.step(model, lr, step)             # the proximal step (and budget controller)
Under update=loss a constraint that needs the task-loss gradient alone (gradient counting)
takes the penalty's share back out itself (see jsp.constraints.group.PenaltyRecord).
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from jsp.constraints.budget import BudgetController, check_deadline
from jsp.constraints.group import WEIGHTINGS, UnitSet, prox_step
from jsp.constraints.units import UnitLayer, find_units, off_fractions, unit_costs
from jsp.errors import ConfigError


class Constraint:
    """Base class and the ``none`` option: no statistics, zero penalty.

    Every constraint knows the model's units, so each run can report how many units are
    switched off (norm <= eps times the largest of its layer), whatever trained it.
    """

    def __init__(self, eps: float = 0.01, budget: float | None = None, budget_every: int = 10,
                 budget_ramp: float = 0.5, cost_aware: str | None = None, weighting: str = "rms",
                 budget_deadline: float | None = 0.9):
        if not 0 <= eps < 1:
            raise ConfigError(f"constraint.eps must be in [0, 1), got {eps}")
        if budget is not None and not 0 < budget < 1:
            raise ConfigError(f"constraint.budget must be a fraction in (0, 1), got {budget}")
        if budget_every < 1 or not 0 < budget_ramp <= 1:
            raise ConfigError(f"constraint.budget_every must be >= 1 and budget_ramp in (0, 1], got {budget_every}, "
                              f"{budget_ramp}")
        self.eps = eps
        #: fraction of the dense cost the constraint should reach by itself (None: no budget);
        #: the pipeline gives it a BudgetController (``controller``) for the training stage.
        self.budget, self.budget_every, self.budget_ramp = budget, budget_every, budget_ramp
        check_deadline(budget_deadline)
        #: the fraction of training by which the budget is met, by force if need be (budget.py)
        self.budget_deadline = budget_deadline
        if cost_aware not in (None, "params", "macs"):
            raise ConfigError(f"constraint.cost_aware must be null, params or macs, got {cost_aware!r}")
        #: scale each unit's pressure by what removing it saves (method.md s.4's cost-aware
        #: ranking, applied while training)
        self.cost_aware = cost_aware
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"constraint.weighting must be one of {list(WEIGHTINGS)}, got {weighting!r}")
        self.weighting = weighting  # the penalty's weight per unit group (see group.UnitSet)
        self.layers: list[UnitLayer] = []
        #: set by the pipeline for constraint.budget runs; scales the penalty (see budget.py).
        self.controller: BudgetController | None = None
        #: the proximal step never pushes a layer's this-many largest units (as pruning keeps
        #: schedule.min_channels): a layer shrunk to nothing cuts the network.
        self.min_units = 2
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

    update = "loss"
    #: The unit group whose norm n_u measures a unit when pruning (an importance's n_u): "the
    #: group a proximal step shrinks" is another question (``prox_units``), and L1 has none.
    measured_on = "scale"

    def prox_units(self) -> UnitSet | None:
        """The unit groups a proximal step shrinks (None: this constraint has no prox form)."""
        return None

    def prox_coefs(self) -> torch.Tensor:
        """(total,) c_u of the proximal step, before the budget factor."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, model: nn.Module, lr: float, step: int | None = None, scale: float = 1.0,
             control: bool = True) -> None:
        """After the optimiser step: the proximal step at learning rate ``lr`` (its penalty
        multiplied by ``scale``), then, with ``control``, the budget controller's check."""
        units = self.prox_units() if self.update == "prox" else None
        if units is not None and units.total:
            if self.controller is not None and self.controller.met:
                # Budget met: hold the off units at exactly zero (the proximal step's limit,
                # a projection, whatever the learning rate has decayed to); push no other unit.
                # Their scale s_u too (slimming shrinks gamma alone): a zero s_u is a zero output,
                # so the threshold cut that removes them changes nothing.
                off = {l.name: l.off(self.eps) for l in self.layers}
                units.scale_(1 - torch.cat([off[l.name] for l in units.layers]).float())
                for layer in self.layers:
                    layer.zero_(off[layer.name])
                self.controller.held += 1
                return
            norms = units.norms()
            coefs = self.factor * self.prox_coefs() * self.unprotected(units, norms) * self.cost_weights(units)
            self.log_terms(coefs, norms * units.weight)
            if coefs.any():
                prox_step(units, scale * coefs, lr, norms)
        if control and self.controller is not None and step is not None:
            with torch.enable_grad():
                self.controller.update(step)

    def cost_weights(self, units: UnitSet) -> torch.Tensor | float:
        """(total,) each unit's cost relative to the mean unit under ``cost_aware`` (else 1)."""
        if self.cost_aware is None:
            return 1.0
        if getattr(self, "_costs_for", None) is not units:
            self._costs_for, self._costs = units, unit_costs(units.layers, self.cost_aware)
        return self._costs

    def unprotected(self, units: UnitSet, norms: torch.Tensor) -> torch.Tensor:
        """(total,) 0 for each layer's ``min_units`` largest units, 1 elsewhere."""
        mask = torch.ones_like(norms)
        start = 0
        for n in units.split(norms):
            k = min(self.min_units, len(n))
            mask[start + n.topk(k).indices] = 0
            start += len(n)
        return mask

    def log_terms(self, coefs: torch.Tensor, n: torch.Tensor) -> None:
        """Record the weighted penalty terms of a proximal step for logging."""
        self.terms = {"penalty": (coefs * n).sum(), "factor": self.factor,
                      **({"kept_cost": self.controller.last_cost} if self.controller else {})}

    @torch.no_grad()
    def forecast_off(self, horizon: float) -> dict[str, torch.Tensor]:
        """{layer: (U,) bool} units that are off now or that the proximal step, at the current
        coefficients and a learning rate summing to ``horizon`` over the rest of training,
        would shrink to zero if the task gradient did not resist (the budget controller's
        forecast: zeroing lags the pressure by many steps, so the controller steers this)."""
        units = self.prox_units() if self.update == "prox" else None
        out = {l.name: l.off(self.eps) for l in self.layers}
        if units is None or not units.total:
            return out
        norms = units.norms()
        reach = horizon * self.factor * self.prox_coefs() * units.weight * self.unprotected(units, norms) \
            * self.cost_weights(units)
        for layer, soon in zip(units.layers, units.split(norms <= reach)):
            out[layer.name] = out[layer.name] | soon
        return out

    @property
    def factor(self) -> float:
        """The budget controller's multiplier of lambda (1 without a budget)."""
        return 1.0 if self.controller is None else self.controller.factor

    def refresh(self) -> None:
        """Recompute weight-derived statistics on the current weights (before pruning)."""

    def statistics(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per-unit statistics by name, then by layer, e.g. {"activity": {"inc.0": (U,)}}."""
        return {}

    def unit_report(self) -> dict:
        """Fractions of switched-off units, overall and per layer."""
        total, per_layer = off_fractions(self.layers, self.eps)
        return {"units_off": total, "units_total": sum(l.size for l in self.layers),
                "units_off_layers": per_layer}

    def state_dict(self) -> dict:
        return self._budget_state()

    def load_state_dict(self, state: dict) -> None:
        self._load_budget_state(state)

    def _budget_state(self) -> dict:
        # float64: the factor multiplies every proximal step, and a float32 copy would resume a
        # different run (its last bits differ from the Python float's)
        return {} if self.controller is None else {"budget": {k: torch.tensor([v], dtype=torch.float64)
                                                              for k, v in self.controller.state_dict().items()}}

    def _load_budget_state(self, state: dict) -> None:
        if self.controller is not None and "budget" in state:
            self.controller.load_state_dict({k: float(v.reshape(-1)[0]) for k, v in state["budget"].items()})

    def settings(self) -> dict:
        """Hyper-parameters, recorded in metrics.json and the TensorBoard hparams: every keyword
        of the constructor as this instance holds it (declared once, in the signature; the
        Python name ``lam`` is recorded as its YAML key, ``lambda``)."""
        out = {}
        for name, p in inspect.signature(type(self).__init__).parameters.items():
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                out["lambda" if name == "lam" else name] = getattr(self, name)
        return out


class Scaled(Constraint):
    """Another constraint with its penalty multiplied by ``scale`` (e.g. during fine-tuning);
    statistics keep updating in the wrapped constraint."""

    def __init__(self, inner: Constraint, scale: float):
        super().__init__(eps=inner.eps)
        self.inner, self.scale, self.layers = inner, scale, inner.layers

    def observe(self, model, step=None):
        self.inner.observe(model, step)

    def step(self, model, lr, step=None, scale=1.0, control=True):
        # Only the training stage moves the budget controller, not fine-tuning.
        if self.scale:
            self.inner.step(model, lr, step, scale=self.scale * scale, control=False)
            self.terms = self.inner.terms

    def penalty(self, model):
        if self.scale == 0:
            self.terms = {}
            return super().penalty(model)
        p = self.inner.penalty(model) * self.scale
        self.terms = {k: v * self.scale for k, v in self.inner.terms.items()}
        return p
