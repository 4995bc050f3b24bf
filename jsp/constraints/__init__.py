"""Training-time constraints (penalties plus the statistics they need)."""
from jsp.constraints.base import Constraint
from jsp.constraints.baselines import L1, GroupLasso, Slimming
from jsp.constraints.coupled import CoupledGroupLasso
from jsp.constraints.composite import JSPConstraint
from jsp.constraints.units import UnitLayer, find_units, off_fractions

__all__ = ["Constraint", "CoupledGroupLasso", "JSPConstraint", "L1", "GroupLasso", "Slimming",
           "UnitLayer", "find_units", "off_fractions"]
