"""BitFit: train only the bias terms (Ben Zaken et al. 2022, arXiv:2106.10199). Llama-style
models have no biases, so by default the normalisation gains -- the other per-channel
parameters -- are trained too (knob ``norms``)."""

from __future__ import annotations

from typing import Any

from ..errors import MethodError
from ..specs import ModelSpec
from .base import Knob
from .full import FullMethod


class BitfitMethod(FullMethod):
    name = "bitfit"
    title = "BitFit (biases)"
    summary = "Train only bias vectors (and normalisation gains): almost no extra memory."
    knobs = (Knob("norms", bool, True, "also train the normalisation gains (needed for bias-free models)"),)

    def trains_base(self, spec: ModelSpec, knobs: dict[str, Any]) -> set[str]:
        names = {p.name for p in spec.inventory.params if p.name.endswith(".bias")}
        if knobs["norms"]:
            names |= {p.name for p in spec.inventory.params if "norm" in p.name.lower() and len(p.shape) == 1}
        if not names:
            raise MethodError(f"method 'bitfit': {spec.name} has no bias terms; set --norms true")
        return names


METHOD = BitfitMethod()
