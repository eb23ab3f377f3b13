"""Fine-tuning methods: one module each, listed once in :mod:`.registry`."""

from .base import Knob, Method, TensorGroup
from .registry import METHODS, get_method

__all__ = ["METHODS", "Knob", "Method", "TensorGroup", "get_method"]
