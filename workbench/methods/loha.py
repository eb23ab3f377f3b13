"""LoHa: the update is a Hadamard product of two low-rank products,
(W1a·W1b) ⊙ (W2a·W2b) (Hyeon-Woo et al. 2022, FedPara, arXiv:2108.06098; LyCORIS)."""

from __future__ import annotations

from typing import Any

from ..specs import LinearInfo, ModelSpec
from .base import TARGETS_HELP, AdapterContext, Knob, Method, Saved, TensorGroup, peft_targets


class LohaMethod(Method):
    name = "loha"
    title = "LoHa"
    supports_quantization = False  # peft has no bitsandbytes LoHa layer
    summary = "Hadamard product of two low-rank updates: higher effective rank for the same parameters."
    knobs = (
        Knob("rank", int, 8, "rank of each of the two low-rank factors", 1, 1024),
        Knob("alpha", float, 16.0, "scale of the update is alpha / r", 0.0, 1e6),
        Knob("target_modules", str, "all-linear", TARGETS_HELP),
    )

    def trainable_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        """2·r·(in + out) per targeted linear: hada_w1_a/w2_a (out x r), hada_w1_b/w2_b (r x in)."""
        r = knobs["rank"]
        groups = []
        for lin in self.adapted_linears(spec, knobs):
            for w in ("w1", "w2"):
                groups.append(TensorGroup(f"{lin.name}.hada_{w}_a", (lin.out_features, r)))
                groups.append(TensorGroup(f"{lin.name}.hada_{w}_b", (r, lin.in_features)))
        return groups

    def adapter_saved(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> list[Saved]:
        """peft ``loha.Linear``: ``F.linear(x, ΔW)`` with the materialised delta; the matmul
        saves x (cast to the delta's fp32 when the model is not fp32)."""
        a = ctx.adapter_bytes
        if ctx.input_bytes != a:
            return [Saved(f"{linear.name}: input cast to fp32", a * linear.in_features, f"{linear.name}:cast")]
        return [Saved(f"{linear.name}: input", a * linear.in_features, ctx.input_key)]

    def adapter_saved_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """The matmul keeps the materialised ΔW (out x in, fp32); peft's ``HadaWeight`` autograd
        function keeps only the four factors (parameters), so nothing else is full size."""
        return 4 * linear.in_features * linear.out_features

    def adapter_backward_transient(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """Backward of ``F.linear(x, ΔW)`` gives the out x in gradient of ΔW; ``HadaWeight``
        turns it into the gradients of both low-rank products (out x in each): 3 fp32 matrices."""
        return 3 * 4 * linear.in_features * linear.out_features

    def peft_config(self, spec: ModelSpec, knobs: dict[str, Any]):
        import peft

        return peft.LoHaConfig(r=knobs["rank"], alpha=knobs["alpha"], target_modules=peft_targets(knobs["target_modules"]))


METHOD = LohaMethod()
