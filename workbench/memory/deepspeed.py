"""Per-GPU memory under DeepSpeed ZeRO-1/2/3 (``--strategy deepspeed-zero<stage>``; the other
strategies and what they share are in :mod:`.distributed`).

Read off DeepSpeed's ``stage_1_and_2.py`` and ``stage3.py``: DeepSpeed casts every parameter,
adapters included, to the 16-bit dtype (``_cast_module_mixed_precision``). Per trainable element of a rank's partition
(``part = ceil(T / N)``) it keeps an fp32 master copy (4 B) and the optimizer's fp32 states
(AdamW 8 B, SGD momentum 4 B, SGD 0) -- whatever the model dtype -- and makes an fp32 copy
of the gradient partition for the step (4 B: ``optimizer_step``, a transient; ZeRO-3 makes
it one sub-group of at most ``sub_group_size`` = 1e9 elements at a time). ZeRO-1 keeps the
full 16-bit gradients; ZeRO-2 a 16-bit gradient partition (``grads_in_partition``);
ZeRO-3 a 16-bit gradient partition (``grad_partitions_flat_buffer``) and partitions the
parameters, frozen ones too. Communication: ZeRO-1/2, two ``reduce_bucket_size`` gradient
buckets (double-buffered under ``overlap_comm``), persistent; ZeRO-3, one reduce bucket
(persistent) and, during forward/backward, the largest layer gathered with its 16-bit
gradients (DeepSpeed's ``largest_layer_memory = 4 x largest_layer_params``) plus one
prefetch bucket. ``offload optimizer`` puts the fp32 master, states and gradients on the
host (``self.device = cpu``: ZeRO-2 reduces straight into them, ZeRO-3's 16-bit gradient
partition is pinned there too); ``offload params`` (ZeRO-3) the 16-bit parameter partition.

**Against DeepSpeed's own estimators** (``estimate_zero2_model_states_mem_needs`` and
``estimate_zero3_model_states_mem_needs``, additional_buffer_factor=1, zero_init): for full
fine-tuning with AdamW in 16-bit, weights + gradients + optimizer + optimizer_step (+ the
gathered largest layer for ZeRO-3) on the GPU equal DeepSpeed's GPU figure for ZeRO-2 with and
without offload, and for ZeRO-3 with optimizer or full offload; ``host_bytes`` equals ZeRO-2's
offload CPU figure up to 4 GPUs. Where they differ the plan follows DeepSpeed's source:

- ZeRO-3's estimator leaves out the 16-bit gradient partition (``18 = 2 + 4 + 4 + 8``: no
  16-bit gradients), which ``stage3.py`` allocates for the whole partition at init -- on the
  GPU, or pinned on the host when the optimizer is offloaded: the plan is ``2 P / N`` higher
  on the GPU (host: ``2 P / nodes``); and it makes the fp32 gradient copy per sub-group, so a
  partition above 1e9 elements needs less than ``4 P / N`` for it;
- ZeRO-2's offload CPU estimate is ``P x max(4 x total_gpus, 16)``, where ``4 x total_gpus``
  is every process holding an fp32 copy of the model while it loads, before partitioning: a
  loading peak, not offloaded state. ``host_bytes`` is the steady state, ``16 P / nodes``.
"""

from __future__ import annotations

from typing import Any

from ..methods.base import Method, TensorGroup
from ..specs import ModelSpec
from .distributed import PerGpu, _ceil, _tag, layout
from .settings import TrainingSettings
from .weights import Term

DEEPSPEED_STATES = {"adamw": 8, "sgd_momentum": 4, "sgd": 0}  # fp32 state bytes per element of the partition
SUB_GROUP_SIZE = 10**9  # ZeRO-3 steps the partition in sub-groups of this many elements (DeepSpeed default)
PREFETCH_FRACTION = 0.9  # transformers: stage3_prefetch_bucket_size = int(0.9 * h * h)


def deepspeed_per_gpu(spec: ModelSpec, method: Method, knobs: dict[str, Any], s: TrainingSettings, quant: str,
                      tensors: list[tuple[TensorGroup, int]], weights: Term) -> PerGpu:
    """One rank's model state, buckets and offloaded host bytes under ZeRO-``stage``."""
    n, e, tag = s.world_size, s.element_bytes, _tag(s)
    stage = int(s.strategy[-1])
    lay = layout(spec, method, knobs, s, quant, tensors, adapter_bytes=e)
    trainable = sum(g.total for g, _ in tensors)
    adapters = sum(g.total for g, _ in tensors if g.role != "base")
    part = _ceil(trainable, n)
    off_opt = s.offload in ("optimizer", "both")
    off_par = s.offload in ("params", "both")
    h = spec.hidden_size
    bucket = h * h * e
    states = DEEPSPEED_STATES[s.optimizer]
    dense = weights.bytes - lay.buffers  # frozen as stored + trained base weights in the 16-bit dtype
    params_part = _ceil(dense, n) + e * _ceil(adapters, n)  # one rank's ZeRO-3 parameter partition
    host_parts: list[tuple[str, int]] = []

    def host(label: str, nbytes: int) -> None:
        host_parts.append((label, nbytes))

    if stage < 3:
        w = Term("weights", weights.bytes, f"{tag} ZeRO-{stage}: parameters replicated: {weights.formula}")
        tw = Term("trainable_weights", adapters * e,
                  f"{tag} {adapters:,} adapter params x {e} B (DeepSpeed casts them to {s.dtype})")
    elif off_par:
        w = Term("weights", lay.buffers, f"{tag} ZeRO-3 offload_param: the 16-bit partition "
                                         f"({params_part:,} B) lives on the host; buffers {lay.buffers:,} B")
        tw = Term("trainable_weights", 0, f"{tag} ZeRO-3 offload_param: adapters in the host partition")
        host("16-bit parameter partition", params_part)
    else:
        w = Term("weights", _ceil(dense, n) + lay.buffers,
                 f"{tag} ZeRO-3 parameter partition ceil({dense:,} / {n}) + buffers {lay.buffers:,} B (replicated)")
        tw = Term("trainable_weights", e * _ceil(adapters, n),
                  f"{tag} ZeRO-3: ceil({adapters:,} adapter params / {n}) x {e} B (cast to {s.dtype})")

    if stage == 1:
        g = Term("gradients", trainable * e, f"{tag} ZeRO-1: full 16-bit gradients, {trainable:,} x {e} B")
    elif stage == 2 and off_opt:
        g = Term("gradients", 0, f"{tag} ZeRO-2 offload: reduced gradients go straight into the host's fp32 partition")
    elif stage == 2:
        g = Term("gradients", e * part, f"{tag} ZeRO-2: 16-bit gradient partition ceil({trainable:,} / {n}) x {e} B")
    elif off_opt:
        g = Term("gradients", 0, f"{tag} ZeRO-3 offload_optimizer: the 16-bit gradient partition is pinned on the host")
        host("16-bit gradient partition", e * part)
    else:
        g = Term("gradients", e * part, f"{tag} ZeRO-3: 16-bit gradient partition (grad_partitions_flat_buffer) "
                                        f"ceil({trainable:,} / {n}) x {e} B")

    opt_bytes = (4 + states) * part
    opt_formula = (f"ZeRO optimizer partition ceil({trainable:,} / {n}) x {4 + states} B: fp32 master 4"
                   + {"adamw": " + Adam m, v 8", "sgd_momentum": " + momentum 4", "sgd": ""}[s.optimizer])
    if off_opt:
        o = Term("optimizer", 0, f"{tag} offload_optimizer: {opt_formula} on the host")
        host("fp32 master + states", opt_bytes)
        host("fp32 gradient partition", 4 * part)
        st = Term("optimizer_step", 0, "the step runs on the host (DeepSpeedCPUAdam or the torch optimizer)")
    else:
        o = Term("optimizer", opt_bytes, f"{tag} {opt_formula}")
        fp32_grads = 4 * (part if stage < 3 else min(part, SUB_GROUP_SIZE))
        st = Term("optimizer_step", fp32_grads,
                  "fp32 copy of the gradient partition made for the step, 4 B x "
                  + (f"{part:,}" if stage < 3 else f"min({part:,}, sub_group_size {SUB_GROUP_SIZE:,})")
                  + "; the optimizer itself updates in place")

    if stage < 3:
        comm = Term("communication", 2 * bucket,
                    f"{tag} 2 gradient buckets (overlap_comm) x reduce_bucket_size 'auto' = h^2 = {h}^2 elements x "
                    f"{e} B")
        persistent = comm.bytes
    else:
        prefetch = int(PREFETCH_FRACTION * h * h) * e
        gathered = lay.layer_bytes + lay.layer_grad_bytes
        comm = Term("communication", gathered + prefetch + bucket,
                    f"{tag} ZeRO-3: largest layer gathered ({lay.layer_params:,} params, {lay.layer_bytes:,} B) "
                    f"+ largest layer's unreduced 16-bit gradients ({lay.layer_grad_bytes:,} B) (DeepSpeed's "
                    f"largest_layer_memory = 4 x largest_layer_params) + prefetch bucket int(0.9 h^2) x {e} B "
                    f"({prefetch:,}) + reduce bucket h^2 x {e} B "
                    f"({bucket:,}); bucket sizes are transformers' 'auto' values")
        persistent = bucket
    rank = sum(b for _, b in host_parts)
    listed = " + ".join(f"{label} {b:,}" for label, b in host_parts)
    host_formula = (f"DeepSpeed offload (pinned), per node: {s.gpus} ranks x ({listed} B)"
                    if host_parts else "nothing offloaded")
    return PerGpu(w, tw, g, o, st, comm, persistent, rank * s.gpus, host_formula)
