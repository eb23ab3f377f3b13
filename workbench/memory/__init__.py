"""The memory planner: pure functions, one per component, each citing its formula."""

from .planner import COMPONENTS, Plan, plan
from .settings import TrainingSettings

__all__ = ["COMPONENTS", "Plan", "TrainingSettings", "plan"]
