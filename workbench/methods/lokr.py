"""LoKr: the update is a Kronecker product W1 ⊗ W2 of two small factors, the larger one
optionally low-rank (Yeh et al. 2023, LyCORIS, arXiv:2309.14859)."""

from __future__ import annotations

from typing import Any

from ..specs import LinearInfo, ModelSpec
from .base import (
    TARGETS_HELP, AdapterContext, Knob, Method, Saved, TensorGroup, autocast_input_saved, input_saved,
    materialised_delta_saved, peft_targets,
)


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """peft ``lokr.layer.factorization``: split ``dimension`` into (m, n), m <= n, m·n = dimension."""
    from peft.tuners.lokr.layer import factorization as peft_factorization

    return peft_factorization(dimension, factor)


class LokrMethod(Method):
    name = "lokr"
    output_in_input_dtype = True  # peft returns the input's dtype: fp32 under autocast
    autocast_exact = True  # measured under bf16 autocast on CPU; not on Phi-3's fused qkv_proj (autocast_approximation)
    title = "LoKr"
    supports_quantization = False  # peft has no bitsandbytes LoKr layer
    summary = "Kronecker product of two small factors: very few parameters for a full-rank update."
    knobs = (
        Knob("rank", int, 8, "rank used when a Kronecker factor is too large to train in full", 1, 1024),
        Knob("alpha", float, 16.0, "scale of the update is alpha / r", 0.0, 1e6),
        Knob("decompose_factor", int, -1, "split of each dimension into two factors (-1 = most square)", -1, 1 << 20),
        Knob("target_modules", str, "all-linear", TARGETS_HELP),
    )

    def _factors(self, lin: LinearInfo, knobs: dict[str, Any]) -> list[tuple[str, tuple[int, int]]]:
        """peft ``LoKrLayer.update_layer``: out = l·k, in = m·n; W1 is (l x m) in full; W2 is
        (k x n) in full unless r < max(k, n)/2, then W2a (k x r) · W2b (r x n)."""
        r = knobs["rank"]
        in_m, in_n = factorization(lin.in_features, knobs["decompose_factor"])
        out_l, out_k = factorization(lin.out_features, knobs["decompose_factor"])
        parts = [("lokr_w1", (out_l, in_m))]
        if r < max(out_k, in_n) / 2:
            parts += [("lokr_w2_a", (out_k, r)), ("lokr_w2_b", (r, in_n))]
        else:
            parts.append(("lokr_w2", (out_k, in_n)))
        return parts

    def trainable_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        return [
            TensorGroup(f"{lin.name}.{part}", shape)
            for lin in self.adapted_linears(spec, knobs)
            for part, shape in self._factors(lin, knobs)
        ]

    def adapter_saved(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> list[Saved]:
        """``F.linear(x, ΔW)`` with the materialised Kronecker delta saves x (fp32 cast when
        the model is not fp32; under autocast, its own cast to the autocast dtype)."""
        if ctx.autocast_bytes:  # peft casts x to the factors' fp32 first: a copy of its own every time
            return autocast_input_saved(linear, ctx)
        return input_saved(linear, ctx)

    def adapter_saved_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """ΔW = W1 ⊗ W2 (out x in, fp32) is saved by the matmul when x needs a gradient; the
        Kronecker product keeps W2 (k x n) for W1's gradient: the product W2a·W2b where W2 is
        low-rank (a parameter otherwise). Under autocast these are in the autocast dtype, and
        the W2a·W2b matmul keeps its casts of both factors."""
        c = ctx.autocast_bytes or 4
        delta = materialised_delta_saved(linear, ctx)
        shapes = dict(self._factors(linear, knobs))
        if "lokr_w2_a" not in shapes:
            return delta
        (k, r), (_, n) = shapes["lokr_w2_a"], shapes["lokr_w2_b"]
        return delta + c * k * n + (c * r * (k + n) if ctx.autocast_bytes else 0)

    def adapter_backward_transient(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """The out x in gradient of ΔW, its scaled copy and the Kronecker backward's product
        with the other factor (fp32, measured at aten.sum on one peft layer: 3.0 x 4·in·out),
        less the saved ΔW that the matmul's backward has just released."""
        return 3 * 4 * linear.in_features * linear.out_features - materialised_delta_saved(linear, ctx)

    def peft_config(self, spec: ModelSpec, knobs: dict[str, Any]):
        import peft

        return peft.LoKrConfig(
            r=knobs["rank"], alpha=knobs["alpha"], decompose_factor=knobs["decompose_factor"],
            target_modules=peft_targets(knobs["target_modules"]),
        )


METHOD = LokrMethod()
