"""LoRA: a low-rank update B·A beside each targeted linear layer (Hu et al. 2021,
arXiv:2106.09685). The relatives (rsLoRA, DoRA, QLoRA, 8-bit LoRA) subclass this one."""

from __future__ import annotations

from typing import Any

from ..specs import LinearInfo, ModelSpec
from .base import (
    TARGETS_HELP, AdapterContext, Knob, Method, Saved, TensorGroup, autocast_input_saved, dropout_mask_saved,
    dropout_saved, input_saved, peft_targets,
)

LORA_KNOBS = (
    Knob("rank", int, 8, "rank r of the update B·A; more rank = more trainable parameters", 1, 4096),
    Knob("alpha", float, 16.0, "scale of the update is alpha / r (alpha / sqrt(r) for rsLoRA)", 0.0, 1e6),
    Knob("dropout", float, 0.05, "dropout on the adapter's input during training", 0.0, 0.99),
    Knob("target_modules", str, "all-linear", TARGETS_HELP),
)


class LoraMethod(Method):
    name = "lora"
    title = "LoRA"
    summary = "Freeze the model; train a rank-r update B·A beside each targeted linear layer."
    knobs = LORA_KNOBS
    use_dora = False
    use_rslora = False
    autocast_exact = True

    def trainable_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        """r·(in + out) per targeted linear (A is r×in, B is out×r); DoRA adds a magnitude
        vector of ``out`` elements (Liu et al. 2024, arXiv:2402.09353)."""
        r = knobs["rank"]
        groups = []
        for lin in self.adapted_linears(spec, knobs):
            groups.append(TensorGroup(f"{lin.name}.lora_A", (r, lin.in_features)))
            groups.append(TensorGroup(f"{lin.name}.lora_B", (lin.out_features, r)))
            if self.use_dora:
                groups.append(TensorGroup(f"{lin.name}.lora_magnitude_vector", (lin.out_features,)))
        return groups

    def adapter_saved(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> list[Saved]:
        """peft ``lora.Linear.forward``: ``x`` is cast to the adapter dtype (a copy when it
        differs), passed through dropout (autograd saves the mask, one byte per element, and
        lora_A saves the dropped-out copy), lora_A saves its input and lora_B saves the r-wide
        output of lora_A. Without dropout and without a cast, lora_A saves ``x`` itself, which
        the q/k/v adapters of one block share."""
        a = ctx.adapter_bytes
        if ctx.autocast_bytes:
            return self._autocast_saved(linear, knobs, ctx)
        saved = dropout_saved(linear, ctx) if knobs["dropout"] > 0 else input_saved(linear, ctx)
        saved.append(Saved(f"{linear.name}: lora_A output ({a} B x r)", a * knobs["rank"], f"{linear.name}:a_out"))
        return saved

    def _autocast_saved(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> list[Saved]:
        """Under autocast peft still casts ``x`` to the adapters' fp32 and applies dropout
        there (the mask, when the input requires grad, is fp32 on CPU and bool on CUDA), but
        lora_A then runs in the autocast dtype: it keeps its own c-byte copy of its input (never
        shared: a cast of a non-leaf tensor is not cached), and lora_B keeps the c-byte
        r-wide output of lora_A."""
        c = ctx.autocast_bytes
        return (autocast_input_saved(linear, ctx) + (dropout_mask_saved(linear, ctx) if knobs["dropout"] > 0 else [])
                + [Saved(f"{linear.name}: lora_A output ({c} B x r)", c * knobs["rank"], f"{linear.name}:a_out")])

    def adapter_transient_per_token(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> float:
        """peft's fp32 copy of a 16-bit ``x`` when nothing saves it (dropout saves only its mask
        and lora_A the dropped-out copy, or under autocast its own bf16 cast), and under autocast
        the dropped-out fp32 copy too: alive while the adapter runs."""
        a, n_in = ctx.adapter_bytes, linear.in_features
        copy = a * n_in if ctx.input_bytes != a and (ctx.autocast_bytes or knobs["dropout"] > 0) else 0
        dropped = a * n_in if ctx.autocast_bytes and knobs["dropout"] > 0 else 0
        return copy + dropped

    def adapter_saved_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """Under autocast: the cast copies of lora_B's weight (kept to back-propagate into
        lora_A's output) and, when the layer's input requires grad, of lora_A's."""
        if not ctx.autocast_bytes:
            return 0
        r = knobs["rank"]
        return ctx.autocast_bytes * r * (linear.out_features + (linear.in_features if ctx.input_requires_grad else 0))

    def peft_config(self, spec: ModelSpec, knobs: dict[str, Any]):
        import peft

        return peft.LoraConfig(
            r=knobs["rank"],
            lora_alpha=knobs["alpha"],
            lora_dropout=knobs["dropout"],
            target_modules=peft_targets(knobs["target_modules"]),
            use_dora=self.use_dora,
            use_rslora=self.use_rslora,
            task_type="CAUSAL_LM",
        )


METHOD = LoraMethod()
