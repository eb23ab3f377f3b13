"""DoRA: weight-decomposed LoRA, a trained magnitude per output channel times the LoRA-
updated direction (Liu et al. 2024, arXiv:2402.09353). peft's ``use_dora=True``."""

from __future__ import annotations

from typing import Any

from ..specs import LinearInfo
from .base import AdapterContext, Saved
from .lora import LoraMethod


class DoraMethod(LoraMethod):
    autocast_exact = True  # measured under bf16 autocast on CPU (tests/test_precision.py)
    name = "dora"
    title = "DoRA"
    summary = "LoRA plus a trained magnitude per output channel; closer to full fine-tuning, more activations."
    use_dora = True

    def adapter_saved(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> list[Saved]:
        """LoRA's tensors plus, from peft ``DoraLinearLayer.forward``: the base output
        ``F.linear(x, W)`` (fp32, out wide) that is scaled by the magnitude, and the LoRA
        branch output (fp32, out wide) that is multiplied by the magnitude/norm ratio. Under
        autocast both come out of a linear in the autocast dtype."""
        a = ctx.autocast_bytes or ctx.adapter_bytes
        out = linear.out_features
        return super().adapter_saved(linear, knobs, ctx) + [
            Saved(f"{linear.name}: DoRA base output (4 B x out)", a * out, f"{linear.name}:dora_base"),
            Saved(f"{linear.name}: DoRA lora output (4 B x out)", a * out, f"{linear.name}:dora_lora"),
        ]

    def adapter_transient_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """The detached weight-norm side graph: identity (in x in), its LoRA image (in x r),
        the fp32 weight and the updated weight (out x in each)."""
        n_in, out = linear.in_features, linear.out_features
        return 4 * (n_in * n_in + n_in * knobs["rank"] + 2 * n_in * out)

    def adapter_backward_transient(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """Nothing weight-sized: the weight norm is detached, so its path gets no gradient
        (measured on one peft layer: 0.05 x 4·in·out in fp32 and bf16; under autocast the
        base weight's bf16 cast, c·in·out, which the matmul's backward has just released)."""
        return 0

    def adapter_saved_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """peft ``DoraLinearLayer.forward`` forms the LoRA weight as ``lora_B(lora_A(I))`` and
        the weight norm from it *detached*, so that side graph (an in x in identity, a fp32
        copy of the weight) is freed within the forward. What stays: the weight norm (out)
        and the (1 x out) magnitude/norm scale, fp32 (twice, as ``scale`` and ``scale - 1``,
        when x needs a gradient: only then does the base output's product keep ``scale - 1``),
        and -- for a 16-bit base -- the fp32 copy of the base weight (out x in) that the DoRA
        branch multiplies x with, kept when x needs a gradient. Under autocast that copy is the
        linear's own cast of the base weight (autocast caches only leaves that require grad, so
        it is not the base layer's), made only where peft runs the base weight again (dropout
        on: the base output cannot be reused), beside LoRA's cast copies of lora_A and lora_B."""
        n_in, out = linear.in_features, linear.out_features
        norms = 4 * (3 if ctx.input_requires_grad else 2) * out
        if ctx.autocast_bytes:
            again = knobs["dropout"] > 0 and ctx.input_requires_grad
            return (norms + (ctx.autocast_bytes * n_in * out if again else 0)
                    + super().adapter_saved_constant(linear, knobs, ctx))
        copied = ctx.input_bytes != 4 and ctx.input_requires_grad  # only x's gradient needs it
        weight_copy = 4 * n_in * out if copied else 0
        return norms + weight_copy


METHOD = DoraMethod()
