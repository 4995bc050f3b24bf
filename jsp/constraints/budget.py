"""The budget controller (method.md s.3): scale a penalty's lambda during training so that, at
the end, the units still switched on cost the budget's worth of the dense network.

Zeroing lags the pressure: a unit reaches zero only after the proximal steps have eaten its
whole norm, hundreds of steps after lambda rose. A controller that waits to see zeros
overshoots, and an overshoot cannot be undone (a zeroed ReLU unit gets no gradient and never
comes back). So every ``every`` steps the controller measures a forecast, ``cost(step)``: the
fraction of the dense cost (parameters or MACs) kept if the units that are off now, or that
the current pressure would shrink to zero over the rest of training, were removed. The
forecast ignores the task gradient's resistance, so it never counts fewer zeros than will
happen, and steering it to the budget approaches the budget from above. The target falls
linearly from 1 to ``budget`` over the first ``ramp`` of training (the network learns
before it is squeezed), then holds; the factor multiplying lambda moves by
``exp(gain * log(cost / target))``, at most ``max_step`` either way per check (a
multiplicative controller: the right lambda is unknown by orders of magnitude). The forecast
can still fall short of what happens: as a unit shrinks it also counts as less active,
which raises its own pressure. So the controller also measures ``actual()``, the cost of the
units that are off now, and once that meets the budget it stops: the factor is frozen and
the constraint presses only on the units already off, holding them at exactly zero (without
that, the optimiser's momentum would carry them back to small non-zero values) while no other
unit is pushed off. The forecast steers from above, so the budget may still be out of reach
late in training: at the ``deadline`` (a fraction of training) the controller calls
``enforce``, which zeroes the least important of the units still on until the budget is met,
and then holds them like the others. The steps left let the network recover from their loss
before the cut, and the cut itself removes exact zeros only (it changes no output).
"""
from __future__ import annotations

import math
from collections.abc import Callable

from jsp.errors import ConfigError


class BudgetController:
    """Args:
        budget: fraction of the dense cost to keep, in (0, 1).
        cost: step -> forecast fraction of the dense cost kept (see module).
        actual: () -> fraction of the dense cost kept by the units on now (None: not checked).
        total_steps: length of the training stage the controller runs in.
        every: check the cost every this many steps.
        ramp: fraction of training over which the target falls from 1 to ``budget``.
        gain, max_step: the factor's update (see module).
        deadline: fraction of training by which the budget must be met (None: never forced).
        enforce: () -> None, zeroes units until the budget is met (called once, at the deadline).
    """

    def __init__(self, budget: float, cost: Callable[[int], float], total_steps: int, every: int = 10,
                 ramp: float = 0.5, gain: float = 1.0, max_step: float = 1.25,
                 actual: Callable[[], float] | None = None, deadline: float | None = None,
                 enforce: Callable[[], None] | None = None):
        if not 0 < budget < 1:
            raise ConfigError(f"constraint.budget must be in (0, 1), got {budget}")
        if every < 1 or not 0 < ramp <= 1:
            raise ConfigError("constraint.budget_every must be >= 1 and the ramp in (0, 1]")
        check_deadline(deadline)
        #: the step at which ``enforce`` runs: before the last step, so the forced zeros are
        #: held (and the network trains on without them) for at least one step
        self.deadline_step = None if deadline is None or enforce is None else \
            min(int(deadline * total_steps), total_steps - 2)
        self.enforce = enforce
        self.budget, self.cost, self.actual, self.total_steps = budget, cost, actual, total_steps
        self.met, self.held = False, 0   # budget met; proximal steps since, holding the off units
        self.every, self.ramp, self.gain, self.max_step = every, ramp, gain, max_step
        self.factor, self.last_cost = 1.0, 1.0

    def target(self, step: int) -> float:
        progress = min(1.0, (step + 1) / max(1.0, self.ramp * self.total_steps))
        return 1 - (1 - self.budget) * progress

    def update(self, step: int) -> None:
        """Measure the forecast at a check step and move the factor; other steps do nothing.
        At the deadline step, a budget not yet met is met by ``enforce``."""
        if self.met:
            return
        if step == self.deadline_step:
            if self.actual is None or self.actual() > self.budget:
                self.enforce()
            self.met = True
            return
        if step % self.every:
            return
        if self.actual is not None and self.actual() <= self.budget:
            self.met = True
            return
        self.last_cost = self.cost(step)
        limit = math.log(self.max_step)
        error = self.gain * math.log(max(self.last_cost, 1e-9) / self.target(step))
        self.factor = min(max(self.factor * math.exp(max(-limit, min(limit, error))), 1e-6), 1e9)

    def state_dict(self) -> dict:
        return {"factor": self.factor, "last_cost": self.last_cost, "met": float(self.met), "held": float(self.held)}

    @property
    def exact(self) -> bool:
        """True once the off units have been held at exactly zero for a step: pruning them now
        changes no output."""
        return self.met and self.held > 0

    def load_state_dict(self, state: dict) -> None:
        self.factor = float(state.get("factor", self.factor))
        self.last_cost = float(state.get("last_cost", self.last_cost))
        self.met = bool(state.get("met", self.met))
        self.held = int(state.get("held", self.held))


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and not 0 < deadline <= 1:
        raise ConfigError(f"constraint.budget_deadline must be in (0, 1] or null, got {deadline}")
