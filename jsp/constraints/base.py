"""The constraint interface: statistics from gradients, and a penalty added to the task loss.

The training loop calls, every step:
    task.backward()                    # gradients of the task loss only
    constraint.observe(model, step)    # update statistics from those gradients
    constraint.penalty(model).backward()
so statistics such as gradient activity never see the penalty's own gradients.
"""
from __future__ import annotations

import torch
from torch import nn


class Constraint:
    """Base class and the ``none`` option: no statistics, zero penalty."""

    #: scalar terms of the last penalty, for logging (e.g. {"sparse": 0.1}).
    terms: dict[str, float]

    def __init__(self):
        self.terms = {}

    def attach(self, model: nn.Module) -> None:
        """Find the units of ``model``; called once before training and after any surgery."""

    def observe(self, model: nn.Module, step: int) -> None:
        """Update statistics after the task-loss backward pass."""

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """Scalar tensor added to the loss (zero, not requiring grad, for ``none``)."""
        return torch.zeros((), device=next(model.parameters()).device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def settings(self) -> dict:
        """Hyper-parameters, recorded in metrics.json and the TensorBoard hparams."""
        return {}


class NoConstraint(Constraint):
    """Plain training."""
