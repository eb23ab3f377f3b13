"""Per-GPU memory of one training step under DDP, FSDP and DeepSpeed ZeRO.

:func:`per_gpu` turns the single-GPU model state (weights, adapters, gradients, optimizer)
into what *one* of the N = gpus x nodes processes holds, adds the ``communication``
buffers the strategy allocates, and reports what offloading moves to the host
(``host_bytes``, per node: G = gpus per node processes share one host). Activations and
logits are per device and unchanged: ``batch_size`` is the per-device micro-batch.
``ceil(x / N)`` is one rank's equal, padded share (FSDP and ZeRO both pad the flattened
parameters so that every rank holds the same number of elements).

The launch files these figures describe are ``workbench.training.distributed``'s: accelerate
with ``mixed_precision: no`` for DDP/FSDP (the model trains in its own dtype), FSDP1 with
``use_orig_params``, transformer-block auto-wrap, ``BACKWARD_PRE`` prefetch and no forward
prefetch; DeepSpeed with ``overlap_comm`` and ``contiguous_gradients`` on and the buckets
left ``"auto"``, which transformers fills in as ``reduce_bucket_size = h^2`` and
``stage3_prefetch_bucket_size = 0.9 h^2`` elements (``integrations/deepspeed.py``).

- **ddp** (torch ``DistributedDataParallel``, ``gradient_as_bucket_view=False``, accelerate's
  default): everything replicated; the reducer's buckets are a flat copy of every trainable
  gradient, allocated once when the model is wrapped (persistent). With one process
  accelerate does not wrap the model at all (``use_distributed`` needs two), so N = 1 is
  the single-GPU plan.
- **fsdp** (FULL_SHARD): parameters (frozen and trainable, quantized bytes as stored),
  gradients and optimizer states / N. The optimizer sees 1-D shards (``use_orig_params``
  views of the flat parameter), so Adafactor cannot factor them and 8-bit Adam's 4096-element
  threshold applies per shard. Communication, alive during forward and backward: the root
  unit's unsharded parameters (embeddings, final norm, head: the root is not resharded after
  forward), two decoder blocks unsharded (the current one and the one ``BACKWARD_PRE``
  prefetches) and one unit's unsharded gradients before their reduce-scatter. ``--offload
  params`` (= ``both``; FSDP's ``CPUOffload(offload_params=True)``) keeps the sharded
  parameters, gradients and the optimizer step on the host. Optimizer-only offload is not an
  FSDP option.
- **fsdp-grad-op** (SHARD_GRAD_OP): shards as above at rest, but the unsharded parameters of
  every unit stay gathered from forward to the end of backward (communication), plus one
  unit's unsharded gradients.
- FSDP with one process: torch switches any sharding strategy to ``NO_SHARD``
  (``_init_utils``): nothing is divided and nothing gathered.
- **deepspeed-zero1/2/3**: :mod:`.deepspeed` (DeepSpeed's ZeRO optimizer, checked against
  DeepSpeed's own estimators).

**End of backward** (``end_of_backward``, see :mod:`.planner`): this GPU's gradients + the
logits + the embedding's backward temporaries + the communication buffers in flight during
backward. Every rank runs the embedding's backward over the whole gathered weight for its own
micro-batch, so those temporaries are never divided; where the gradients are partitioned or
offloaded, the whole gradient autograd produces for the embedding is a tensor of its own until
the strategy reduces or copies it away, and is added
(:func:`embedding_backward_per_gpu`). Under checkpointing, the tied head's gradient that waits
for the embedding's is unsharded too (``recompute_per_gpu`` scales only the stored gradients).

Like DeepSpeed's estimator the plan ignores ZeRO-3's unpartitioned small parameters
(``param_persistence_threshold = 10 h``: the norms, a few MB) and NCCL's own buffers (outside
torch's allocator). The plan does not check that a combination runs (FSDP1 needs one dtype per
flat parameter, bitsandbytes int8 weights cannot be sharded): ``workbench train`` finds out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import SettingsError
from ..methods.base import Method, TensorGroup
from ..specs import ModelSpec
from .optimizer import optimizer_step_transient, optimizer_term
from .settings import TrainingSettings
from .weights import ADAPTER_BYTES, Term, buffer_bytes, param_storage, quantized_linear_names

DEEPSPEED_OPTIMIZERS = ("adamw", "sgd", "sgd_momentum")


@dataclass(frozen=True)
class PerGpu:
    """One process's model state, communication buffers and the host memory offloading uses."""

    weights: Term
    trainable_weights: Term
    gradients: Term
    optimizer: Term
    optimizer_step: Term
    communication: Term
    communication_persistent: int  # the part of ``communication`` alive the whole run
    host_bytes: int
    host_formula: str


def is_distributed(settings: TrainingSettings) -> bool:
    return settings.world_size > 1 or settings.strategy != "single"


def check(settings: TrainingSettings) -> None:
    """Combinations the settings' own validation lets through but the strategies refuse."""
    s = settings
    if s.strategy.startswith("fsdp") and s.offload == "optimizer":
        raise SettingsError(
            "FSDP has no optimizer-only offload: CPUOffload(offload_params=True) moves the sharded parameters, "
            "gradients and the optimizer step to the CPU together; use --strategy fsdp --offload params, or "
            "deepspeed-zero1/2/3 --offload optimizer")
    if s.strategy.startswith("deepspeed") and s.optimizer not in DEEPSPEED_OPTIMIZERS:
        raise SettingsError(f"DeepSpeed brings its own optimizer: choose adamw, sgd or sgd_momentum, not {s.optimizer}")


def _ceil(x: int, n: int) -> int:
    return -(-x // n)


def _human(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{int(n):,} B"


@dataclass(frozen=True)
class Layout:
    """Where the model's bytes sit: per decoder block, outside the blocks (the root), per
    module (DeepSpeed's "layer": a module's own parameters), with trainable gradients."""

    buffers: int
    block_bytes: int  # largest decoder block, stored bytes of its parameters and adapters
    block_grad_bytes: int  # largest decoder block's trainable gradients
    root_bytes: int  # everything outside the decoder blocks
    root_grad_bytes: int
    layer_bytes: int  # largest single module's own parameters
    layer_params: int  # its number of elements
    layer_grad_bytes: int  # largest single module's trainable gradients


def layout(spec: ModelSpec, method: Method, knobs: dict[str, Any], settings: TrainingSettings, quant: str,
           tensors: list[tuple[TensorGroup, int]], adapter_bytes: int | None = None) -> Layout:
    """Stored bytes per block, root and module, by the rules of ``weights.weights_term``.
    ``adapter_bytes`` overrides the adapters' element size (DeepSpeed casts them to 16-bit)."""
    e = settings.element_bytes
    inv = spec.inventory
    block = re.compile(rf"^{re.escape(inv.block_prefix)}\.(\d+)\.") if inv.block_prefix else None
    quantized = quantized_linear_names(spec, quant)
    blocks: dict[str, int] = {}
    block_grads: dict[str, int] = {}
    modules: dict[str, list[int]] = {}  # module -> [bytes, elements]
    module_grads: dict[str, int] = {}
    root = root_grads = 0

    def where(name: str) -> str | None:
        m = block.match(name) if block else None
        return m.group(1) if m else None

    def add(name: str, module: str, nbytes: int, numel: int) -> None:
        nonlocal root
        b = where(name)
        if b is None:
            root += nbytes
        else:
            blocks[b] = blocks.get(b, 0) + nbytes
        entry = modules.setdefault(module, [0, 0])
        entry[0] += nbytes
        entry[1] += numel

    def add_grad(name: str, module: str, nbytes: int) -> None:
        nonlocal root_grads
        b = where(name)
        if b is None:
            root_grads += nbytes
        else:
            block_grads[b] = block_grads.get(b, 0) + nbytes
        module_grads[module] = module_grads.get(module, 0) + nbytes

    for p in inv.params:
        add(p.name, p.name.rsplit(".", 1)[0], param_storage(p, quantized, quant, knobs, e)[1], p.numel)
    for g in method.extra_weight_groups(spec, knobs):
        add(g.label, g.label, g.total * (g.element_bytes or ADAPTER_BYTES), g.total)
    for g, b in tensors:
        size = b if g.role == "base" else (adapter_bytes or b)
        if g.role != "base":  # base weights are already counted among the parameters
            add(g.label, g.label, g.total * size, g.total)
        add_grad(g.label, g.label if g.role != "base" else g.label.rsplit(".", 1)[0], g.total * size)
    layer = max(modules.items(), key=lambda kv: kv[1][0], default=("", [0, 0]))[1]
    return Layout(
        buffers=buffer_bytes(spec, settings.element_bytes), block_bytes=max(blocks.values(), default=0),
        block_grad_bytes=max(block_grads.values(), default=0), root_bytes=root, root_grad_bytes=root_grads,
        layer_bytes=layer[0], layer_params=layer[1], layer_grad_bytes=max(module_grads.values(), default=0),
    )


def _sharded(tensors: list[tuple[TensorGroup, int]], n: int) -> list[tuple[TensorGroup, int]]:
    """Each tensor as the 1-D shard one rank's optimizer sees."""
    return [(TensorGroup(g.label, (_ceil(g.numel, n),), g.count, g.role, g.element_bytes), b) for g, b in tensors]


def per_gpu(spec: ModelSpec, method: Method, knobs: dict[str, Any], settings: TrainingSettings, quant: str,
            tensors: list[tuple[TensorGroup, int]], weights: Term, trainable_weights: Term, gradients: Term,
            optimizer: Term, optimizer_step: Term) -> PerGpu:
    """The single-GPU terms, partitioned for ``settings.strategy`` over ``settings.world_size``."""
    check(settings)
    s = settings
    if s.strategy in ("single", "ddp"):
        return _ddp(s, weights, trainable_weights, gradients, optimizer, optimizer_step)
    if s.strategy.startswith("fsdp"):
        return _fsdp(spec, method, knobs, s, quant, tensors, weights, trainable_weights, gradients, optimizer,
                     optimizer_step)
    from .deepspeed import deepspeed_per_gpu  # it builds on this module's layout and PerGpu

    return deepspeed_per_gpu(spec, method, knobs, s, quant, tensors, weights)


def recompute_per_gpu(spec: ModelSpec, trained: set[str], e: int, recompute_bytes: int,
                      per_layer_bytes: tuple[int, ...], ratio: float) -> int:
    """The checkpointed block's recompute term holds the gradients of the trained weights of
    that block and every later one (``activations._trained_grad_bytes_from_each_block``); on
    one GPU of a sharded run only ``ratio`` = per-GPU gradients / all gradients of them stay
    (the rest has been reduce-scattered away, or offloaded)."""
    from .activations import _trained_grad_bytes_from_each_block

    grads_from = _trained_grad_bytes_from_each_block(spec, trained, e)
    if not any(grads_from) or len(grads_from) != len(per_layer_bytes):
        return recompute_bytes
    full = max(a + g for a, g in zip(per_layer_bytes, grads_from))
    kept = max(a + math.ceil(g * ratio) for a, g in zip(per_layer_bytes, grads_from))
    return recompute_bytes - full + kept


def embedding_backward_per_gpu(settings: TrainingSettings, term: Term, embedding_grad: int, gradients: Term,
                               per_gpu_gradients: Term) -> Term:
    """The end-of-backward embedding temporaries on one GPU. Every rank runs the embedding's
    backward on its own micro-batch over the whole (gathered) weight, so the temporaries are
    not divided. Where this GPU keeps all gradients (DDP, ZeRO-1, one-process FSDP) the
    embedding's gradient is counted among them, as on one GPU; where it keeps only a share,
    or none (FSDP / ZeRO-2 / ZeRO-3 partitions, offloading), the whole gradient autograd
    produces for the embedding (the tied sum, or the untied ``embedding_dense_backward``
    output) is a tensor of its own on this GPU until it is reduced or copied away: + G."""
    tag = _tag(settings)
    if embedding_grad and per_gpu_gradients.bytes < gradients.bytes:
        return Term(term.name, term.bytes + embedding_grad,
                    f"{tag} {term.formula} + the embedding's unsharded gradient G ({embedding_grad:,} B) before it "
                    "is reduced or offloaded (this GPU keeps only a share of the gradients, or none)")
    return Term(term.name, term.bytes, f"{tag} per device: {term.formula}")


def _tag(s: TrainingSettings) -> str:
    return f"[{s.strategy}, N={s.world_size}]"


def _ddp(s: TrainingSettings, weights: Term, trainable: Term, grads: Term, opt: Term, step: Term) -> PerGpu:
    tag = _tag(s)

    def keep(t: Term) -> Term:
        return Term(t.name, t.bytes, f"{tag} replicated: {t.formula}")

    if s.world_size == 1:
        comm = Term("communication", 0, f"{tag} one process: accelerate does not wrap the model in DDP")
    else:
        comm = Term("communication", grads.bytes,
                    f"{tag} DDP gradient buckets (gradient_as_bucket_view=False): a flat copy of every trainable "
                    f"gradient, {grads.bytes:,} B, allocated once when the model is wrapped")
    return PerGpu(keep(weights), keep(trainable), keep(grads), keep(opt), step, comm, comm.bytes, 0,
                  "nothing offloaded")


def _fsdp(spec, method, knobs, s: TrainingSettings, quant, tensors, weights: Term, trainable: Term, grads: Term,
          opt: Term, step: Term) -> PerGpu:
    n, tag = s.world_size, _tag(s)
    if n == 1:
        def keep(t: Term) -> Term:
            return Term(t.name, t.bytes, f"{tag} one process: torch runs FSDP as NO_SHARD; {t.formula}")

        comm = Term("communication", 0, f"{tag} one process (NO_SHARD): nothing gathered")
        host = (weights.bytes - buffer_bytes(spec, s.element_bytes) + trainable.bytes + grads.bytes + opt.bytes
                if s.offload != "none" else 0)
        if host:
            return PerGpu(Term("weights", buffer_bytes(spec, s.element_bytes), f"{tag} CPU offload: only buffers stay on the GPU"),
                          Term("trainable_weights", 0, f"{tag} CPU offload: on the host"),
                          Term("gradients", 0, f"{tag} CPU offload: on the host"),
                          Term("optimizer", 0, f"{tag} CPU offload: the optimizer steps on the host"),
                          Term("optimizer_step", 0, "the step runs on the host"), comm, 0, host,
                          f"CPU offload, NO_SHARD: parameters + gradients + optimizer = {_human(host)}")
        return PerGpu(keep(weights), keep(trainable), keep(grads), keep(opt), step, comm, 0, 0, "nothing offloaded")
    lay = layout(spec, method, knobs, s, quant, tensors)
    sharded = _sharded(tensors, n)
    w = Term("weights", _ceil(weights.bytes - lay.buffers, n) + lay.buffers,
             f"{tag} parameters / N: ceil(({weights.bytes:,} - {lay.buffers:,} B buffers) / {n}) + buffers "
             "(replicated)")
    tw = Term("trainable_weights", _ceil(trainable.bytes, n), f"{tag} adapters / N: ceil({trainable.bytes:,} / {n})")
    g = Term("gradients", _ceil(grads.bytes, n), f"{tag} sharded gradients after reduce-scatter: "
                                                  f"ceil({grads.bytes:,} / {n})")
    o = optimizer_term(s.optimizer, sharded)
    o = Term("optimizer", o.bytes, f"{tag} states of 1-D shards (use_orig_params): {o.formula}")
    st = optimizer_step_transient(s.optimizer, s.device, sharded)
    if s.strategy == "fsdp":
        grad_unit = max(lay.block_grad_bytes, lay.root_grad_bytes)
        comm_bytes = lay.root_bytes + 2 * lay.block_bytes + grad_unit
        comm = Term("communication", comm_bytes,
                    f"{tag} FULL_SHARD, during forward/backward: root unit unsharded ({lay.root_bytes:,} B: "
                    f"embeddings, norm, head) + 2 x largest block unsharded (current + BACKWARD_PRE prefetch, 2 x "
                    f"{lay.block_bytes:,} B) + one unit's unsharded gradients before reduce-scatter ({grad_unit:,} B)")
    else:
        full = weights.bytes - lay.buffers + trainable.bytes
        grad_unit = max(lay.block_grad_bytes, lay.root_grad_bytes)
        comm = Term("communication", full + grad_unit,
                    f"{tag} SHARD_GRAD_OP: every unit's parameters stay unsharded from forward to the end of backward "
                    f"({full:,} B) + one unit's unsharded gradients before reduce-scatter ({grad_unit:,} B)")
    if s.offload == "none":
        return PerGpu(w, tw, g, o, st, comm, 0, 0, "nothing offloaded")
    rank = w.bytes - lay.buffers + tw.bytes + g.bytes + o.bytes
    host = rank * s.gpus
    return PerGpu(
        Term("weights", lay.buffers, f"{tag} CPU offload: sharded parameters on the host; buffers {lay.buffers:,} B"),
        Term("trainable_weights", 0, f"{tag} CPU offload: sharded adapters on the host"),
        Term("gradients", 0, f"{tag} CPU offload: sharded gradients are copied to the host"),
        Term("optimizer", 0, f"{tag} CPU offload: the optimizer steps on the host"),
        Term("optimizer_step", 0, "the step runs on the host"), comm, 0, host,
        f"FSDP CPUOffload(offload_params=True), per node: {s.gpus} ranks x (sharded parameters "
        f"{w.bytes - lay.buffers:,} + adapters {tw.bytes:,} + gradients {g.bytes:,} + optimizer {o.bytes:,} B)")
