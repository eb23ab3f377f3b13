"""Prefix tuning: learn key/value vectors for a few virtual positions in every attention
layer (Li & Liang 2021, arXiv:2101.00190). peft passes them as a key/value cache."""

from __future__ import annotations

from typing import Any

from ..specs import ModelSpec
from .base import Knob, Method, TensorGroup


class PrefixMethod(Method):
    name = "prefix"
    title = "Prefix tuning"
    summary = "Learn key/value vectors for virtual positions in every attention layer."
    # transformers drops the key/value cache under gradient checkpointing, and with it the prefix
    supports_gradient_checkpointing = False
    autocast_exact = True  # measured under bf16 autocast on CPU (tests/test_precision.py)
    knobs = (Knob("num_virtual_tokens", int, 20, "virtual key/value positions per layer", 1, 2048),)

    def trainable_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        """num_virtual_tokens x layers x 2 (key, value) x kv_heads x head_dim, one embedding
        (peft ``PrefixEncoder`` without projection; GQA models use the key/value width)."""
        width = spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim
        return [TensorGroup("prompt_encoder.embedding", (knobs["num_virtual_tokens"], width))]

    def extra_kv_positions(self, knobs: dict[str, Any]) -> int:
        return int(knobs["num_virtual_tokens"])

    def peft_config(self, spec: ModelSpec, knobs: dict[str, Any]):
        import peft

        return peft.PrefixTuningConfig(num_virtual_tokens=knobs["num_virtual_tokens"], task_type="CAUSAL_LM")


METHOD = PrefixMethod()
