"""AdaLoRA: LoRA in SVD form P·diag(E)·Q whose rank budget is pruned during training
(Zhang et al. 2023, arXiv:2303.10512). Memory is planned at the initial rank."""

from __future__ import annotations

from typing import Any

from ..specs import LinearInfo, ModelSpec
from .base import (
    TARGETS_HELP, AdapterContext, Knob, Method, Saved, TensorGroup, autocast_input_saved, dropout_mask_saved,
    dropout_saved, input_saved, peft_targets,
)


class AdaLoraMethod(Method):
    name = "adalora"
    autocast_exact = True  # measured under bf16 autocast on CPU (tests/test_precision.py)
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
        their inputs: x (cast to fp32 when the model is not fp32) and the r-wide product. Under
        autocast the matmuls run in the autocast dtype and keep their own casts of both."""
        r, dropout = knobs["init_rank"], knobs["dropout"] > 0
        if ctx.autocast_bytes:
            c = ctx.autocast_bytes
            first = (dropout_mask_saved(linear, ctx) if dropout else []) + autocast_input_saved(linear, ctx)
        else:
            c = ctx.adapter_bytes
            first = dropout_saved(linear, ctx) if dropout else input_saved(linear, ctx)
        return first + [Saved(f"{linear.name}: x·(A*E)ᵀ (r wide, {c} B)", c * r, f"{linear.name}:a_out")]

    def adapter_saved_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """The ranknum scalar (+ 1e-5), and -- when x needs a gradient -- the fp32 product
        ``A * E`` (r x in) that the first matmul multiplies x's gradient with (Bᵀ is a view of
        the parameter). Under autocast the matmuls keep their own casts: Bᵀ's (r x out) and,
        when x needs a gradient, (A * E)ᵀ's."""
        r, n_in = knobs["init_rank"], linear.in_features
        if ctx.autocast_bytes:
            return ctx.autocast_bytes * r * (linear.out_features + (n_in if ctx.input_requires_grad else 0)) + 4
        return (4 * r * n_in if ctx.input_requires_grad else 0) + 4

    def loss_saved(self, spec: ModelSpec, knobs: dict[str, Any], settings) -> tuple[int, str]:
        """peft ``AdaLoraModel.forward`` adds ``orth_reg_weight x sum ||P Pᵀ - I||_F`` over every
        lora_A (P Pᵀ) and lora_B (Qᵀ Q) to the loss: each Frobenius norm keeps its r x r input
        and its scalar output. Under autocast the product runs in the autocast dtype: the cast
        of the parameter (cached, a leaf) and of its transpose (a view: cast again) are kept,
        and the norm's input and output are in that dtype too."""
        r, c = knobs["init_rank"], settings.compute_bytes if settings.autocast != "none" else 4
        lins = self.adapted_linears(spec, knobs)
        casts = sum(2 * c * r * (lin.in_features + lin.out_features) for lin in lins) if c != 4 else 0
        norms = 2 * len(lins) * c * (r * r + 1)
        return casts + norms, (f"AdaLoRA's orthogonal regularizer: ||P·Pᵀ - I|| and ||Qᵀ·Q - I|| per layer, "
                               f"r x r + 1 x {c} B each" + (" + two casts of P and of Q" if casts else ""))

    def early_gradient(self, group: TensorGroup) -> bool:
        """The regularizer's term is back-propagated before the model's loss (autograd runs the
        newest nodes first): P's and Q's gradients exist from the start of backward."""
        return group.label.endswith((".lora_A", ".lora_B"))

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
