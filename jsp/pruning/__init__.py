"""Pruning schedules (the ``schedule`` config group)."""
from jsp.pruning.schedule import NoPruning

__all__ = ["NoPruning"]
