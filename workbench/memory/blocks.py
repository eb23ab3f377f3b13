"""The op-by-op walk of one decoder block: which tensors autograd saves for backward.

Each rule is what PyTorch saves *given which inputs require grad* (autograd only saves what
some gradient needs, ``tools/autograd/derivatives.yaml``), per token, deduplicated by
storage (the q/k/v projections share their input). The families (each measured on random-
init blocks at their real widths, ``tests/test_planner_exact.py``):

- **Llama** (Llama, Mistral, SmolLM2, TinyLlama; Qwen2 adds q/k/v biases): RMSNorm, rotary
  attention with grouped-query heads, SwiGLU MLP;
- **Qwen3**: RMSNorms over each head's q and k before rotary;
- **Phi-3 / Phi-4**: q/k/v fused into ``qkv_proj`` and gate/up into ``gate_up_proj``;
- **Gemma 2 / Gemma 3**: four norms per block (after attention and around the MLP), the
  norm computed and scaled by (1 + w) in fp32, a GeGLU MLP (tanh GELU saves its input, as
  SiLU does), Gemma 3's q/k norms; Gemma 2 soft-caps the attention scores (eager attention
  only: tanh keeps its output) and Gemma 3 keeps a rotary cos/sin pair per layer type.

Each family is measured in pure precision and under bf16 autocast (fp32 storage: the norms'
outputs and rotary stay fp32, each linear and sdpa casts its own inputs; tests/test_precision.py
and the planner-accuracy matrix).

Sliding-window layers (Gemma, Mistral, Phi-3) bring a mask once the sequence reaches the
window (transformers ``_ignore_causal_mask_sdpa``); a mask makes transformers repeat k/v per
head and torch save an additive mask per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..methods.base import AdapterContext, Method
from ..specs import ModelSpec
from .settings import TrainingSettings

LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: a Llama block's parameters (Llama, Mistral, SmolLM2, TinyLlama; Qwen2 adds the q/k/v biases)
LLAMA_BLOCK = frozenset({"input_layernorm.weight", "post_attention_layernorm.weight",
                         *(f"self_attn.{n}.weight" for n in LLAMA_LINEARS[:4]),
                         *(f"mlp.{n}.weight" for n in LLAMA_LINEARS[4:])})
QWEN2_BIASES = frozenset(f"self_attn.{n}.bias" for n in ("q_proj", "k_proj", "v_proj"))
#: Qwen3's (and Gemma 3's) norms over each head's q and k, before rotary
QWEN3_NORMS = frozenset({"self_attn.q_norm.weight", "self_attn.k_norm.weight"})
#: Phi-3 / Phi-4 blocks: the Llama block with q/k/v fused into qkv_proj and gate/up into gate_up_proj
FUSED_BLOCK = frozenset({"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.qkv_proj.weight",
                         "self_attn.o_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight"})
#: Gemma 2 / 3: a norm before and after the MLP too (post_attention_layernorm is on the attention output)
GEMMA_NORMS = frozenset({"pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"})
GEMMA_BLOCK = LLAMA_BLOCK | GEMMA_NORMS
#: model types whose RMSNorm is transformers' Gemma one: fp32 throughout, scaled by (1 + w)
GEMMA_TYPES = ("gemma", "gemma2", "gemma3_text")
ATTENTION_LINEARS = (*LLAMA_LINEARS[:4], "qkv_proj")


@dataclass
class LayerSaved:
    """Saved tensors of one block: per-token bytes (deduplicated by storage key) and
    batch-independent bytes."""

    per_token: dict[str, tuple[str, float]] = field(default_factory=dict)
    constant: int = 0
    transient: int = 0  # allocated and freed inside the block's forward
    backward_transient: int = 0  # allocated by an adapter's backward, beyond what it saved
    #: per token, alive while the largest adapted linear runs forward (its input when nothing
    #: saves it, the adapter's unsaved copies, the output): the peak of a recomputed block's forward
    forward_transient_per_token: float = 0
    outside_autograd: set[str] = field(default_factory=set)  # kept on ctx, survives checkpointing
    #: saved after the MLP (Gemma's post-feed-forward norm): back-propagated, and freed, before it
    after_mlp: set[str] = field(default_factory=set)
    #: per adapter with a backward of its own: (its temporaries, per-token bytes and constant bytes the
    #: block had saved up to it): what is still alive when backward reaches it
    backward_at: list[tuple[int, float, int]] = field(default_factory=list)

    def save(self, key: str, name: str, bytes_per_token: float) -> None:
        self.per_token.setdefault(key, (name, bytes_per_token))

    def bytes(self, tokens: int) -> int:
        return int(sum(b for _, b in self.per_token.values()) * tokens) + self.constant

    def bytes_of(self, keys: set[str], tokens: int) -> int:
        """Bytes of the saved tensors ``keys`` (``outside_autograd``, ``after_mlp``)."""
        return int(sum(self.per_token[k][1] for k in keys) * tokens)


def block_params(spec: ModelSpec) -> set[str]:
    prefix = f"{spec.inventory.block_prefix}.0."
    return {p.name[len(prefix):] for p in spec.inventory.params if p.name.startswith(prefix)}


def is_llama_like(spec: ModelSpec) -> bool:
    """Does every block follow a measured walk (Llama with or without Qwen2's biases, Qwen3's
    q/k norms, Phi-3's fused projections, Gemma 2 / 3)? Others take the flagged fallback."""
    block = block_params(spec)
    if is_gemma(spec):
        return block in (GEMMA_BLOCK, GEMMA_BLOCK | QWEN3_NORMS)
    return block == FUSED_BLOCK or LLAMA_BLOCK <= block and (block <= LLAMA_BLOCK | QWEN2_BIASES
                                                              or block == LLAMA_BLOCK | QWEN3_NORMS)


def is_gemma(spec: ModelSpec) -> bool:
    return spec.model_type in GEMMA_TYPES


def padded_batch(settings: TrainingSettings) -> bool:
    """Does a micro-batch carry a padding mask? The worker pads a batch to its longest example
    and passes the attention mask (``training/collate.py``); with more than one example some
    are shorter, so transformers keeps the mask (a single example is never padded and its
    all-ones mask is dropped for ``is_causal``)."""
    return settings.batch_size > 1


def layer_masked(spec: ModelSpec, settings: TrainingSettings, i: int, extra_kv: int = 0) -> bool:
    """Does block ``i``'s attention get a mask: a padded batch, a prefix's positions, or a
    sliding window the sequence reaches (then transformers cannot use ``is_causal``)."""
    window = spec.attention_facts.windows[i]
    return padded_batch(settings) or extra_kv > 0 or (window is not None and settings.seq_len + extra_kv >= window)


def walk_block(i: int, rg: bool, spec: ModelSpec, method: Method, knobs: dict, settings: TrainingSettings,
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
    gemma = is_gemma(spec)
    weights = {q.name: q.numel for q in spec.inventory.params}
    h, kv, nh, inter = spec.hidden_size, spec.num_kv_heads * spec.head_dim, spec.num_heads, spec.intermediate_size
    q_width = nh * spec.head_dim
    p = f"{spec.inventory.block_prefix}.{i}"
    out = LayerSaved()
    # each linear's output element size: e, but under autocast a method whose layers return the
    # input's dtype (VeRA, OFT, LoHa, LoKr: fp32 from an fp32 input) changes what the MLP keeps
    out_bytes: dict[str, int] = {}

    def norm(key: str, label: str, x_rg: bool, width: int, rows: int = 1, x_bytes: int = r) -> bool:
        """An RMSNorm over ``width`` features (``rows`` norms per token: heads for q/k norms) of
        an input of ``x_bytes`` per element (the residual stream's storage dtype; q/k norms take
        a linear's output, in the compute dtype under autocast). Llama's: the fp32 input and
        rsqrt when its input requires grad, its normalised input cast back to the input's dtype
        when its gain is trained. Gemma's runs in fp32 and multiplies by
        (1 + w): that fp32 (1 + w) is kept when the input requires grad, the fp32 normalised
        input when the gain is trained."""
        if x_rg:
            out.save(f"{key}.x32", f"{label}: fp32 input (4 B x {width})", 4 * width)
            out.save(f"{key}.rsqrt", f"{label}: rsqrt (4 B x {rows})", 4 * rows)
            if gemma:
                out.constant += 4 * (width // rows)
        gain = f"{key}.weight" in trained
        if gain:
            nb = 4 if gemma else x_bytes
            out.save(f"{key}.normed", f"{label}: normalised input ({nb} B x {width})", nb * width)
        return x_rg or gain

    def linear(short: str, in_key: str, in_width: int, in_rg: bool, in_bytes: int) -> bool:
        name = f"{p}.{'self_attn' if short in ATTENTION_LINEARS else 'mlp'}.{short}"
        base = f"{name}.weight" in trained
        cast_key = f"{name}.input_cast" if in_bytes != e else in_key
        if base:
            out.save(cast_key, f"{short}: input{' cast by autocast' if in_bytes != e else ''} (e x {in_width})",
                     e * in_width)
        lin = adapted.get(name)
        out_bytes[short] = in_bytes if lin is not None and cast and method.output_in_input_dtype else e
        # OFT feeds the base layer a rotated input, which needs a gradient whatever x's
        rotated = lin is not None and method.rotates_input
        if cast and (base or in_rg or rotated):
            out.constant += e * weights[f"{name}.weight"]  # autocast's copy of the weight, kept for backward
        elif quant == "8bit" and in_rg:  # bitsandbytes MatMul8bitLt keeps A on ctx.tensors
            out.save(in_key, f"{short}: input kept by the int8 matmul (e x {in_width})", e * in_width)
            out.outside_autograd.add(in_key)
        if lin is not None:
            ctx = AdapterContext(input_key=in_key, input_bytes=in_bytes, input_requires_grad=in_rg,
                                 device=settings.device, autocast_bytes=e if settings.autocast != "none" else None)
            for s in method.adapter_saved(lin, knobs, ctx):
                out.save(s.key, s.name, s.bytes_per_token)
            out.constant += method.adapter_saved_constant(lin, knobs, ctx)
            out.transient = max(out.transient, method.adapter_transient_constant(lin, knobs, ctx))
            bwd = method.adapter_backward_transient(lin, knobs, ctx)
            out.backward_transient = max(out.backward_transient, bwd)
            if bwd:
                out.backward_at.append((bwd, sum(b for _, b in out.per_token.values()), out.constant))
            unsaved_input = in_bytes * in_width if in_key not in out.per_token else 0
            out.forward_transient_per_token = max(out.forward_transient_per_token, unsaved_input + e * lin.out_features
                                                  + method.adapter_transient_per_token(lin, knobs, ctx))
        return in_rg or base or lin is not None

    y1_rg = norm(f"{p}.input_layernorm", "input_layernorm", rg, h)
    fused = f"{p}.self_attn.qkv_proj.weight" in weights
    if fused:  # Phi-3/4: one projection; q, k and v are slices (views) of its output
        q_rg = k_rg = v_rg = linear("qkv_proj", f"{p}.y1", h, y1_rg, r)
    else:
        q_rg = linear("q_proj", f"{p}.y1", h, y1_rg, r)
        k_rg = linear("k_proj", f"{p}.y1", h, y1_rg, r)
        v_rg = linear("v_proj", f"{p}.y1", h, y1_rg, r)
    if f"{p}.self_attn.q_norm.weight" in weights:  # Qwen3, Gemma 3: a norm over each head's q and k
        q_rg = norm(f"{p}.self_attn.q_norm", "q_norm", q_rg, q_width, nh, out_bytes["q_proj"])
        k_rg = norm(f"{p}.self_attn.k_norm", "k_norm", k_rg, kv, spec.num_kv_heads, out_bytes["k_proj"])
    prefix = method.extra_kv_positions(knobs)
    attn_rg = q_rg or k_rg or v_rg or prefix > 0  # trained prefix keys/values enter here
    if attn_rg:
        _attention(out, p, spec, settings, kernel, fused, layer_masked(spec, settings, i, prefix), prefix,
                   v_storage=out_bytes.get("v_proj", e) != e)
    # Phi-3's rotary ends in a cat, so q is laid out (b, heads, s, d) and sdpa's output too: the
    # transpose back for o_proj is a copy, a tensor of its own (Llama's is a view of the output)
    o_rg = linear("o_proj", f"{p}.o_proj_input" if fused else f"{p}.attn_out", q_width, attn_rg, e)
    if gemma:  # a norm on the attention output, then the residual, then a norm before the MLP
        o_rg = norm(f"{p}.post_attention_layernorm", "post_attention_layernorm", o_rg, h)
        mid_rg = rg or o_rg
        y2_rg = norm(f"{p}.pre_feedforward_layernorm", "pre_feedforward_layernorm", mid_rg, h)
    else:
        mid_rg = rg or o_rg
        y2_rg = norm(f"{p}.post_attention_layernorm", "post_attention_layernorm", mid_rg, h)
    if fused:  # gate and up are the two halves (views) of gate_up_proj's output
        gate_rg = up_rg = linear("gate_up_proj", f"{p}.y2", h, y2_rg, r)
        g = u = out_bytes["gate_up_proj"]
        if gate_rg:
            out.save(f"{p}.gate_up", f"SiLU input and product: gate_up output ({g} B x 2i)", g * 2 * inter)
            out.save(f"{p}.act", f"product: SiLU output ({g} B x i)", g * inter)
    else:
        act = "GELU" if gemma else "SiLU"
        gate_rg = linear("gate_proj", f"{p}.y2", h, y2_rg, r)
        up_rg = linear("up_proj", f"{p}.y2", h, y2_rg, r)
        g, u = out_bytes["gate_proj"], out_bytes["up_proj"]
        if gate_rg:
            out.save(f"{p}.gate", f"{act} input: gate output ({g} B x i)", g * inter)
            out.save(f"{p}.up", f"product: up output ({u} B x i)", u * inter)
        if up_rg:
            out.save(f"{p}.act", f"product: {act} output ({g} B x i)", g * inter)
    # the product is in the wider of its factors' dtypes
    down_rg = linear("down_proj", f"{p}.prod", inter, gate_rg or up_rg, max(g, u))
    if gemma:
        before = set(out.per_token)
        down_rg = norm(f"{p}.post_feedforward_layernorm", "post_feedforward_layernorm", down_rg, h)
        out.after_mlp = set(out.per_token) - before
    return out, mid_rg or down_rg, q_rg or k_rg


def _attention(out: LayerSaved, p: str, spec: ModelSpec, settings: TrainingSettings, kernel: str, fused: bool,
               masked: bool, prefix: int, v_storage: bool = False) -> None:
    """What the attention saves when its inputs require grad (``kernel``: :mod:`.attention`).
    ``v_storage``: v comes out of its layer in the storage dtype (an adapter's fp32 output
    under autocast), so sdpa casts it as it does k."""
    e = settings.compute_bytes
    kv, nh = spec.num_kv_heads * spec.head_dim, spec.num_heads
    q_width = nh * spec.head_dim
    # transformers' repeat_kv copies k/v per head -- except from one kv head (multi-query, Gemma 3
    # 1B), where expand + reshape stays a view of the original
    gqa = nh != spec.num_kv_heads and spec.num_kv_heads > 1
    seq = settings.seq_len
    if kernel == "math":
        # CUDA's math kernel (torch _scaled_dot_product_attention_math): q and k scaled, q·kᵀ,
        # softmax, probs·v, with k/v repeated per head; 16-bit inputs are upcast to fp32 first
        # (allow_fp16_bf16_reduction_math_sdp is off by default). Not yet measured on a GPU.
        m, full = 4, seq + prefix
        out.save(f"{p}.q", "math sdpa: scaled q (fp32 x heads x d)", m * q_width)
        out.save(f"{p}.k", "math sdpa: scaled k, repeated per head (fp32)", m * q_width * full / seq)
        out.save(f"{p}.v", "math sdpa: v, repeated per head (fp32)", m * q_width * full / seq)
        out.save(f"{p}.probs", "math sdpa: softmax probabilities (fp32 x heads x s)", m * nh * full)
    elif settings.attention == "eager":
        out.save(f"{p}.q", "eager: rotated q", e * q_width)
        out.save(f"{p}.k", "eager: repeated k", e * q_width)
        out.save(f"{p}.v", "eager: repeated v", e * q_width)
        out.save(f"{p}.probs", "eager: softmax probabilities (e x heads x s)", e * nh * seq)
        if e != 4:  # softmax runs in fp32 and is cast back: both copies are kept
            out.save(f"{p}.probs32", "eager: fp32 softmax output (4 x heads x s)", 4 * nh * seq)
        if spec.config.get("attn_logit_softcapping"):  # Gemma 2: scores / cap, tanh, x cap
            out.save(f"{p}.tanh", "eager: tanh of the soft-capped scores (e x heads x s)", e * nh * seq)
    elif fused and not prefix:
        # v is a slice of qkv_proj's output: saving it keeps that whole output alive, unless a
        # mask with grouped-query heads makes transformers repeat it (a copy per head)
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
            out.save(f"{p}.mask", "sdpa: additive attention mask (e x s per token)", e * seq)
    elif masked:
        # a mask (padding, a prefix, a sliding window): transformers then repeats k/v per head
        # (use_gqa_in_sdpa needs no mask) and torch turns the boolean mask into an additive one
        # in the compute dtype, per layer (sdp_utils convert_boolean_attn_mask), which the CPU
        # flash kernel saves (with a prefix, over its positions too)
        width = (q_width if gqa else kv) * (seq + prefix) / seq
        # one kv head: repeat_kv's view of k is rotated in the storage dtype under autocast, and
        # sdpa's cast of that expanded view is a full per-head copy; v, a linear's output, is not
        # cast -- unless a prefix's fp32 values were concatenated to it, or an adapter returned it in fp32
        k_width = q_width * (seq + prefix) / seq if nh > 1 and not gqa and e != settings.element_bytes else width
        v_width = k_width if prefix or v_storage else width
        out.save(f"{p}.q", "sdpa: rotated q (e x heads x d)", e * q_width)
        out.save(f"{p}.k", "sdpa with a mask: " + ("prefix + " if prefix else "") + "k repeated per head"
                 + (" (autocast's copy of the one kv head's view)" if k_width != width else ""), e * k_width)
        out.save(f"{p}.v", "sdpa with a mask: " + ("prefix + " if prefix else "") + "v repeated per head", e * v_width)
        out.save(f"{p}.attn_out", "sdpa: output (e x heads x d)", e * q_width)
        out.save(f"{p}.lse", "sdpa: fp32 logsumexp per head", 4 * nh)
        out.save(f"{p}.mask", "sdpa: additive attention mask (e x " + ("(p + s)" if prefix else "s") + " per token)",
                 e * (seq + prefix))
    else:
        out.save(f"{p}.q", "sdpa: rotated q (e x heads x d)", e * q_width)
        out.save(f"{p}.k", "sdpa: rotated k (e x kv)", e * kv)
        out.save(f"{p}.v", "sdpa: v (e x kv)", e * kv)
        out.save(f"{p}.attn_out", "sdpa: output (e x heads x d)", e * q_width)
        out.save(f"{p}.lse", "sdpa: fp32 logsumexp per head", 4 * nh)
