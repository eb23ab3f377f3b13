"""IA3: learned vectors that rescale keys, values and the feed-forward input (Liu et al.
2022, arXiv:2205.05638). Tiny: one number per channel of each targeted layer."""

from __future__ import annotations

from typing import Any

from ..specs import LinearInfo, ModelSpec
from .base import AdapterContext, Knob, Method, Saved, TensorGroup, input_saved, peft_targets


class Ia3Method(Method):
    name = "ia3"
    title = "IA3"
    summary = "Train one scaling vector per targeted layer; the fewest trainable parameters."
    autocast_exact = True
    knobs = (
        Knob("target_modules", str, "k_proj,v_proj,down_proj", "layers whose activations are rescaled"),
        Knob("feedforward_modules", str, "down_proj", "of those, the ones scaled on their input side"),
    )

    def _is_ff(self, linear: LinearInfo, knobs: dict[str, Any]) -> bool:
        return linear.short_name in {t.strip() for t in knobs["feedforward_modules"].split(",")}

    def trainable_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        """One vector per layer: ``in`` elements for feed-forward layers (input scaled),
        ``out`` elements otherwise (output scaled) -- peft ``IA3Layer.update_layer``."""
        return [
            TensorGroup(f"{lin.name}.ia3_l", (1, lin.in_features) if self._is_ff(lin, knobs) else (lin.out_features, 1))
            for lin in self.adapted_linears(spec, knobs)
        ]

    def adapter_saved(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> list[Saved]:
        """The scaled tensor is saved for the vector's gradient: the input (feed-forward) or
        the base output, in the compute dtype. Feed-forward inputs are multiplied by the fp32
        vector, so a 16-bit input is kept as an fp32 copy. Under autocast the base output is in
        the autocast dtype whatever the input's (the product with the fp32 vector is fp32)."""
        if self._is_ff(linear, knobs):
            return input_saved(linear, ctx)
        out = ctx.autocast_bytes or ctx.input_bytes
        return [Saved(f"{linear.name}: output scaled by ia3 ({out} B x out)", out * linear.out_features,
                      f"{linear.name}:out")]

    def adapter_saved_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """The flattened fp32 vector is saved once per forward."""
        return 4 * (linear.in_features if self._is_ff(linear, knobs) else linear.out_features)

    def peft_config(self, spec: ModelSpec, knobs: dict[str, Any]):
        import peft

        targets = peft_targets(knobs["target_modules"])
        ff = [t.strip() for t in knobs["feedforward_modules"].split(",") if t.strip()]
        return peft.IA3Config(target_modules=targets, feedforward_modules=ff, task_type="CAUSAL_LM")


METHOD = Ia3Method()
