"""Prompt tuning: learn the embeddings of a few virtual tokens prepended to every input
(Lester et al. 2021, arXiv:2104.08691). The base model is untouched; every activation
grows by the virtual tokens."""

from __future__ import annotations

from typing import Any

from ..specs import ModelSpec
from .base import Knob, Method, TensorGroup


class PromptMethod(Method):
    name = "prompt"
    title = "Prompt tuning"
    summary = "Learn a few virtual token embeddings in front of every example."
    knobs = (Knob("num_virtual_tokens", int, 20, "virtual tokens prepended to every example", 1, 2048),)
    extra_tokens_knob = "num_virtual_tokens"
    autocast_exact = True  # measured under bf16 autocast on CPU (tests/test_precision.py)

    def trainable_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        """num_virtual_tokens x hidden_size (peft ``PromptEmbedding``)."""
        return [TensorGroup("prompt_encoder.embedding", (knobs["num_virtual_tokens"], spec.hidden_size))]

    def peft_config(self, spec: ModelSpec, knobs: dict[str, Any]):
        import peft

        return peft.PromptTuningConfig(num_virtual_tokens=knobs["num_virtual_tokens"], task_type="CAUSAL_LM")


METHOD = PromptMethod()
