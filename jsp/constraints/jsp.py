"""The JSP constraint: gradient-counting sparsity (method.md s.1), redundancy reduction (s.2)
and their composite (s.3):

    L = L_task + lambda_s * sum_u (1 - a_u) n_u + lambda_r * sum_u r_u n_u,
    n_u = ||theta_u||_2 / sqrt(dim theta_u)

``constraint=gradient_count`` is this class with lambda_r = 0, ``constraint=redundancy`` with
lambda_s = 0 (activity is still counted there: it decides which unit of a correlated pair
is the redundant one).
"""
from __future__ import annotations

import torch
from torch import nn

from jsp.constraints.base import Constraint
from jsp.constraints.group import PenaltyRecord, UnitSet, weighted_group_norm
from jsp.errors import ConfigError


class JSPConstraint(Constraint):
    """Joint sparsity promotion (gradient counting) and redundancy reduction.

    Args:
        lambda_s: weight of R_sparse (activity-weighted group penalty).
        lambda_r: weight of R_redund (correlation-weighted group penalty).
        tau: a unit is active at a step when its task-gradient norm ||dL/dW_u|| exceeds tau
            times the mean over its layer.
        beta: decay of the activity average a_u (a_u starts at 1).
        count_every: count activity every k steps (1 = every step).
        redund_every: recompute filter correlations and r_u every this many steps.
        eps: a unit is "switched off" when its norm is <= eps times its layer's largest.

    Usage in any training loop (the penalty is part of the loss that is back-propagated
    before ``observe``; observe removes the penalty's own gradient before counting)::

        jsp = JSPConstraint(lambda_s=1e-3, lambda_r=1e-3).attach(model)
        loss = criterion(model(x), y) + jsp.penalty(model)
        loss.backward()
        jsp.observe(model)      # counts the task-loss part of the gradients
        optimizer.step()
    """

    def __init__(self, lambda_s: float = 5e-3, lambda_r: float = 5e-3, tau: float = 0.1,
                 beta: float = 0.99, count_every: int = 1, redund_every: int = 20, eps: float = 0.01):
        super().__init__(eps=eps)
        for name, value in (("lambda_s", lambda_s), ("lambda_r", lambda_r), ("tau", tau)):
            if value < 0:
                raise ConfigError(f"constraint.{name} must be >= 0, got {value}")
        if not 0 <= beta < 1:
            raise ConfigError(f"constraint.beta must be in [0, 1), got {beta}")
        if count_every < 1 or redund_every < 1:
            raise ConfigError("constraint.count_every and constraint.redund_every must be >= 1")
        self.lambda_s, self.lambda_r, self.tau, self.beta = lambda_s, lambda_r, tau, beta
        self.count_every, self.redund_every = count_every, redund_every
        self.units = UnitSet([])
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
        self.units = UnitSet(self.layers)
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
        if step % self.redund_every == 0:
            self.update_redundancy()

    @torch.no_grad()
    def count_gradients(self, record: PenaltyRecord | None) -> None:
        """a_u <- beta a_u + (1 - beta) [g_u > tau mean_layer g], g_u = ||dL_task/dW_u||."""
        if any(l.conv.weight.grad is None for l in self.layers):
            return
        grads = [l.filters(l.conv.weight.grad) for l in self.layers]
        g2 = torch.cat([torch.linalg.vector_norm(g, dim=1) for g in grads]).square()
        if record is not None and record.upstream is not None:
            # The penalty added f_u W_u to dL/dW_u; take it out:
            # ||G - f W||^2 = ||G||^2 - 2 f <G, W> + f^2 ||W||^2.
            f = record.upstream * record.scales
            dots = torch.cat([torch.linalg.vecdot(g, l.filters(), dim=1) for g, l in zip(grads, self.layers)])
            g2 = g2 - 2 * f * dots + (f * record.filter_norms).square()
        g = g2.clamp_min(0).sqrt()
        if not torch.isfinite(g).all():  # an AMP overflow step: nothing to count
            return
        active = (g > self.tau * self.units.layer_mean(g)).to(self.a.dtype)
        self.a.mul_(self.beta).add_((1 - self.beta) * active)

    @torch.no_grad()
    def update_redundancy(self) -> None:
        """r_u = max |rho_uv| over units v of the same layer ranked above u by (a_v, ||theta_v||)."""
        _, norms = self.units.norms()
        out = [layer_redundancy(layer, a, n)
               for layer, a, n in zip(self.layers, self.units.split(self.a), self.units.split(norms))]
        self.r = torch.cat(out) if out else self.r

    def penalty(self, model: nn.Module) -> torch.Tensor:
        device = next(model.parameters()).device
        if (self.lambda_s == 0 and self.lambda_r == 0) or not self.layers:
            self.terms = {}
            return torch.zeros((), device=device)
        sparse_c = self.lambda_s * (1 - self.a)
        redund_c = self.lambda_r * self.r
        total, self._record = weighted_group_norm(self.units, sparse_c + redund_c)
        # The split into the two terms is for logging only; the gradient flows through total.
        n = self._record.norms * self.units.inv_sqrt_dim
        self.terms = {"sparse": (sparse_c * n).sum(), "redund": (redund_c * n).sum()}
        return total

    def statistics(self) -> dict[str, dict[str, torch.Tensor]]:
        names = [l.name for l in self.units.layers]  # the layers the flat statistics describe
        return {"activity": dict(zip(names, self.units.split(self.a))),
                "redundancy": dict(zip(names, self.units.split(self.r)))}

    def state_dict(self) -> dict:
        return {k: {n: v.detach().cpu().clone() for n, v in d.items()} for k, d in self.statistics().items()}

    def load_state_dict(self, state: dict) -> None:
        self._align(state)

    def settings(self) -> dict:
        return {"lambda_s": self.lambda_s, "lambda_r": self.lambda_r, "tau": self.tau, "beta": self.beta,
                "count_every": self.count_every, "redund_every": self.redund_every, "eps": self.eps}


@torch.no_grad()
def layer_redundancy(layer, activity: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """(U,) r_u of one layer: the largest |Pearson correlation| of unit u's filter with the
    filter of a unit ranked above it by (activity, norm, index); 0 for the top unit."""
    if layer.size < 2:
        return torch.zeros(layer.size, device=activity.device)
    f = layer.filters().float()
    f = f - f.mean(1, keepdim=True)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rho = (f @ f.T).abs()                                    # (U, U)
    rank = _rank(activity, norms)
    above = rank[None, :] < rank[:, None]                    # above[u, v]: v outranks u
    return (rho * above).amax(1)


def _rank(activity: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """(U,) position of each unit when sorted by activity, then norm, then index (0 = top)."""
    order = torch.argsort(norms, descending=True, stable=True)
    order = order[torch.argsort(activity[order], descending=True, stable=True)]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return rank
