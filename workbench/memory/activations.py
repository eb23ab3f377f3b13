"""Activation memory: the tensors autograd saves in the forward pass for the backward pass.

For the decoders :mod:`.blocks` knows (Llama, Mistral, Qwen2/3, Phi-3/4, Gemma 2/3) the
planner walks each block op by op (:func:`.blocks.walk_block`) and records what PyTorch
saves, *given which inputs require grad* -- autograd only saves what some gradient needs
(``tools/autograd/derivatives.yaml``) -- and deduplicates tensors saved by several ops
(the q/k/v projections share their input). The rules, per token, with h = hidden,
i = intermediate, kv = kv_heads x head_dim, e = compute dtype bytes:

- RMSNorm (transformers ``LlamaRMSNorm``): the fp32 input (4h) and ``rsqrt`` (4) when its
  input requires grad; the normalised input (e·h) when its gain is trained;
- a linear layer saves its input (e·in) only when its weight is trained -- or, for an int8
  base (bitsandbytes ``MatMul8bitLt``), whenever its input requires grad;
- rotary embedding: cos and sin, once per forward (2 x s x head_dim x e), once per layer
  type where those differ (Gemma 3's sliding and full layers);
- SDPA (flash / cuDNN / memory-efficient / CPU flash kernels, :mod:`.attention` says which
  runs; CUDA's math fallback saves the fp32 s x s probabilities instead): q and the output (e·h each), k and v
  (e·kv each, grouped-query heads are not repeated without a mask) and the fp32 logsumexp
  (4 x heads); a padded batch (:func:`padded_batch`), or a sliding window the sequence
  reaches, brings an attention mask: k and v are
  repeated per head and each layer saves an additive e x s x s mask per example; eager
  attention instead keeps the s x s probabilities and repeated k, v;
- SwiGLU: gate output (e·i) for SiLU, SiLU output and up output (e·i each) for the product,
  the product (e·i) when down_proj's weight is trained;
- adapters add what their method declares (``Method.adapter_saved``).

Gradient checkpointing (Chen et al. 2016, arXiv:1604.06174; non-reentrant, per block)
keeps only each block's input (e·h); one block is recomputed at a time in backward, while the
gradients of the trained weights after it exist (with tied, trained embeddings also the head's
gradient of the shared weight, waiting in autograd's input buffer for the embedding's). That
block peaks either in its backward (the MLP's gradients) or in its recomputed forward, at the
largest adapted linear (LoRA's unsaved fp32 copies of a 16-bit input): the larger is planned.
Other architectures fall back to Korthikanti et al. 2022 (arXiv:2205.05198),
``s·b·h·(34 + 5·a·s/h)`` bytes per layer in 16-bit, scaled to the dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..methods.base import Method
from ..specs import ModelSpec
from .attention import attention_kernel
from .blocks import is_gemma, is_llama_like, layer_masked, padded_batch, walk_block
from .settings import TrainingSettings

__all__ = ["ActivationEstimate", "estimate_activations", "is_llama_like", "padded_batch"]

@dataclass(frozen=True)
class ActivationEstimate:
    saved_bytes: int  # alive at the start of backward
    recompute_bytes: int  # transient: one block recomputed under gradient checkpointing
    per_layer_bytes: tuple[int, ...]  # without checkpointing, block by block
    head_input_saved: bool  # the output head saves its input (it is trained)
    formula: str
    exact_architecture: bool
    head_cast_bytes: int = 0  # autocast's copy of the output head's weight, kept for backward
    #: why the activations are approximate ("" when architecture, method and precision follow a measured walk)
    approximate_because: str = ""
    #: without checkpointing: the largest adapter backward's temporaries (a materialised delta's
    #: gradients: LoKr, LoHa) beside the residual stream's gradient, while a block is back-propagated
    block_backward_bytes: int = 0


def _head_cast(spec: ModelSpec, settings: TrainingSettings, needed: bool) -> int:
    """Under autocast the head casts its weight to the compute dtype and keeps the copy
    when its input requires grad or its weight is trained (``needed``)."""
    if settings.compute_bytes == settings.element_bytes or not needed:
        return 0
    return settings.compute_bytes * spec.vocab_size * spec.hidden_size


def _approximation(spec: ModelSpec, method: Method, knobs: dict, settings: TrainingSettings, quant: str = "none") -> str:
    """Why a known block's walk is not exact for this method and precision ("" when it is)."""
    if quant == "8bit" and settings.device == "cuda":
        return ("bitsandbytes' int8 matmul (MatMul8bitLt) keeps other tensors for backward on CUDA than on the CPU "
                "it was measured on; not yet measured on a GPU")
    if settings.autocast != "none":
        return method.autocast_approximation(spec, knobs)
    return ""


def _rotary_of(spec: ModelSpec, i: int) -> str:
    """Which rotary embedding block ``i`` uses: its layer type's own where the model keeps one
    per type (Gemma 3's ``{type}_inv_freq`` buffers), else the model's one."""
    kind = spec.attention_facts.layer_types[i]
    return kind if any(b.name.endswith(f".{kind}_inv_freq") for b in spec.inventory.buffers) else ""


def _trained_grad_bytes_from_each_block(spec: ModelSpec, trained: set[str], e: int) -> list[int]:
    """For each block i: bytes of the gradients of the model's own trained weights in blocks
    i..L-1 and outside the blocks after them (final norm, head)."""
    prefix = spec.inventory.block_prefix + "."
    per_block = [0] * spec.num_layers
    after = 0
    for p in spec.inventory.params:
        if p.name not in trained:
            continue
        if p.name.startswith(prefix):
            per_block[int(p.name[len(prefix):].split(".")[0])] += p.numel * e
        elif "embed" not in p.name:
            after += p.numel * e
    out, running = [0] * spec.num_layers, after
    for i in reversed(range(spec.num_layers)):
        running += per_block[i]
        out[i] = running
    return out


def estimate_activations(spec: ModelSpec, method: Method, knobs: dict, settings: TrainingSettings,
                         trained: set[str], tokens_per_example: int, quant: str = "none") -> ActivationEstimate:
    b, s, e, r = settings.batch_size, tokens_per_example, settings.compute_bytes, settings.element_bytes
    # the sequence the blocks attend over (masks, windows, eager probabilities) includes prompt
    # tuning's virtual tokens
    settings = replace(settings, seq_len=s)
    tokens = b * s
    inv = spec.inventory
    head_trained = f"{inv.head_name}.weight" in trained or (inv.tied_embeddings and inv.params[0].name in trained)
    if not is_llama_like(spec):
        a, h, L = spec.num_heads, spec.hidden_size, spec.num_layers
        per_layer = int(s * b * h * (34 + 5 * a * s / h) * e / 2)
        saved = L * per_layer if not settings.gradient_checkpointing else L * tokens * h * r
        return ActivationEstimate(saved, per_layer if settings.gradient_checkpointing else 0, (per_layer,) * L,
                                  head_trained, "Korthikanti et al. 2022: s·b·h·(34 + 5·a·s/h) per layer (approximate)",
                                  False, head_cast_bytes=_head_cast(spec, settings, True),
                                  approximate_because="this architecture's blocks have no measured walk yet")
    adapted = {lin.name: lin for lin in method.adapted_linears(spec, knobs)}
    prefix = method.extra_kv_positions(knobs)
    embed = next(p.name for p in inv.params if "embed" in p.name)
    rg = embed in trained or method.extra_tokens(knobs) > 0
    per_layer, rope_types, transient, kept, live_in_mlp, forward_tmp, adapter_bwd = [], set(), 0, 0, [], 0, 0
    before = 0  # saved by the blocks before this one
    ids_bytes = 8 * tokens if embed in trained else 0
    for i in range(spec.num_layers):
        kernel = attention_kernel(spec, settings, layer_masked(spec, settings, i, prefix))
        layer, rg_out, layer_rope = walk_block(i, rg, spec, method, knobs, settings, trained, adapted, quant,
                                               kernel.name)
        per_layer.append(layer.bytes(tokens))
        live_in_mlp.append(per_layer[-1] - layer.bytes_of(layer.after_mlp, tokens))
        transient = max(transient, layer.transient, layer.backward_transient)
        # an adapter's backward runs once the later blocks, and what this block saved after it, are freed
        for bwd, per_token, constant in layer.backward_at:
            adapter_bwd = max(adapter_bwd, before + int(per_token * tokens) + constant + bwd)
        before += per_layer[-1]
        forward_tmp = max(forward_tmp, layer.forward_transient_per_token)
        kept += layer.bytes_of(layer.outside_autograd, tokens)
        if layer_rope:
            rope_types.add(_rotary_of(spec, i))
        rg = rg_out
    # cos/sin in the hidden states' dtype, a pair per rotary (Gemma 3: one per layer type)
    rope_bytes = len(rope_types) * 2 * s * spec.head_dim * r
    head_cast = _head_cast(spec, settings, rg or head_trained)
    gemma = is_gemma(spec)
    why = _approximation(spec, method, knobs, settings, quant)
    final = 0
    if rg:  # Gemma's norm also keeps its fp32 (1 + w)
        final += (4 * spec.hidden_size + 4) * tokens + (4 * spec.hidden_size if gemma else 0)
    if f"{inv.block_prefix.rsplit('.', 1)[0]}.norm.weight" in trained:
        final += (4 if gemma else r) * spec.hidden_size * tokens
    if settings.gradient_checkpointing:
        # Trainer/peft make the embedding output require grad (enable_input_require_grads), so
        # every block input is kept; one block is live again while it is recomputed.
        # Tensors a custom autograd function keeps on ctx (int8 matmul) escape checkpointing.
        # While a block is recomputed and back-propagated, its saved tensors, the gradient of
        # its output and the MLP product's gradients (3 x e·i) are live at once.
        block_inputs = spec.num_layers * tokens * spec.hidden_size * r
        saved = ids_bytes + block_inputs + final + kept
        # Gradients of trained weights in block i and after it exist while block i is redone.
        grads_from = _trained_grad_bytes_from_each_block(spec, trained, r)
        backward_tmp = tokens * (r * spec.hidden_size + 3 * e * spec.intermediate_size)
        # ... or, if larger, what the recomputed forward holds at its largest adapted linear
        # (LoRA's unsaved fp32 copies of a 16-bit input), beside the block output's gradient
        backward_tmp = max(backward_tmp, int(tokens * (r * spec.hidden_size + forward_tmp)))
        # Tied embeddings, trained: the head's gradient of the shared weight is not stored yet;
        # it waits in autograd's input buffer for the embedding's (summed at the end of
        # backward), alive while every block is redone. Unsharded on every GPU.
        held_head_grad = next(p.numel for p in inv.params if p.name == embed) * r \
            if inv.tied_embeddings and embed in trained else 0
        # (the MLP's backward, where those temporaries peak, runs after what follows the MLP
        # -- Gemma's post-feed-forward norm -- has been back-propagated and freed)
        recompute = (max(a + g for a, g in zip(live_in_mlp, grads_from)) + rope_bytes + transient + backward_tmp
                     + held_head_grad)
        return ActivationEstimate(saved, recompute, tuple(per_layer), head_trained,
                                  f"checkpointing: {spec.num_layers} block inputs x b·s·h·e = {block_inputs:,} B "
                                  f"+ final norm {final:,} B" + (f" + int8 matmul inputs {kept:,} B" if kept else "")
                                  + "; one block recomputed at a time", True, head_cast, why)
    saved = ids_bytes + sum(per_layer) + rope_bytes + final
    formula = (f"sum over {spec.num_layers} blocks of saved tensors x b·s = {b}x{s} tokens "
               f"({sum(per_layer):,} B) + rotary cos/sin {rope_bytes:,} B + final norm {final:,} B")
    if e != r:
        formula += (f"; autocast to {settings.compute_dtype}: each linear keeps its own {e}-byte copy of its input "
                    f"and of its weight")
    # beside the residual stream's gradient; counted on top of the activations as the other phases are
    block_bwd = max(0, adapter_bwd + tokens * spec.hidden_size * r - sum(per_layer)) if adapter_bwd else 0
    return ActivationEstimate(saved, 0, tuple(per_layer), head_trained, formula, True, head_cast, why, block_bwd)
