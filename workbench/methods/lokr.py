"""LoKr: the update is a Kronecker product W1 ⊗ W2 of two small factors, the larger one
optionally low-rank (Yeh et al. 2023, LyCORIS, arXiv:2309.14859)."""

from __future__ import annotations

from typing import Any

from ..specs import LinearInfo, ModelSpec
from .base import TARGETS_HELP, AdapterContext, Knob, Method, Saved, TensorGroup, peft_targets


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """peft ``lokr.layer.factorization``: split ``dimension`` into (m, n), m <= n, m·n = dimension."""
    from peft.tuners.lokr.layer import factorization as peft_factorization

    return peft_factorization(dimension, factor)


class LokrMethod(Method):
    name = "lokr"
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
        the model is not fp32)."""
        a = ctx.adapter_bytes
        if ctx.input_bytes != a:
            return [Saved(f"{linear.name}: input cast to fp32", a * linear.in_features, f"{linear.name}:cast")]
        return [Saved(f"{linear.name}: input", a * linear.in_features, ctx.input_key)]

    def adapter_saved_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """ΔW = W1 ⊗ W2 (out x in, fp32) is saved by the matmul each forward."""
        return 4 * linear.in_features * linear.out_features

    def adapter_backward_transient(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """The out x in gradient of ΔW and its reshaped copy for the Kronecker backward (fp32)."""
        return 2 * 4 * linear.in_features * linear.out_features

    def peft_config(self, spec: ModelSpec, knobs: dict[str, Any]):
        import peft

        return peft.LoKrConfig(
            r=knobs["rank"], alpha=knobs["alpha"], decompose_factor=knobs["decompose_factor"],
            target_modules=peft_targets(knobs["target_modules"]),
        )


METHOD = LokrMethod()
