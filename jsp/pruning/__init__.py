"""Structured pruning: importance, channel groups, the Pruner and its surgery, schedules."""
from jsp.pruning.base import PruneSettings, Pruner, cost_if_pruned, prune, shrink_uniformly, zero_to_target
from jsp.pruning.importance import IMPORTANCES, layer_scores, taylor_statistic
from jsp.pruning.pruner import ChannelGroups, Target, layer_widths
from jsp.pruning.schedule import Schedule, Stage
from jsp.pruning.surgery import remove_channels

__all__ = ["IMPORTANCES", "layer_scores", "taylor_statistic", "ChannelGroups", "Target", "layer_widths",
           "Schedule", "Stage", "Pruner", "PruneSettings", "cost_if_pruned", "prune", "remove_channels",
           "shrink_uniformly", "zero_to_target"]
