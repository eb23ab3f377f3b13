"""Bytes of the model's weights, the trainable weights and their gradients.

Storage rules (each checked against real tensors by ``workbench measure`` in the tests):

- unquantized parameters: ``numel x bytes(dtype)``;
- 8-bit (LLM.int8(), Dettmers et al. 2022): int8 weight (1 B/element) + one fp32 scale per
  output row (``SCB``), bitsandbytes ``Int8Params``;
- 4-bit (QLoRA, Dettmers et al. 2023): two 4-bit codes per byte, one absmax per 64-element
  block (fp32; with double quantization uint8 plus one fp32 absmax per 256 blocks, a 256-entry
  fp32 code book and an fp32 offset) and the 16-entry fp32 NF4/FP4 code book, per layer
  (bitsandbytes ``QuantState``). Only linear layers inside the decoder blocks are quantized;
  embeddings, norms and the output head stay in the compute dtype;
- adapter weights are fp32 (peft ``autocast_adapter_dtype=True``) whatever the model dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..methods.base import Method, TensorGroup
from ..specs import ModelSpec
from .settings import DTYPE_BYTES, TrainingSettings

BNB_4BIT_BLOCK = 64
BNB_NESTED_BLOCK = 256
BNB_CODE_ENTRIES = {"nested": 256, "4bit": 16}
ADAPTER_BYTES = 4


@dataclass(frozen=True)
class Term:
    """A named amount of memory with the formula that produced it."""

    name: str
    bytes: int
    formula: str


def quantized_linear_names(spec: ModelSpec, quant: str) -> set[str]:
    if quant == "none":
        return set()
    prefix = spec.inventory.block_prefix + "."
    return {lin.name for lin in spec.inventory.linears if lin.name.startswith(prefix)}


def four_bit_bytes(numel: int, double_quant: bool) -> int:
    """Packed codes + quantization constants of one 4-bit weight (bitsandbytes QuantState)."""
    blocks = math.ceil(numel / BNB_4BIT_BLOCK)
    codes = math.ceil(numel / 2) + 4 * BNB_CODE_ENTRIES["4bit"]
    if not double_quant:
        return codes + 4 * blocks
    nested_blocks = math.ceil(blocks / BNB_NESTED_BLOCK)
    return codes + blocks + 4 * nested_blocks + 4 * BNB_CODE_ENTRIES["nested"] + 4


def param_storage(p, quantized: set[str], quant: str, knobs: dict, element_bytes: int) -> tuple[str, int]:
    """(``"nf4"`` | ``"int8"`` | ``"dense"``, bytes) of one parameter as the method stores it:
    bitsandbytes' 4-bit (0.5 B/param + absmax per 64, optionally double-quantized) or int8
    (1 B/param + an fp32 scale per row) for quantized linear weights, else the dtype."""
    module = p.name.rsplit(".", 1)[0]
    if module in quantized and p.name.endswith(".weight"):
        if quant == "4bit":
            return "nf4", four_bit_bytes(p.numel, bool(knobs.get("double_quant", True)))
        return "int8", p.numel + 4 * p.shape[0]
    return "dense", p.numel * element_bytes


def buffer_bytes(spec: ModelSpec, element_bytes: int) -> int:
    """The model's buffers (rotary ``inv_freq`` ...) in their own dtypes; those made in the
    default dtype (Gemma's ``embed_scale``) in the dtype the model is loaded in."""
    return sum(b.numel * (element_bytes if b.dtype == "model" else DTYPE_BYTES.get(b.dtype, 8 if "int64" in b.dtype else 4))
               for b in spec.inventory.buffers)


def weights_term(spec: ModelSpec, method: Method, knobs: dict, settings: TrainingSettings, quant: str) -> Term:
    e = settings.element_bytes
    quantized = quantized_linear_names(spec, quant)
    stored = {"dense": 0, "nf4": 0, "int8": 0}
    for p in spec.inventory.params:
        kind, nbytes = param_storage(p, quantized, quant, knobs, e)
        stored[kind] += nbytes
    dense, quant4, quant8 = stored["dense"], stored["nf4"], stored["int8"]
    buffers = buffer_bytes(spec, e)
    extras = sum(g.total * (g.element_bytes or ADAPTER_BYTES) for g in method.extra_weight_groups(spec, knobs))
    parts = [f"{dense:,} B dense params x {e} B ({settings.dtype})"]
    if quant4:
        parts.append(f"{quant4:,} B NF4 (0.5 B/param + absmax per 64{' + double-quant' if knobs.get('double_quant', True) else ''})")
    if quant8:
        parts.append(f"{quant8:,} B int8 (1 B/param + fp32 scale per row)")
    parts.append(f"{buffers:,} B buffers")
    if extras:
        parts.append(f"{extras:,} B frozen method tensors")
    return Term("weights", dense + quant4 + quant8 + buffers + extras, " + ".join(parts))


def trainable_tensors(spec: ModelSpec, method: Method, knobs: dict, settings: TrainingSettings) -> list[tuple[TensorGroup, int]]:
    """Every trainable tensor group with its element size."""
    e = settings.element_bytes
    return [(g, e if g.role == "base" else ADAPTER_BYTES) for g in method.trainable_groups(spec, knobs)]


def trainable_weights_term(tensors: list[tuple[TensorGroup, int]]) -> Term:
    adapter = [(g, b) for g, b in tensors if g.role != "base"]
    total = sum(g.total * b for g, b in adapter)
    n = sum(g.total for g, _ in adapter)
    return Term("trainable_weights", total, f"{n:,} adapter params x 4 B (fp32, peft autocast_adapter_dtype)")


def gradients_term(tensors: list[tuple[TensorGroup, int]]) -> Term:
    total = sum(g.total * b for g, b in tensors)
    n = sum(g.total for g, _ in tensors)
    return Term("gradients", total, f"one gradient per trainable param in its dtype: {n:,} params -> {total:,} B")
