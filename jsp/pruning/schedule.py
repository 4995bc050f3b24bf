"""Pruning schedules: which prune -> fine-tune rounds follow training.

A schedule yields one target per round; the pipeline prunes to it, fine-tunes and evaluates.
"""
from __future__ import annotations


class NoPruning:
    """``schedule=none``: the dense network trained by the train stage is the result."""

    finetune_steps = 0

    def rounds(self) -> list:
        return []

    def settings(self) -> dict:
        return {}
