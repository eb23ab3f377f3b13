"""LoHa: the update is a Hadamard product of two low-rank products,
(W1a·W1b) ⊙ (W2a·W2b) (Hyeon-Woo et al. 2022, FedPara, arXiv:2108.06098; LyCORIS)."""

from __future__ import annotations

from typing import Any

from ..specs import LinearInfo, ModelSpec
from .base import (
    TARGETS_HELP, AdapterContext, Knob, Method, Saved, TensorGroup, autocast_input_saved, input_saved,
    materialised_delta_saved, peft_targets,
)


class LohaMethod(Method):
    name = "loha"
    output_in_input_dtype = True  # peft returns the input's dtype: fp32 under autocast
    autocast_exact = True  # measured under bf16 autocast on CPU; not on Phi-3's fused qkv_proj (autocast_approximation)
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
        saves x (cast to the delta's fp32 when the model is not fp32; under autocast, its own
        cast to the autocast dtype)."""
        if ctx.autocast_bytes and ctx.input_bytes != ctx.autocast_bytes:
            return autocast_input_saved(linear, ctx)
        if ctx.autocast_bytes:  # already in the autocast dtype (o_proj, down_proj): peft passes it as is
            return [Saved(f"{linear.name}: input", ctx.input_bytes * linear.in_features, ctx.input_key)]
        return input_saved(linear, ctx)

    def adapter_saved_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """The matmul keeps the materialised ΔW (out x in, fp32; under autocast its cast) when x
        needs a gradient; peft's ``HadaWeight`` autograd function keeps only the four factors
        (parameters) and the scale (a 4-byte scalar), so nothing else is full size."""
        return materialised_delta_saved(linear, ctx) + 4

    def adapter_backward_transient(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """Backward of ``F.linear(x, ΔW)`` gives the out x in gradient of ΔW; ``HadaWeight``
        turns it into the gradients of both low-rank products (out x in each): measured on one
        peft layer at its mul, 5 fp32 matrices in fp32, 4 where the input is 16-bit or under
        autocast (ΔW's gradient arrives in 16-bit and is cast), less the saved ΔW that the
        matmul's backward has just released."""
        n = 5 if ctx.input_bytes == 4 and not ctx.autocast_bytes else 4
        return n * 4 * linear.in_features * linear.out_features - materialised_delta_saved(linear, ctx)

    def peft_config(self, spec: ModelSpec, knobs: dict[str, Any]):
        import peft

        return peft.LoHaConfig(r=knobs["rank"], alpha=knobs["alpha"], target_modules=peft_targets(knobs["target_modules"]))


METHOD = LohaMethod()
