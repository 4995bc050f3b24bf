"""Recovery after pruning (method.md s.4, version 2.1): the teacher a stage distils from, and
the training compute a stage costs (what the scratch control at equal compute is sized by).

Compute is counted as Liu et al. (2019) and the field do: a training step costs three forward
passes of the network (one forward, a backward of about twice as much) at the patch size,
times the batch, plus one forward of the teacher when distilling. MACs come from
``count_macs`` (torch's FLOP counter: convolutions and matmuls).
"""
from __future__ import annotations

import math

from torch import nn

from jsp.metrics import count_macs


def frozen(model: nn.Module) -> nn.Module:
    """``model`` as a teacher: eval mode (BatchNorm uses its running statistics), no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def step_macs(model: nn.Module, in_channels: int, patch: int, batch: int, teacher: nn.Module | None = None) -> int:
    """MACs of one training step: 3 forwards of ``model`` on (batch, in_channels, patch, patch),
    plus one of ``teacher`` (None: no distillation)."""
    macs = 3 * count_macs(model, in_channels, (patch, patch))
    if teacher is not None:
        macs += count_macs(teacher, in_channels, (patch, patch))
    return macs * batch


def equal_compute_steps(total_steps: int, finetune_steps: int, dense_step: int, pruned_step: int) -> int:
    """Steps of the pruned network that cost what the compressed run did (Scratch-B): its
    ``total_steps - finetune_steps`` steps at the dense width and ``finetune_steps`` at the
    pruned width; ``dense_step``/``pruned_step``: MACs of one step of each (``step_macs``)."""
    budget = max(0, total_steps - finetune_steps) * dense_step + finetune_steps * pruned_step
    return max(1, math.ceil(budget / pruned_step))
