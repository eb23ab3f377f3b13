"""``plan(model, method, knobs, settings) -> Plan``: the memory of one training step, as a
breakdown of named components with formulas, and the true peak of the step.

Components (what is resident): ``weights``, ``trainable_weights``, ``gradients``,
``optimizer``, ``activations``, ``logits``, ``overhead``. The peak is not their sum:

    persistent      = weights + trainable_weights + optimizer + overhead
    backward        = activations + max(logits - the logits tensor + fp32 loss-gradient temporaries,
                                        one recomputed block)
                      (+ all gradients when they accumulate over micro-batches)
    end_of_backward = gradients + embedding-backward temporaries
    step            = gradients + optimizer-step temporaries
    peak            = persistent + max(backward, end_of_backward, step)

The loop is the worker's (``transformers.Trainer.training_step``): ``compute_loss`` returns
the loss only, so the model output -- its logits -- is freed before backward starts; what
the loss saved (the fp32 log-softmax) stays until the loss's backward has run. Backward
starts with every saved activation alive and the gradients still empty. It ends in the
embedding's backward, when every other gradient exists and the activations are gone; when
the embedding is trained its backward allocates its gradient there, and with tied
input/output embeddings autograd sums the head's and the embedding's gradients out of place
(:func:`_embedding_backward`). The optimizer step (after ``clip_grad_norm_``, whose
per-tensor norms are scalars and whose scaling is in place) runs when activations are freed
and all gradients exist.

Several GPUs (``settings.world_size > 1`` or a strategy other than ``single``): every
figure is per GPU. :mod:`.distributed` partitions weights, gradients and optimizer states by
the strategy, adds a ``communication`` component (buffers the strategy allocates: DDP's
gradient buckets, FSDP's gathered blocks, ZeRO's buckets and gathered layer; persistent ones
join ``persistent``, the others ``backward``) and reports what offloading moves to host
memory as ``host_bytes`` (per node). ``communication`` is listed only in such plans; a
single-GPU plan has none (``component("communication") == 0``) and keeps its seven
components. Activations and logits are per device: ``batch_size`` is the per-device
micro-batch; so are the embedding-backward temporaries (each rank back-propagates its own
micro-batch through the whole embedding), and where this GPU keeps only a share of the
gradients the embedding's whole gradient is added to them until it is reduced. ``inference_bytes`` stays the one-GPU figure.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import SettingsError
from ..methods.base import Method
from ..paths import PACKAGE_DIR
from ..specs import ModelSpec
from .activations import estimate_activations
from .attention import describe_kernels, runnable_attention
from .distributed import embedding_backward_per_gpu, is_distributed, per_gpu, recompute_per_gpu
from .optimizer import optimizer_step_transient, optimizer_term
from .settings import TrainingSettings
from .weights import Term, gradients_term, trainable_tensors, trainable_weights_term, weights_term

#: the phases of a step whose memory the plan follows, as a user reads them
PHASES = {"backward": "the start of backward (the forward's saved activations all alive)",
          "end_of_backward": "the end of backward (every gradient exists)",
          "step": "the optimizer step (gradients and the step's temporaries)"}

COMPONENTS = ("weights", "trainable_weights", "gradients", "optimizer", "activations", "logits", "overhead",
              "communication")


@dataclass(frozen=True)
class Plan:
    model: str
    model_label: str
    method: str
    knobs: dict[str, Any]
    settings: dict[str, Any]
    quant: str
    total_params: int
    trainable_params: int
    components: tuple[Term, ...]
    peak_terms: tuple[Term, ...]
    peak_bytes: int
    inference_bytes: int
    inference_formula: str
    activations_exact: bool  # the architecture's blocks follow a measured walk
    world_size: int = 1
    per_gpu: bool = False
    host_bytes: int = 0
    host_formula: str = "nothing offloaded"
    #: why the activations are approximate ("" when architecture, method and precision all follow a measured walk)
    activations_note: str = ""
    #: the phase of the step that sets the peak (a key of :data:`PHASES`) and what is alive then:
    #: the parts sum to ``peak_bytes``
    peak_phase: str = ""
    peak_parts: tuple[Term, ...] = ()
    #: the attention kernel planned and why (memory/attention.py); CUDA choices say they are unmeasured
    attention: str = ""

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    @property
    def model_state_bytes(self) -> int:
        """Weights, adapters, gradients and optimizer state: what a step holds before activations."""
        return sum(self.component(n) for n in ("weights", "trainable_weights", "gradients", "optimizer"))

    @property
    def peak_over_inference(self) -> float:
        return self.peak_bytes / self.inference_bytes

    def component(self, name: str) -> int:
        """Bytes of one component; 0 for ``communication`` in a single-GPU plan."""
        if name == "communication" and not self.per_gpu:
            return 0
        return next(t.bytes for t in self.components if t.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "model_label": self.model_label, "method": self.method, "knobs": self.knobs,
            "settings": self.settings, "quant": self.quant, "total_params": self.total_params,
            "trainable_params": self.trainable_params, "trainable_percent": round(self.trainable_percent, 6),
            "components": [asdict(t) for t in self.components],
            "peak_terms": [asdict(t) for t in self.peak_terms],
            "peak_bytes": self.peak_bytes, "inference_bytes": self.inference_bytes,
            "inference_formula": self.inference_formula,
            "peak_over_inference": round(self.peak_over_inference, 4),
            "model_state_bytes": self.model_state_bytes,
            "model_state_bytes_per_param": round(self.model_state_bytes / self.total_params, 4)
            if self.total_params else 0.0,
            "activations_exact_architecture": self.activations_exact,
            "activations_exact": not self.activations_note, "activations_note": self.activations_note,
            "per_gpu": self.per_gpu, "world_size": self.world_size,
            "host_bytes": self.host_bytes, "host_formula": self.host_formula,
            "peak_phase": self.peak_phase, "peak_phase_label": PHASES.get(self.peak_phase, ""),
            "peak_parts": [asdict(t) for t in self.peak_parts], "attention": self.attention,
        }


def device_constants() -> dict[str, Any]:
    return json.loads((PACKAGE_DIR / "memory" / "constants.json").read_text())


#: strategies that shard the parameters themselves (bitsandbytes weights must be flattened too)
PARAM_SHARDING = ("fsdp", "fsdp-grad-op", "deepspeed-zero3")


def resolve_quant(method: Method, settings: TrainingSettings) -> str:
    """The base's storage (none, 8bit, 4bit) for the method and settings; combinations that
    cannot train are refused with the reason. 4-bit weights under a parameter-sharding
    strategy are stored in the compute dtype (``bnb_4bit_quant_storage``, as peft's and
    accelerate's FSDP-QLoRA guides do: the same bytes, in a dtype FSDP can flatten); 8-bit
    weights cannot be sharded at all."""
    quant = _wanted_quant(method, settings)
    if settings.mixed and quant != "none":
        raise SettingsError(f"precision {settings.precision} keeps fp32 master weights, which a {quant} base does not "
                            f"have; choose bf16 for {method.name} (the quantized base computes in bfloat16)")
    if quant == "8bit" and settings.strategy in PARAM_SHARDING:
        raise SettingsError(f"an 8-bit base cannot be sharded by {settings.strategy} (bitsandbytes int8 weights "
                            "cannot be flattened); use qlora (4-bit), or ddp / deepspeed-zero1/2, which keep whole "
                            "weights on every GPU")
    return quant


def _wanted_quant(method: Method, settings: TrainingSettings) -> str:
    wanted = settings.quant
    if method.quantization:
        if wanted not in (None, method.quantization):
            raise SettingsError(f"method {method.name!r} stores its base in {method.quantization}; got --quant {wanted}")
        return method.quantization
    if wanted in (None, "none"):
        return "none"
    if not method.supports_quantization:
        raise SettingsError(
            f"method {method.name!r} cannot train on a {wanted} base (quantized weights cannot be trained or "
            f"wrapped by this method); use --quant none, or a method such as qlora or lora-8bit"
        )
    return wanted


def _logits(spec: ModelSpec, settings: TrainingSettings, tokens: int, head_saves_input: bool,
            head_cast: int = 0) -> tuple[Term, Term]:
    """transformers ``ForCausalLMLoss``: logits (e x V, the compute dtype) are returned;
    ``logits.float()`` is a temporary fp32 copy; ``cross_entropy``'s log_softmax saves its
    fp32 output; the labels are padded and shifted into an int64 copy. Backward of the loss
    then holds an fp32 gradient of the log-probabilities while the saved output is still
    alive. Under autocast the head also keeps its cast copy of the weight (``head_cast``).
    Soft-capped logits (Gemma 2: ``cap x tanh(logits / cap)``) keep tanh's output (e x V)."""
    e, v = settings.compute_bytes, spec.vocab_size
    head_input = e * spec.hidden_size * tokens if head_saves_input else 0
    capped = e * v * tokens if spec.config.get("final_logit_softcapping") else 0
    # the labels, padded by one and shifted: a single example's shifted view is contiguous and
    # keeps the padded storage (s + 1); a batch's is copied (b·s)
    labels = 8 * (tokens + 1 if settings.batch_size == 1 else tokens)
    resident = e * v * tokens + 4 * v * tokens + labels + 4 + head_input + head_cast + capped
    logits = Term("logits", resident,
                  f"b·s x V x (e + 4) = {tokens}x{v}x({e}+4): logits + fp32 log-softmax saved for the loss"
                  + (f" + tanh of the soft-capped logits (e x V x b·s = {capped:,} B)" if capped else "")
                  + f" + int64 labels{' + head input' if head_input else ''}"
                  + (f" + the head's weight cast to {settings.compute_dtype} ({head_cast:,} B)" if head_cast else ""))
    transient = Term("loss_backward", 2 * 4 * v * tokens,
                     "log-softmax backward: fp32 gradients of the log-probabilities and of the logits")
    return logits, transient


def embedding_name(spec: ModelSpec) -> str | None:
    """The input embedding's parameter (the first one named ``*embed*``, as in activations)."""
    return next((p.name for p in spec.inventory.params if "embed" in p.name), None)


def _embedding_backward(spec: ModelSpec, settings: TrainingSettings, tensors, trained: set[str]) -> tuple[Term, int]:
    """What the embedding's backward adds at the end of backward, beyond the stored
    gradients; returns the term and the bytes of the embedding's gradient (0 if frozen).

    With G = V x h x e (the embedding's gradient) and the gradient of the embedding output
    e x h x b·s (the input of ``embedding_dense_backward``):

    - untied: ``embedding_dense_backward`` allocates G while the output gradient is alive; G
      becomes the ``.grad`` itself (AccumulateGrad steals a fresh gradient): + e·h·b·s;
    - tied: the head's gradient arrived first and waits in autograd's input buffer. It is a
      view (``mm_mat2_backward`` returns ``(grad.t() @ x).t()`` for nn.Linear's transposed
      weight, then ``t()`` again), so its storage has two users and ``InputBuffer::accumulate``
      cannot add in place: ``old + new`` is a new tensor. Alive at that ``add``: the head's G,
      the embedding's G and their sum (the ``.grad``); just before, in
      ``embedding_dense_backward``: the head's G, the output gradient and the new G, while the
      ``.grad`` does not exist yet: + max(2 G, G + e·h·b·s);
    - accumulating over micro-batches, ``.grad`` already holds the previous sum, so the fresh
      gradient is not stolen but added in place: + G in both cases.
    """
    inv = spec.inventory
    embed = embedding_name(spec)
    grad = next((g.total * b for g, b in tensors if g.label == embed), 0) if embed in trained else 0
    if not grad:
        return Term("embedding_backward", 0, "embedding frozen: no embedding gradient"), 0
    e = settings.element_bytes
    out_grad = e * spec.hidden_size * settings.batch_size * settings.seq_len
    accum = grad if settings.grad_accum > 1 else 0
    if inv.tied_embeddings:
        tmp = max(2 * grad, grad + out_grad) + accum
        formula = (f"tied embeddings: the head's gradient G = V x h x e = {grad:,} B waits in autograd's input buffer "
                   f"and is summed with the embedding's out of place: max(2 G, G + output gradient e·h·b·s "
                   f"{out_grad:,} B)")
    else:
        tmp = out_grad + accum
        formula = f"embedding_dense_backward: the gradient of the embedding output e·h·b·s = {out_grad:,} B"
    if accum:
        formula += f" + G ({grad:,} B): the fresh gradient beside the accumulated one"
    return Term("embedding_backward", tmp, formula), grad


def plan(spec: ModelSpec, method: Method, knobs: dict[str, Any] | None, settings: TrainingSettings) -> Plan:
    """The memory plan. Pure arithmetic over the spec's inventory: no weights, no GPU."""
    knobs = method.resolve(knobs)
    settings = runnable_attention(spec, settings)  # what the loader will run (Gemma 2: eager)
    quant = resolve_quant(method, settings)
    if settings.gradient_checkpointing and not method.supports_gradient_checkpointing:
        raise SettingsError(f"method {method.name!r} cannot be combined with gradient checkpointing "
                            "(transformers drops the prefix cache in checkpointed blocks); turn it off")
    e = settings.element_bytes
    tokens_per_example = settings.seq_len + method.extra_tokens(knobs)
    tokens = settings.batch_size * tokens_per_example
    trained = method.trains_base(spec, knobs)
    tensors = trainable_tensors(spec, method, knobs, settings)
    trainable_params = sum(g.total for g, _ in tensors)
    if settings.loss_scaling and not settings.mixed and not settings.strategy.startswith("deepspeed"):
        half = [g.label for g, b in tensors if b == 2]
        if half:
            raise SettingsError(f"precision fp16 keeps {method.name}'s trained weights ({', '.join(half[:3])}"
                                f"{', ...' if len(half) > 3 else ''}) in float16, and the Trainer's GradScaler "
                                "cannot unscale fp16 gradients; choose fp16-mixed (fp32 master weights) or bf16")

    weights = weights_term(spec, method, knobs, settings, quant)
    trainable_w = trainable_weights_term(tensors)
    grads = gradients_term(tensors)
    opt = optimizer_term(settings.optimizer, tensors)
    acts = estimate_activations(spec, method, knobs, settings, trained, tokens_per_example, quant)
    activations = Term("activations", acts.saved_bytes, acts.formula)
    logits, loss_bwd = _logits(spec, settings, tokens, acts.head_input_saved, acts.head_cast_bytes)
    reg, reg_formula = method.loss_saved(spec, knobs, settings)
    if reg:
        logits = Term("logits", logits.bytes + reg, f"{logits.formula} + {reg_formula} ({reg:,} B)")
    # gradients a loss term of the method's own makes first (AdaLoRA's regularizer): alive all backward
    early = sum(g.total * b for g, b in tensors if method.early_gradient(g))
    if settings.device == "cuda":
        c = device_constants()["cuda"]
        overhead = Term("overhead", c["cublas_workspace_bytes"],
                        "cuBLAS workspace (constants.json); the CUDA context is outside torch's allocator")
    else:
        overhead = Term("overhead", 0, "CPU: no device overhead (process RSS reported separately)")
    step_tmp = optimizer_step_transient(settings.optimizer, settings.device, tensors)
    emb_bwd, emb_grad = _embedding_backward(spec, settings, tensors, trained)
    # the logits tensor (e x V per token): the Trainer drops the model output before backward
    logits_tensor = settings.compute_bytes * spec.vocab_size * tokens
    # inference runs on one GPU: taken before partitioning, with the weights in the compute dtype
    # (a model trained in mixed precision is served in 16-bit)
    inference_weights = trainable_w.bytes + (weights.bytes if not settings.mixed else weights_term(
        spec, method, knobs, replace(settings, dtype=settings.autocast, autocast=None), quant).bytes)
    distributed = is_distributed(settings)
    comm_persistent = comm_backward = 0
    host_bytes, host_formula = 0, "nothing offloaded"
    recompute = acts.recompute_bytes
    if distributed:
        part = per_gpu(spec, method, knobs, settings, quant, tensors, weights, trainable_w, grads, opt, step_tmp)
        emb_bwd = embedding_backward_per_gpu(settings, emb_bwd, emb_grad, grads, part.gradients)
        if recompute and grads.bytes:
            recompute = recompute_per_gpu(spec, trained, e, recompute, acts.per_layer_bytes,
                                          part.gradients.bytes / grads.bytes)
        weights, trainable_w, grads, opt, step_tmp = (part.weights, part.trainable_weights, part.gradients,
                                                      part.optimizer, part.optimizer_step)
        comm_persistent = part.communication_persistent
        comm_backward = part.communication.bytes - comm_persistent
        host_bytes, host_formula = part.host_bytes, part.host_formula
        components = (weights, trainable_w, grads, opt, activations, logits, overhead, part.communication)
    else:
        components = (weights, trainable_w, grads, opt, activations, logits, overhead)

    persistent = weights.bytes + trainable_w.bytes + opt.bytes + overhead.bytes + comm_persistent
    # The loss backward runs first, while every activation is alive and the logits tensor is
    # already freed; a checkpointed block is recomputed after the loss's saved tensors and
    # gradients are gone.
    # The method's own loss term is back-propagated before the model's: its saved tensors are
    # freed by then, its gradients made.
    # Without checkpointing a materialised delta's backward (LoKr, LoHa) can outgrow the loss's.
    block_bwd = acts.block_backward_bytes
    loss_part = logits.bytes - reg - logits_tensor + loss_bwd.bytes  # what the loss keeps while it is back-propagated
    backward = activations.bytes + max(loss_part, recompute, block_bwd) + comm_backward
    if settings.grad_accum > 1:
        backward += grads.bytes
    elif early:
        backward += early
    end_of_backward = grads.bytes + emb_bwd.bytes + comm_backward
    step = grads.bytes + step_tmp.bytes
    peak_terms = (
        Term("persistent", persistent, "weights + trainable_weights + optimizer + overhead"
             + (f" + persistent communication buffers ({comm_persistent:,} B)" if comm_persistent else "")),
        Term("backward", backward,
             "activations + "
             + ("max(logits - the logits tensor (freed by the Trainer before backward, "
                f"e x V x b·s = {logits_tensor:,} B) + loss-gradient temporaries, one recomputed block)" if recompute
                else f"logits - the logits tensor (freed by the Trainer before backward, e x V x b·s = "
                     f"{logits_tensor:,} B) + loss-gradient temporaries")
             + (f" + gathered parameters/gradients in flight ({comm_backward:,} B)" if comm_backward else "")
             + (" + accumulated gradients" if settings.grad_accum > 1 else "")
             + (f" + the gradients {method.name}'s own loss term made first ({early:,} B; its saved tensors "
                f"freed, {reg:,} B)" if early and settings.grad_accum == 1 else "")
             + (f"; here an adapter's backward ({block_bwd:,} B: its materialised delta's gradients, with the later "
                "blocks' saved tensors freed) outgrows the loss's" if block_bwd > max(loss_part, recompute) else "")),
        Term("recompute", recompute, "one block's activations, recomputed under checkpointing"
             + (" (+ this GPU's share of the later blocks' gradients)" if distributed and recompute else "")),
        loss_bwd,
        Term("end_of_backward", end_of_backward,
             "gradients + embedding backward (the Trainer holds no logits through backward)"
             + (f" + gathered parameters/gradients in flight ({comm_backward:,} B)" if comm_backward else "")),
        emb_bwd,
        Term("step", step, "gradients + " + step_tmp.formula),
    )
    peak = persistent + max(backward, end_of_backward, step)
    phase = max((("backward", backward), ("end_of_backward", end_of_backward), ("step", step)), key=lambda x: x[1])[0]
    comm = comm_persistent + (comm_backward if phase != "step" else 0)
    parts = [weights, trainable_w, opt,
             Term("buffers", overhead.bytes + comm, overhead.formula + (f"; the strategy's buffers {comm:,} B" if comm else ""))]
    if phase == "backward":
        parts.append(activations)
        if block_bwd > max(loss_part, recompute):
            parts.append(Term("temporaries", block_bwd, "an adapter's backward: the gradients of its materialised "
                                                        "delta weight, beside the residual stream's gradient"))
        elif recompute > loss_part:
            parts.append(Term("temporaries", recompute, "one checkpointed block recomputed (with the gradients after it)"))
        else:
            parts.append(Term("logits", loss_part, "what the loss saved, and the loss backward's fp32 temporaries "
                                                   f"({loss_bwd.bytes:,} B); the Trainer freed the logits tensor itself"))
        if settings.grad_accum > 1:
            parts.append(Term("gradients", grads.bytes, "accumulated over the micro-batches"))
        elif early:
            parts.append(Term("gradients", early, f"made first by {method.name}'s own loss term"))
    elif phase == "end_of_backward":
        parts += [grads, Term("temporaries", emb_bwd.bytes, emb_bwd.formula)]
    else:
        parts += [grads, Term("temporaries", step_tmp.bytes, step_tmp.formula)]
    parts = tuple(t for t in parts if t.bytes)

    kv_cache = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * tokens * settings.compute_bytes
    inference = inference_weights + kv_cache
    return Plan(
        model=spec.name, model_label=spec.label or spec.name, method=method.name, knobs=knobs,
        settings={**settings.as_dict(), "quant": quant, "precision": settings.precision}, quant=quant, total_params=spec.total_params,
        trainable_params=trainable_params, components=components, peak_terms=peak_terms, peak_bytes=peak,
        inference_bytes=inference,
        inference_formula=f"weights + adapters + KV cache 2·L·kv_heads·d·b·s·e = {kv_cache:,} B",
        activations_exact=acts.exact_architecture, world_size=settings.world_size, per_gpu=distributed,
        host_bytes=host_bytes, host_formula=host_formula, activations_note=acts.approximate_because,
        peak_phase=phase, peak_parts=parts,
        attention=describe_kernels(spec, replace(settings, seq_len=tokens_per_example),
                                    method.extra_kv_positions(knobs)),
    )
