"""Activation memory: the tensors autograd saves in the forward pass for the backward pass.

For Llama-style decoders (RMSNorm, rotary attention with grouped-query heads, SwiGLU MLP:
llama, mistral, qwen2, ...) the planner walks each block op by op and records what PyTorch
saves, *given which inputs require grad* -- autograd only saves what some gradient needs
(``tools/autograd/derivatives.yaml``) -- and deduplicates tensors saved by several ops
(the q/k/v projections share their input). The rules, per token, with h = hidden,
i = intermediate, kv = kv_heads x head_dim, e = compute dtype bytes:

- RMSNorm (transformers ``LlamaRMSNorm``): the fp32 input (4h) and ``rsqrt`` (4) when its
  input requires grad; the normalised input (e·h) when its gain is trained;
- a linear layer saves its input (e·in) only when its weight is trained -- or, for an int8
  base (bitsandbytes ``MatMul8bitLt``), whenever its input requires grad;
- rotary embedding: cos and sin, once per forward (2 x s x head_dim x e);
- SDPA (flash / cuDNN / memory-efficient / CPU flash kernels, :mod:`.attention` says which
  runs; CUDA's math fallback saves the fp32 s x s probabilities instead): q and the output (e·h each), k and v
  (e·kv each, grouped-query heads are not repeated without a mask) and the fp32 logsumexp
  (4 x heads); a padded batch (:func:`padded_batch`) brings an attention mask: k and v are
  repeated per head and each layer saves an additive e x s x s mask per example; eager
  attention instead keeps the s x s probabilities and repeated k, v;
- SwiGLU: gate output (e·i) for SiLU, SiLU output and up output (e·i each) for the product,
  the product (e·i) when down_proj's weight is trained;
- adapters add what their method declares (``Method.adapter_saved``).

Gradient checkpointing (Chen et al. 2016, arXiv:1604.06174; non-reentrant, per block)
keeps only each block's input (e·h); one block is recomputed at a time in backward, while the
gradients of the trained weights after it exist (with tied, trained embeddings also the head's
gradient of the shared weight, waiting in autograd's input buffer for the embedding's).
Other architectures fall back to Korthikanti et al. 2022 (arXiv:2205.05198),
``s·b·h·(34 + 5·a·s/h)`` bytes per layer in 16-bit, scaled to the dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..methods.base import AdapterContext, Method
from ..specs import ModelSpec
from .attention import Kernel, attention_kernel
from .settings import TrainingSettings

LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LayerSaved:
    """Saved tensors of one block: per-token bytes (deduplicated by storage key) and
    batch-independent bytes."""

    per_token: dict[str, tuple[str, float]] = field(default_factory=dict)
    constant: int = 0
    transient: int = 0  # allocated and freed inside the block's forward
    backward_transient: int = 0  # allocated by an adapter's backward, beyond what it saved
    outside_autograd: set[str] = field(default_factory=set)  # kept on ctx, survives checkpointing

    def save(self, key: str, name: str, bytes_per_token: float) -> None:
        self.per_token.setdefault(key, (name, bytes_per_token))

    def bytes(self, tokens: int) -> int:
        return int(sum(b for _, b in self.per_token.values()) * tokens) + self.constant

    def kept_outside_autograd(self, tokens: int) -> int:
        return int(sum(self.per_token[k][1] for k in self.outside_autograd) * tokens)


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
    kernel: Kernel | None = None  # the attention kernel the walk planned (memory/attention.py)


def _head_cast(spec: ModelSpec, settings: TrainingSettings, needed: bool) -> int:
    """Under autocast the head casts its weight to the compute dtype and keeps the copy
    when its input requires grad or its weight is trained (``needed``)."""
    if settings.compute_bytes == settings.element_bytes or not needed:
        return 0
    return settings.compute_bytes * spec.vocab_size * spec.hidden_size


def _approximation(method: Method, knobs: dict, settings: TrainingSettings, quant: str = "none",
                   qk_norms: bool = False, fused: bool = False) -> str:
    """Why a Llama-like walk is not exact for this method and precision ("" when it is)."""
    if qk_norms and settings.autocast != "none":
        return "Qwen3's q/k norms under autocast have no measured walk yet"
    if fused and (settings.autocast != "none" or settings.attention == "eager" or method.extra_kv_positions(knobs)):
        return ("Phi-3's fused projections have a measured walk with sdpa in pure precision only (not under "
                "autocast, with eager attention or a prefix)")
    if quant == "8bit" and settings.device == "cuda":
        return ("bitsandbytes' int8 matmul (MatMul8bitLt) keeps other tensors for backward on CUDA than on the CPU "
                "it was measured on; not yet measured on a GPU")
    if settings.autocast == "none":
        return ""
    if settings.attention == "eager":
        return "eager attention under autocast has no measured walk yet"
    if method.extra_kv_positions(knobs) or method.extra_tokens(knobs):
        return f"{method.name} under autocast has no measured walk yet"
    if not method.autocast_exact:
        return f"{method.name}'s adapters under autocast have no measured walk yet"
    return ""


def padded_batch(settings: TrainingSettings) -> bool:
    """Does a micro-batch carry a padding mask? The worker pads a batch to its longest example
    and passes the attention mask (``training/collate.py``); with more than one example some
    are shorter, so transformers keeps the mask (a single example is never padded and its
    all-ones mask is dropped for ``is_causal``)."""
    return settings.batch_size > 1


#: a Llama block's parameters (Llama, Mistral, SmolLM2, TinyLlama; Qwen2 adds the q/k/v biases):
#: the op-by-op walk below is measured on exactly these blocks
LLAMA_BLOCK = frozenset({"input_layernorm.weight", "post_attention_layernorm.weight",
                         *(f"self_attn.{n}.weight" for n in LLAMA_LINEARS[:4]),
                         *(f"mlp.{n}.weight" for n in LLAMA_LINEARS[4:])})
QWEN2_BIASES = frozenset(f"self_attn.{n}.bias" for n in ("q_proj", "k_proj", "v_proj"))
#: Qwen3's RMSNorms over each head's q and k (before rotary), measured on a random-init Qwen3
QWEN3_NORMS = frozenset({"self_attn.q_norm.weight", "self_attn.k_norm.weight"})
#: Phi-3 / Phi-4 blocks: the Llama block with q/k/v fused into qkv_proj and gate/up into gate_up_proj
FUSED_BLOCK = frozenset({"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.qkv_proj.weight",
                         "self_attn.o_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight"})
ATTENTION_LINEARS = (*LLAMA_LINEARS[:4], "qkv_proj")


def is_llama_like(spec: ModelSpec) -> bool:
    """Is every block a Llama block (with or without Qwen2's q/k/v biases, with Qwen3's q/k
    norms, or with Phi-3's fused qkv_proj and gate_up_proj)? A block with more (Gemma's extra
    norms) is not: its activations take the flagged fallback until its own walk is measured."""
    block = _block_params(spec)
    return block == FUSED_BLOCK or LLAMA_BLOCK <= block and (block <= LLAMA_BLOCK | QWEN2_BIASES
                                                              or block == LLAMA_BLOCK | QWEN3_NORMS)


def _block_params(spec: ModelSpec) -> set[str]:
    prefix = f"{spec.inventory.block_prefix}.0."
    return {p.name[len(prefix):] for p in spec.inventory.params if p.name.startswith(prefix)}


def has_qk_norms(spec: ModelSpec) -> bool:
    return QWEN3_NORMS <= _block_params(spec)


def has_fused_projections(spec: ModelSpec) -> bool:
    return _block_params(spec) == FUSED_BLOCK


def _walk_block(i: int, rg: bool, spec: ModelSpec, method: Method, knobs: dict, settings: TrainingSettings,
                trained: set[str], adapted: dict[str, object], quant: str,
                kernel: str = "cpu-flash") -> tuple[LayerSaved, bool, bool]:
    """Saved tensors of block ``i``; returns (saved, output requires grad, rope saved).

    ``e`` is the compute dtype's size, ``r`` the storage dtype's: the residual stream, the
    norms' outputs and rotary cos/sin stay in the storage dtype. Under autocast (``r != e``)
    every linear casts its input and its weight to the compute dtype itself -- a non-leaf
    input is not cached, so q/k/v (and gate/up) each keep their own copy of a shared input --
    and the linear keeps the weight's cast copy whenever it needs it for backward (its input
    requires grad, or its weight is trained: a trained weight's copy is also held in the
    autocast cache until the forward ends)."""
    e, r = settings.compute_bytes, settings.element_bytes
    cast = e != r
    weights = {q.name: q.numel for q in spec.inventory.params}
    h, kv, nh, inter = spec.hidden_size, spec.num_kv_heads * spec.head_dim, spec.num_heads, spec.intermediate_size
    q_width = nh * spec.head_dim
    p = f"{spec.inventory.block_prefix}.{i}"
    out = LayerSaved()

    def norm(name: str, x_rg: bool) -> bool:
        if x_rg:
            out.save(f"{p}.{name}.x32", f"{name}: fp32 input (4 B x h)", 4 * h)
            out.save(f"{p}.{name}.rsqrt", f"{name}: rsqrt (4 B)", 4)
        gain = f"{p}.{name}.weight" in trained
        if gain:
            out.save(f"{p}.{name}.normed", f"{name}: normalised input ({r} B x h)", r * h)
        return x_rg or gain

    def linear(short: str, in_key: str, in_width: int, in_rg: bool, in_bytes: int) -> bool:
        name = f"{p}.{'self_attn' if short in ATTENTION_LINEARS else 'mlp'}.{short}"
        base = f"{name}.weight" in trained
        cast_key = f"{name}.input_cast" if in_bytes != e else in_key
        if base:
            out.save(cast_key, f"{short}: input{' cast by autocast' if in_bytes != e else ''} (e x {in_width})",
                     e * in_width)
        if cast and (base or in_rg):
            out.constant += e * weights[f"{name}.weight"]  # autocast's copy of the weight, kept for backward
        elif quant == "8bit" and in_rg:  # bitsandbytes MatMul8bitLt keeps A on ctx.tensors
            out.save(in_key, f"{short}: input kept by the int8 matmul (e x {in_width})", e * in_width)
            out.outside_autograd.add(in_key)
        lin = adapted.get(name)
        if lin is not None:
            ctx = AdapterContext(input_key=in_key, input_bytes=in_bytes, input_requires_grad=in_rg,
                                 device=settings.device, autocast_bytes=e if settings.autocast != "none" else None)
            for s in method.adapter_saved(lin, knobs, ctx):
                out.save(s.key, s.name, s.bytes_per_token)
            out.constant += method.adapter_saved_constant(lin, knobs, ctx)
            out.transient = max(out.transient, method.adapter_transient_constant(lin, knobs, ctx))
            out.backward_transient = max(out.backward_transient, method.adapter_backward_transient(lin, knobs, ctx))
        return in_rg or base or lin is not None

    y1_rg = norm("input_layernorm", rg)
    fused = f"{p}.self_attn.qkv_proj.weight" in weights
    if fused:  # Phi-3/4: one projection; q, k and v are slices (views) of its output
        q_rg = k_rg = v_rg = linear("qkv_proj", f"{p}.y1", h, y1_rg, r)
    else:
        q_rg = linear("q_proj", f"{p}.y1", h, y1_rg, r)
        k_rg = linear("k_proj", f"{p}.y1", h, y1_rg, r)
        v_rg = linear("v_proj", f"{p}.y1", h, y1_rg, r)
    if f"{p}.self_attn.q_norm.weight" in weights:  # Qwen3: an RMSNorm over each head's q and k, as the block's norms

        def head_norm(name: str, x_rg: bool, width: int, heads: int) -> bool:
            key = f"{p}.self_attn.{name}"
            if x_rg:
                out.save(f"{key}.x32", f"{name}: fp32 input (4 B x heads x d)", 4 * width)
                out.save(f"{key}.rsqrt", f"{name}: rsqrt per head (4 B)", 4 * heads)
            if f"{key}.weight" in trained:
                out.save(f"{key}.normed", f"{name}: normalised input ({r} B x heads x d)", r * width)
            return x_rg or f"{key}.weight" in trained

        q_rg = head_norm("q_norm", q_rg, q_width, nh)
        k_rg = head_norm("k_norm", k_rg, kv, spec.num_kv_heads)
    prefix = method.extra_kv_positions(knobs)
    attn_rg = q_rg or k_rg or v_rg or prefix > 0  # trained prefix keys/values enter here
    if attn_rg:
        if kernel == "math":
            # CUDA's math kernel (torch _scaled_dot_product_attention_math): q and k scaled, q·kᵀ,
            # softmax, probs·v, with k/v repeated per head; 16-bit inputs are upcast to fp32 first
            # (allow_fp16_bf16_reduction_math_sdp is off by default). Not yet measured on a GPU.
            m = 4
            seq = settings.seq_len + prefix
            out.save(f"{p}.q", "math sdpa: scaled q (fp32 x heads x d)", m * q_width)
            out.save(f"{p}.k", "math sdpa: scaled k, repeated per head (fp32)", m * q_width * seq / settings.seq_len)
            out.save(f"{p}.v", "math sdpa: v, repeated per head (fp32)", m * q_width * seq / settings.seq_len)
            out.save(f"{p}.probs", "math sdpa: softmax probabilities (fp32 x heads x s)", m * nh * seq)
        elif fused and settings.attention == "sdpa" and not prefix:
            # v is a slice of qkv_proj's output: saving it keeps that whole output alive, unless a
            # padding mask with grouped-query heads makes transformers repeat it (a copy per head)
            masked, gqa = padded_batch(settings), nh != spec.num_kv_heads
            out.save(f"{p}.q", "sdpa: rotated q (e x heads x d)", e * q_width)
            out.save(f"{p}.k", "sdpa: rotated k" + (", repeated per head" if masked and gqa else ""),
                     e * (q_width if masked and gqa else kv))
            if masked and gqa:
                out.save(f"{p}.v", "sdpa with a mask: v repeated per head", e * q_width)
            else:
                out.save(f"{p}.qkv_out", "sdpa: v, a view of qkv_proj's whole output (e x (q + 2 kv))",
                         e * (q_width + 2 * kv))
            out.save(f"{p}.attn_out", "sdpa: output (e x heads x d)", e * q_width)
            out.save(f"{p}.lse", "sdpa: fp32 logsumexp per head", 4 * nh)
            if masked:
                out.save(f"{p}.mask", "sdpa: additive padding mask (e x s per token)", e * settings.seq_len)
        elif settings.attention == "sdpa" and not prefix and padded_batch(settings):
            # the padded batch's attention mask: transformers then repeats k/v per head (use_gqa_in_sdpa
            # needs no mask) and torch turns the boolean mask into an additive one in the compute dtype,
            # per layer (sdp_utils convert_boolean_attn_mask), which the CPU flash kernel saves
            width = q_width if nh != spec.num_kv_heads else kv
            seq = settings.seq_len
            out.save(f"{p}.q", "sdpa: rotated q (e x heads x d)", e * q_width)
            out.save(f"{p}.k", "sdpa with a mask: k repeated per head", e * width)
            out.save(f"{p}.v", "sdpa with a mask: v repeated per head", e * width)
            out.save(f"{p}.attn_out", "sdpa: output (e x heads x d)", e * q_width)
            out.save(f"{p}.lse", "sdpa: fp32 logsumexp per head", 4 * nh)
            out.save(f"{p}.mask", "sdpa: additive padding mask (e x s per token)", e * seq)
        elif settings.attention == "sdpa" and prefix:
            # a prefix cache brings an attention mask: transformers then repeats k/v per head
            seq = settings.seq_len
            width = (q_width if nh != spec.num_kv_heads else kv) * (seq + prefix) / seq
            out.save(f"{p}.q", "sdpa: rotated q (e x heads x d)", e * q_width)
            out.save(f"{p}.k", "sdpa: prefix + k, repeated per head", e * width)
            out.save(f"{p}.v", "sdpa: prefix + v, repeated per head", e * width)
            out.save(f"{p}.attn_out", "sdpa: output (e x heads x d)", e * q_width)
            out.save(f"{p}.lse", "sdpa: fp32 logsumexp per head", 4 * nh)
        elif settings.attention == "sdpa":
            out.save(f"{p}.q", "sdpa: rotated q (e x heads x d)", e * q_width)
            out.save(f"{p}.k", "sdpa: rotated k (e x kv)", e * kv)
            out.save(f"{p}.v", "sdpa: v (e x kv)", e * kv)
            out.save(f"{p}.attn_out", "sdpa: output (e x heads x d)", e * q_width)
            out.save(f"{p}.lse", "sdpa: fp32 logsumexp per head", 4 * nh)
        else:
            s = settings.seq_len
            out.save(f"{p}.q", "eager: rotated q", e * q_width)
            out.save(f"{p}.k", "eager: repeated k", e * q_width)
            out.save(f"{p}.v", "eager: repeated v", e * q_width)
            out.save(f"{p}.probs", "eager: softmax probabilities (e x heads x s)", e * nh * s)
            if e != 4:  # softmax runs in fp32 and is cast back: both copies are kept
                out.save(f"{p}.probs32", "eager: fp32 softmax output (4 x heads x s)", 4 * nh * s)
    # Phi-3's rotary ends in a cat, so q is laid out (b, heads, s, d) and sdpa's output too: the
    # transpose back for o_proj is a copy, a tensor of its own (Llama's is a view of the output)
    o_rg = linear("o_proj", f"{p}.o_proj_input" if fused else f"{p}.attn_out", q_width, attn_rg, e)
    y2_rg = norm("post_attention_layernorm", rg or o_rg)
    if fused:  # gate and up are the two halves (views) of gate_up_proj's output
        gate_rg = up_rg = linear("gate_up_proj", f"{p}.y2", h, y2_rg, r)
        if gate_rg:
            out.save(f"{p}.gate_up", "SiLU input and product: gate_up output (e x 2i)", e * 2 * inter)
            out.save(f"{p}.act", "product: SiLU output (e x i)", e * inter)
    else:
        gate_rg = linear("gate_proj", f"{p}.y2", h, y2_rg, r)
        up_rg = linear("up_proj", f"{p}.y2", h, y2_rg, r)
        if gate_rg:
            out.save(f"{p}.gate", "SiLU input: gate output (e x i)", e * inter)
            out.save(f"{p}.up", "product: up output (e x i)", e * inter)
        if up_rg:
            out.save(f"{p}.act", "product: SiLU output (e x i)", e * inter)
    down_rg = linear("down_proj", f"{p}.prod", inter, gate_rg or up_rg, e)
    return out, rg or o_rg or down_rg, q_rg or k_rg


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
    kernel = attention_kernel(spec, settings, padded_batch(settings) or method.extra_kv_positions(knobs) > 0)
    embed = next(p.name for p in inv.params if "embed" in p.name)
    rg = embed in trained or method.extra_tokens(knobs) > 0
    per_layer, rope, transient, kept = [], False, 0, 0
    ids_bytes = 8 * tokens if embed in trained else 0
    for i in range(spec.num_layers):
        layer, rg_out, layer_rope = _walk_block(i, rg, spec, method, knobs, settings, trained, adapted, quant,
                                                kernel.name)
        per_layer.append(layer.bytes(tokens))
        transient = max(transient, layer.transient, layer.backward_transient)
        kept += layer.kept_outside_autograd(tokens)
        rope = rope or layer_rope
        rg = rg_out
    rope_bytes = 2 * s * spec.head_dim * r if rope else 0  # cos/sin in the hidden states' dtype
    prefix = method.extra_kv_positions(knobs)
    if prefix:  # the (b, 1, s, p + s) additive mask, in the compute dtype, once per forward
        rope_bytes += b * s * (s + prefix) * e
    head_cast = _head_cast(spec, settings, rg or head_trained)
    why = _approximation(method, knobs, settings, quant, has_qk_norms(spec), has_fused_projections(spec))
    final = 0
    if rg:
        final += (4 * spec.hidden_size + 4) * tokens
    if f"{inv.block_prefix.rsplit('.', 1)[0]}.norm.weight" in trained:
        final += r * spec.hidden_size * tokens
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
        # Tied embeddings, trained: the head's gradient of the shared weight is not stored yet;
        # it waits in autograd's input buffer for the embedding's (summed at the end of
        # backward), alive while every block is redone. Unsharded on every GPU.
        held_head_grad = next(p.numel for p in inv.params if p.name == embed) * r \
            if inv.tied_embeddings and embed in trained else 0
        recompute = (max(a + g for a, g in zip(per_layer, grads_from)) + rope_bytes + transient + backward_tmp
                     + held_head_grad)
        return ActivationEstimate(saved, recompute, tuple(per_layer), head_trained,
                                  f"checkpointing: {spec.num_layers} block inputs x b·s·h·e = {block_inputs:,} B "
                                  f"+ final norm {final:,} B" + (f" + int8 matmul inputs {kept:,} B" if kept else "")
                                  + "; one block recomputed at a time", True, head_cast, why, kernel)
    saved = ids_bytes + sum(per_layer) + rope_bytes + final
    formula = (f"sum over {spec.num_layers} blocks of saved tensors x b·s = {b}x{s} tokens "
               f"({sum(per_layer):,} B) + rotary cos/sin {rope_bytes:,} B + final norm {final:,} B")
    if e != r:
        formula += (f"; autocast to {settings.compute_dtype}: each linear keeps its own {e}-byte copy of its input "
                    f"and of its weight")
    return ActivationEstimate(saved, 0, tuple(per_layer), head_trained, formula, True, head_cast, why, kernel)
