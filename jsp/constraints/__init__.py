"""Training-time constraints (penalties plus the statistics they need)."""
from jsp.constraints.base import Constraint, NoConstraint

__all__ = ["Constraint", "NoConstraint"]
