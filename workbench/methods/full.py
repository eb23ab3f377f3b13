"""Full fine-tuning: every weight is trained. The reference point for memory: weights,
gradients and optimizer states for all parameters."""

from __future__ import annotations

from typing import Any

from ..specs import ModelSpec
from .base import Method, TensorGroup


class FullMethod(Method):
    name = "full"
    title = "Full fine-tuning"
    summary = "Train every weight: the best quality ceiling and the largest memory."
    uses_peft = False
    supports_quantization = False  # quantized weights cannot be trained
    autocast_exact = True

    def trains_base(self, spec: ModelSpec, knobs: dict[str, Any]) -> set[str]:
        return {p.name for p in spec.inventory.params}

    def trainable_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        names = self.trains_base(spec, knobs)
        return [TensorGroup(p.name, p.shape, role="base") for p in spec.inventory.params if p.name in names]

    def apply(self, model, spec: ModelSpec, knobs: dict[str, Any]):
        names = self.trains_base(spec, knobs)
        for name, param in model.named_parameters():
            param.requires_grad_(name in names)
        return model


METHOD = FullMethod()
