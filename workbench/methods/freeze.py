"""Freeze tuning: train only the last N decoder blocks, keep the rest frozen (the
"freeze" method of LLaMA-Factory; Lee et al. 2019, arXiv:1911.03090, on tuning top layers)."""

from __future__ import annotations

from typing import Any

from ..errors import MethodError
from ..specs import ModelSpec
from .base import Knob
from .full import FullMethod


class FreezeMethod(FullMethod):
    name = "freeze"
    title = "Freeze (last N blocks)"
    summary = "Train only the last N decoder blocks; gradients stop before the frozen ones."
    knobs = (Knob("unfreeze_layers", int, 2, "how many of the last decoder blocks are trained", 1, 1024),)

    def trains_base(self, spec: ModelSpec, knobs: dict[str, Any]) -> set[str]:
        n = knobs["unfreeze_layers"]
        if n > spec.num_layers:
            raise MethodError(f"method 'freeze': unfreeze_layers={n} but {spec.name} has {spec.num_layers} blocks")
        prefix = spec.inventory.block_prefix
        trained = {f"{prefix}.{i}." for i in range(spec.num_layers - n, spec.num_layers)}
        return {p.name for p in spec.inventory.params if any(p.name.startswith(t) for t in trained)}


METHOD = FreezeMethod()
