"""AdaLoRA: LoRA in SVD form P·diag(E)·Q whose rank budget is pruned during training
(Zhang et al. 2023, arXiv:2303.10512). Memory is planned at the initial rank."""

from __future__ import annotations

from typing import Any

from ..specs import LinearInfo, ModelSpec
from .base import TARGETS_HELP, AdapterContext, Knob, Method, Saved, TensorGroup, peft_targets


class AdaLoraMethod(Method):
    name = "adalora"
    title = "AdaLoRA"
    summary = "LoRA whose rank is re-allocated across layers during training (starts at init_rank)."
    knobs = (
        Knob("init_rank", int, 12, "starting rank of every adapter (memory is planned at this rank)", 1, 1024),
        Knob("target_rank", int, 8, "average rank kept after pruning", 1, 1024),
        Knob("alpha", float, 32.0, "scale of the update", 0.0, 1e6),
        Knob("dropout", float, 0.0, "dropout on the adapter's input", 0.0, 0.99),
        Knob("total_step", int, 1000, "training steps (AdaLoRA schedules its pruning over them)", 1, 10**9),
        Knob("target_modules", str, "all-linear", TARGETS_HELP),
    )

    def trainable_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        """Per targeted linear: P (r x in), Q (out x r), E (r x 1), peft
        ``AdaLoraLayer.update_layer``."""
        r = knobs["init_rank"]
        groups = []
        for lin in self.adapted_linears(spec, knobs):
            groups += [
                TensorGroup(f"{lin.name}.lora_A", (r, lin.in_features)),
                TensorGroup(f"{lin.name}.lora_B", (lin.out_features, r)),
                TensorGroup(f"{lin.name}.lora_E", (r, 1)),
            ]
        return groups

    def extra_weight_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        """The rank counter ``ranknum`` (1 element, frozen) per layer."""
        return [TensorGroup(f"{lin.name}.ranknum", (1,), role="buffer") for lin in self.adapted_linears(spec, knobs)]

    def adapter_saved(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> list[Saved]:
        """peft ``adalora.SVDLinear.forward``: ``dropout(x) @ (A*E).T @ B.T``; the matmuls save
        their inputs: x (cast to fp32 when the model is not fp32) and the r-wide product."""
        a, r = ctx.adapter_bytes, knobs["init_rank"]
        n_in = linear.in_features
        if knobs["dropout"] > 0:
            first = [Saved(f"{linear.name}: dropout mask", n_in, f"{linear.name}:mask"),
                     Saved(f"{linear.name}: dropped-out input", a * n_in, f"{linear.name}:drop")]
        elif ctx.input_bytes != a:
            first = [Saved(f"{linear.name}: input cast to fp32", a * n_in, f"{linear.name}:cast")]
        else:
            first = [Saved(f"{linear.name}: input", a * n_in, ctx.input_key)]
        return first + [Saved(f"{linear.name}: x·(A*E)ᵀ (r wide)", a * r, f"{linear.name}:a_out")]

    def adapter_saved_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """``(A * E)ᵀ``-side products are parameters; what is saved is Bᵀ's fp32 transpose
        (out x r) and the ranknum scalar."""
        return 4 * knobs["init_rank"] * linear.out_features + 4

    def apply(self, model, spec: ModelSpec, knobs: dict[str, Any]):
        """peft's wrap, with the rank counters frozen: they are bookkeeping, not weights."""
        model = super().apply(model, spec, knobs)
        for name, param in model.named_parameters():
            if ".ranknum." in name:
                param.requires_grad_(False)
        return model

    def peft_config(self, spec: ModelSpec, knobs: dict[str, Any]):
        import peft

        return peft.AdaLoraConfig(
            init_r=knobs["init_rank"], target_r=knobs["target_rank"], lora_alpha=knobs["alpha"],
            lora_dropout=knobs["dropout"], total_step=knobs["total_step"],
            target_modules=peft_targets(knobs["target_modules"]), task_type="CAUSAL_LM",
        )


METHOD = AdaLoraMethod()
