"""Structured pruning: importance, channel groups and surgery, schedules."""
from jsp.pruning.importance import IMPORTANCES, layer_scores
from jsp.pruning.pruner import ChannelGroups, Target, apply, layer_widths, plan
from jsp.pruning.schedule import Schedule

__all__ = ["IMPORTANCES", "layer_scores", "ChannelGroups", "Target", "apply", "layer_widths", "plan", "Schedule"]
