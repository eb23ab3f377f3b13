"""OFT: multiply each targeted weight by a learned block-diagonal orthogonal matrix
(Qiu et al. 2023, arXiv:2306.07280); peft parametrises each block by its skew-symmetric
upper triangle (Cayley transform)."""

from __future__ import annotations

from typing import Any

from ..specs import LinearInfo, ModelSpec
from .base import (
    TARGETS_HELP, AdapterContext, Knob, Method, Saved, TensorGroup, autocast_input_saved, input_saved, peft_targets,
)


def block_size_for(in_features: int, wanted: int) -> int:
    """peft ``OFTLayer.adjust_oft_parameters``: the divisor of ``in_features`` nearest to
    ``wanted`` (ties go to the smaller one)."""
    if in_features % wanted == 0 and wanted <= in_features:
        return wanted
    if wanted >= in_features:
        return in_features
    higher = wanted
    while higher <= in_features and in_features % higher != 0:
        higher += 1
    lower = wanted
    while lower > 1 and in_features % lower != 0:
        lower -= 1
    return lower if (wanted - lower) <= (higher - wanted) else higher


class OftMethod(Method):
    name = "oft"
    output_in_input_dtype = True  # peft returns the input's dtype: fp32 under autocast
    title = "OFT"
    summary = "Rotate each targeted weight with a learned block-diagonal orthogonal matrix."
    autocast_exact = True  # measured under bf16 autocast on CPU; not on Phi-3's fused qkv_proj (autocast_approximation)
    rotates_input = True
    knobs = (
        Knob("block_size", int, 32, "size of each orthogonal block (adjusted to divide the layer width)", 2, 4096),
        Knob("target_modules", str, "all-linear", TARGETS_HELP),
    )

    def trainable_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        """in/b blocks per layer, each b·(b-1)/2 numbers (the strict upper triangle)."""
        groups = []
        for lin in self.adapted_linears(spec, knobs):
            b = block_size_for(lin.in_features, knobs["block_size"])
            groups.append(TensorGroup(f"{lin.name}.oft_R", (lin.in_features // b, b * (b - 1) // 2)))
        return groups

    def extra_weight_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        """Two int64 index buffers (rows, cols of the upper triangle) per layer, b·(b-1)/2
        elements each (peft ``OFTRotationModule``)."""
        groups = []
        for lin in self.adapted_linears(spec, knobs):
            b = block_size_for(lin.in_features, knobs["block_size"])
            groups.append(TensorGroup(f"{lin.name}.oft_R.rows+cols", (b * (b - 1) // 2,), count=2, role="buffer", element_bytes=8))
        return groups

    def adapter_saved(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> list[Saved]:
        """peft ``oft.Linear.forward`` rotates the input, x·Rᵀ block by block, before the
        frozen layer: the rotation saves x (fp32 cast when the model is not fp32); under
        autocast the block matmul keeps its own cast of x in the autocast dtype."""
        return autocast_input_saved(linear, ctx) if ctx.autocast_bytes else input_saved(linear, ctx)

    def adapter_saved_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """The Cayley transform R = (I + Q)(I - Q)⁻¹ keeps four (blocks x b x b) fp32
        matrices (skew Q, I - Q, its inverse, R): 16·in·b bytes. Under autocast six of them are
        in the autocast dtype, and the rotation keeps its cast of R when x needs a gradient:
        (6 or 7)·c·in·b."""
        blocks = linear.in_features * block_size_for(linear.in_features, knobs["block_size"])
        if ctx.autocast_bytes:
            return (7 if ctx.input_requires_grad else 6) * ctx.autocast_bytes * blocks
        return 16 * blocks

    def peft_config(self, spec: ModelSpec, knobs: dict[str, Any]):
        import peft

        return peft.OFTConfig(
            r=0, oft_block_size=knobs["block_size"], target_modules=peft_targets(knobs["target_modules"])
        )


METHOD = OftMethod()
