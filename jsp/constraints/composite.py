"""The JSP constraint: gradient-counting sparsity (method.md s.1), redundancy reduction (s.2)
and their composite (s.3), version 2 by default:

    c_u = lambda_s (1 - a_u) + lambda_r r_u,   penalty sum_u c_u n_u,   n_u = ||s_u|| / sqrt(dim s_u)

applied as a proximal step after each optimiser step (``update=prox``) on the unit's scale
parameters s_u (``count_on=scale``: BatchNorm's gamma, beta where there is one), with
activity counted on ||dL_task/ds_u|| and the signed, chance-corrected redundancy.
The v1 reading is ``count_on=filters`` (g_u on W_u, n_u on the whole unit theta_u),
``sign=abs``, ``chance=false``, ``update=loss``, ``tau=0.1``.

``constraint=gradient_count`` is this class with lambda_r = 0, ``constraint=redundancy`` with
lambda_s = 0 (activity is still counted there: it decides which unit of a correlated pair
is the redundant one).
"""
from __future__ import annotations

import torch
from torch import nn

from jsp.constraints.base import Constraint
from jsp.constraints.group import PenaltyRecord, UnitSet, weighted_group_norm
from jsp.constraints.redundancy import layer_redundancy
from jsp.engine import distributed
from jsp.errors import ConfigError

#: The settings that make JSPConstraint the version-1 method (method.md, v1 compatibility).
V1 = {"count_on": "filters", "sign": "abs", "chance": False, "update": "loss", "tau": 0.1}


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"constraint.{name} must be one of {list(choices)}, got {value!r}")


class JSPConstraint(Constraint):
    """Joint sparsity promotion (gradient counting) and redundancy reduction.

    Args:
        lambda_s: weight of R_sparse (activity-weighted group penalty).
        lambda_r: weight of R_redund (correlation-weighted group penalty).
        tau: a unit is active at a step when its task-gradient norm g_u exceeds tau times
            the mean over its layer.
        beta: decay of the activity average a_u (a_u starts at 1).
        count_every: count activity every k steps (1 = every step).
        redund_every: recompute filter correlations and r_u every this many steps.
        eps: a unit is "switched off" when its n_u is <= eps times its layer's largest.
        count_on: "scale" (v2: g_u and n_u on the scale parameters s_u) or "filters"
            (v1: g_u on W_u, n_u and the penalty on the whole unit theta_u).
        sign: "signed" (v2) or "abs" (v1) correlations in r_u.
        chance: correct r_u for the chance level of the layer's shape (v2).
        update: "prox" (v2: proximal step after the optimiser) or "loss" (v1: penalty in the loss).
        budget, budget_every, budget_ramp, budget_deadline: reach this fraction of the dense
            cost by itself, checking every N steps, the target reaching the budget at this
            fraction of training, met by force (the least important units zeroed) at that
            fraction if not by then (see budget.py).
        measure: "weights" (r_u from the filters) or "features" (from the units' post-normalisation
            feature maps of the training batch before each redundancy update, through hooks).

    Usage in any training loop::

        jsp = JSPConstraint(lambda_s=1.0, lambda_r=1.0).attach(model)
        loss = criterion(model(x), y) + jsp.penalty(model)   # zero under update=prox
        loss.backward()
        jsp.observe(model)      # counts the task-loss part of the gradients
        optimizer.step()
        jsp.step(model, lr)     # the proximal step
    """

    def __init__(self, lambda_s: float = 1.0, lambda_r: float = 1.0, tau: float = 1.0, beta: float = 0.99,
                 count_every: int = 1, redund_every: int = 20, eps: float = 0.01, count_on: str = "scale",
                 sign: str = "signed", chance: bool = True, update: str = "prox", measure: str = "weights",
                 budget: float | None = None, budget_every: int = 10, budget_ramp: float = 0.5,
                 cost_aware: str | None = None, weighting: str = "rms", budget_deadline: float | None = 0.9):
        super().__init__(eps=eps, budget=budget, budget_every=budget_every, budget_ramp=budget_ramp,
                         cost_aware=cost_aware, weighting=weighting, budget_deadline=budget_deadline)
        for name, value in (("lambda_s", lambda_s), ("lambda_r", lambda_r), ("tau", tau)):
            if value < 0:
                raise ConfigError(f"constraint.{name} must be >= 0, got {value}")
        if not 0 <= beta < 1:
            raise ConfigError(f"constraint.beta must be in [0, 1), got {beta}")
        if count_every < 1 or redund_every < 1:
            raise ConfigError("constraint.count_every and constraint.redund_every must be >= 1")
        check_choice("count_on", count_on, ("scale", "filters"))
        check_choice("sign", sign, ("signed", "abs"))
        check_choice("update", update, ("prox", "loss"))
        check_choice("measure", measure, ("weights", "features"))
        self.lambda_s, self.lambda_r, self.tau, self.beta = lambda_s, lambda_r, tau, beta
        self.count_every, self.redund_every = count_every, redund_every
        self.count_on, self.sign, self.chance, self.update = count_on, sign, bool(chance), update
        self.measure = measure
        self._hooks, self._features, self._capture = [], {}, False
        self.kind = self.measured_on = "scale" if count_on == "scale" else "theta"  # n_u and the penalty
        self.count_kind = "scale" if count_on == "scale" else "filter"    # g_u
        self.units = self.counted = UnitSet([])
        self.a = torch.ones(0)   # activity a_u, flat over all units
        self.r = torch.zeros(0)  # redundancy r_u, flat over all units
        self._record: PenaltyRecord | None = None
        self._calls = 0

    def _align(self, stored: dict | None = None) -> None:
        """Lay the flat statistics out for ``self.layers``: per layer name, from ``stored``
        where it fits, else the current value (layers that survive a surgery), else fresh."""
        old = self.state_dict()
        for key, per_layer in (stored or {}).items():
            old.setdefault(key, {}).update(per_layer)
        self._load_budget_state(old)
        self.units = UnitSet(self.layers, self.kind, self.weighting)
        self.counted = UnitSet(self.layers, self.count_kind)
        if self.measure == "features":
            self._hook_features()
        dev = self.units.inv_sqrt_dim.device
        a, r = [], []
        for layer in self.layers:
            prev_a = old.get("activity", {}).get(layer.name)
            prev_r = old.get("redundancy", {}).get(layer.name)
            fits = prev_a is not None and prev_r is not None and len(prev_a) == len(prev_r) == layer.size
            a.append(prev_a.to(dev, torch.float32) if fits else torch.ones(layer.size, device=dev))
            r.append(prev_r.to(dev, torch.float32) if fits else torch.zeros(layer.size, device=dev))
        self.a = torch.cat(a) if a else torch.ones(0, device=dev)
        self.r = torch.cat(r) if r else torch.zeros(0, device=dev)

    @torch.no_grad()
    def observe(self, model: nn.Module, step: int | None = None) -> None:
        """Update a_u (every ``count_every`` steps) and r_u (every ``redund_every``).

        ``step`` defaults to the number of earlier observe calls."""
        step = self._calls if step is None else step
        self._calls = step + 1
        record, self._record = self._record, None
        if step % self.count_every == 0:
            self.count_gradients(record)
        if step % self.redund_every == 0 and (self.measure == "weights" or self._features):
            self.update_redundancy()
        # features: capture the next training batch's feature maps before a redundancy update
        self._capture = self.measure == "features" and (step + 1) % self.redund_every == 0

    def _hook_features(self) -> None:
        """Forward hooks on each layer's normalisation (or convolution) that keep its output,
        (U, at most 4096 positions), while ``_capture`` is set and the model is training."""
        for h in self._hooks:
            h.remove()
        self._features = {}

        def keep(name):
            def hook(module, inputs, output):
                if self._capture and module.training:
                    f = output.detach().transpose(0, 1).reshape(output.shape[1], -1)
                    self._features[name] = f[:, :: max(1, f.shape[1] // 4096)].float()
            return hook
        self._hooks = [(l.bn or l.conv).register_forward_hook(keep(l.name)) for l in self.layers]

    @torch.no_grad()
    def count_gradients(self, record: PenaltyRecord | None) -> None:
        """a_u <- beta a_u + (1 - beta) [g_u > tau mean_layer g], g_u the task-loss gradient norm."""
        if any(t.grad is None for l in self.layers for t, _ in l.params(self.count_kind)):
            return
        g2 = self.counted.grad_norms().square()
        if record is not None and record.upstream is not None:
            # Under update=loss the penalty added f_u p to dL/dp for every counted p; take it out:
            # ||G - f p||^2 = ||G||^2 - 2 f <G, p> + f^2 ||p||^2.
            f = record.upstream * record.scales
            g2 = g2 - 2 * f * self.counted.grad_dots() + (f * self.counted.norms()).square()
        g = g2.clamp_min(0).sqrt()
        if not torch.isfinite(g).all():  # an AMP overflow step: nothing to count
            return
        active = (g > self.tau * self.units.layer_mean(g)).to(self.a.dtype)
        self.a.mul_(self.beta).add_((1 - self.beta) * active)

    @torch.no_grad()
    def update_redundancy(self) -> None:
        """r_u from the current filters (or captured feature maps), units ranked by (a_u, n_u)
        (see redundancy.py)."""
        norms = self.units.norms()
        rows = {l.name: l.filters() for l in self.layers}
        if self.measure == "features":
            # several processes: every rank's positions (the same r_u on every rank)
            features = {k: distributed.cat(v, dim=1) for k, v in sorted(self._features.items())}
            rows.update({k: v for k, v in features.items() if k in rows and len(v) == len(rows[k])})
            self._features = {}
        out = [layer_redundancy(rows[layer.name], a, n, self.sign == "signed", self.chance)
               for layer, a, n in zip(self.layers, self.units.split(self.a), self.units.split(norms))]
        self.r = torch.cat(out) if out else self.r

    def refresh(self) -> None:
        if self.measure == "weights":  # features keep the last training batch's r_u
            self.update_redundancy()

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(total,) each: lambda_s (1 - a_u) and lambda_r r_u, times the budget factor."""
        return self.factor * self.lambda_s * (1 - self.a), self.factor * self.lambda_r * self.r

    def penalty(self, model: nn.Module) -> torch.Tensor:
        device = next(model.parameters()).device
        if self.update == "prox" or (self.lambda_s == 0 and self.lambda_r == 0) or not self.layers:
            if self.update != "prox":
                self.terms = {}
            return torch.zeros((), device=device)
        sparse_c, redund_c = self.coefficients()
        total, self._record = weighted_group_norm(self.units, sparse_c + redund_c)
        # The split into the two terms is for logging only; the gradient flows through total.
        n = self._record.norms * self.units.weight
        self.terms = {"sparse": (sparse_c * n).sum(), "redund": (redund_c * n).sum()}
        return total

    def prox_units(self) -> UnitSet:
        return self.units

    def prox_coefs(self) -> torch.Tensor:
        return self.lambda_s * (1 - self.a) + self.lambda_r * self.r

    def log_terms(self, coefs: torch.Tensor, n: torch.Tensor) -> None:
        super().log_terms(coefs, n)
        sparse_c, redund_c = self.coefficients()
        self.terms.update(sparse=(sparse_c * n).sum(), redund=(redund_c * n).sum())
        del self.terms["penalty"]

    def statistics(self) -> dict[str, dict[str, torch.Tensor]]:
        names = [l.name for l in self.units.layers]  # the layers the flat statistics describe
        return {"activity": dict(zip(names, self.units.split(self.a))),
                "redundancy": dict(zip(names, self.units.split(self.r)))}

    def state_dict(self) -> dict:
        stats = {k: {n: v.detach().cpu().clone() for n, v in d.items()} for k, d in self.statistics().items()}
        return {**stats, **self._budget_state()}

    def load_state_dict(self, state: dict) -> None:
        self._align(state)
