"""Structured pruning: importance, channel groups and surgery, schedules."""
from jsp.pruning.importance import IMPORTANCES, layer_scores, taylor_statistic
from jsp.pruning.pruner import ChannelGroups, Target, layer_widths
from jsp.pruning.schedule import Schedule, Stage
from jsp.pruning.surgery import choose_channels, cost_if_pruned, prune, remove_channels, zero_to_target

__all__ = ["IMPORTANCES", "layer_scores", "taylor_statistic", "ChannelGroups", "Target", "layer_widths",
           "Schedule", "Stage", "choose_channels", "cost_if_pruned", "prune", "remove_channels",
           "zero_to_target"]
