"""VeRA: one pair of frozen random matrices shared by all layers, and per layer only two
trained scaling vectors (Kopiczko et al. 2024, arXiv:2310.11454)."""

from __future__ import annotations

from typing import Any

from ..specs import LinearInfo, ModelSpec
from .base import (
    TARGETS_HELP, AdapterContext, Knob, Method, Saved, TensorGroup, dropout_mask_saved, peft_targets,
)


class VeraMethod(Method):
    name = "vera"
    output_in_input_dtype = True  # peft returns the input's dtype: fp32 under autocast
    autocast_exact = True  # measured under bf16 autocast on CPU; not on Phi-3's fused qkv_proj (autocast_approximation)
    title = "VeRA"
    summary = "Shared frozen random projections, two trained vectors per layer: tiny adapters."
    knobs = (
        Knob("rank", int, 256, "rank of the shared random projections", 1, 8192),
        Knob("dropout", float, 0.0, "dropout on the adapter's input", 0.0, 0.99),
        Knob("target_modules", str, "q_proj,v_proj", TARGETS_HELP),
    )

    def trainable_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        """``lambda_b`` (out) and ``lambda_d`` (r) per targeted layer."""
        groups = []
        for lin in self.adapted_linears(spec, knobs):
            groups.append(TensorGroup(f"{lin.name}.vera_lambda_b", (lin.out_features,)))
            groups.append(TensorGroup(f"{lin.name}.vera_lambda_d", (knobs["rank"],)))
        return groups

    def extra_weight_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        """The shared frozen projections: A is r x max(in), B is max(out) x r (fp32)."""
        lins = self.adapted_linears(spec, knobs)
        r = knobs["rank"]
        return [
            TensorGroup("vera_A (shared, frozen)", (r, max(lin.in_features for lin in lins)), role="buffer"),
            TensorGroup("vera_B (shared, frozen)", (max(lin.out_features for lin in lins), r), role="buffer"),
        ]

    def adapter_saved(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> list[Saved]:
        """peft ``vera.Linear.forward``: ``lambda_b * linear(lambda_d * linear(x, A), B)``;
        A and B are frozen, so x itself is never needed: only the r-wide product that lambda_d
        scales and the out-wide product that lambda_b scales are kept (fp32; under autocast
        both come out of a linear in the autocast dtype)."""
        a, out, r = ctx.adapter_bytes, linear.out_features, knobs["rank"]
        c = ctx.autocast_bytes or a
        saved = [
            Saved(f"{linear.name}: x·Aᵀ ({c} B x r) for lambda_d", c * r, f"{linear.name}:xa"),
            Saved(f"{linear.name}: λd·x·Aᵀ·Bᵀ ({c} B x out) for lambda_b", c * out, f"{linear.name}:b_out"),
        ]
        return saved + (dropout_mask_saved(linear, ctx) if knobs["dropout"] > 0 else [])

    def adapter_saved_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """Under autocast the two linears keep their own casts of the frozen projections (A and
        B are buffers, not leaves that require grad, so nothing is cached): B's slice (r x out)
        for lambda_d's gradient and, when x needs a gradient, A's (r x in). In fp32 they are
        views of the shared buffers."""
        if not ctx.autocast_bytes:
            return 0
        r = knobs["rank"]
        return ctx.autocast_bytes * r * (linear.out_features + (linear.in_features if ctx.input_requires_grad else 0))

    def peft_config(self, spec: ModelSpec, knobs: dict[str, Any]):
        import peft

        return peft.VeraConfig(
            r=knobs["rank"], vera_dropout=knobs["dropout"], target_modules=peft_targets(knobs["target_modules"]),
            task_type="CAUSAL_LM",
        )


METHOD = VeraMethod()
