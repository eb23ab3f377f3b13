"""Measured memory of real training steps, in the planner's schema and component names.

- ``weights``, ``trainable_weights``, ``gradients``, ``optimizer``: bytes of the real
  tensors (parameters, buffers, bitsandbytes quantization states, ``.grad``, optimizer
  state), deduplicated by storage;
- ``activations``: tensors autograd saves during the forward pass, seen through
  ``torch.autograd.graph.saved_tensors_hooks`` and deduplicated by storage (parameters and
  buffers excluded); ``logits``: those saved from the output head on, plus the logits tensor;
- on CUDA also ``torch.cuda.max_memory_allocated`` / ``memory_reserved``; on CPU the process's
  peak resident set.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Any

from .memory.settings import TrainingSettings
from .tracking import PeakTracker, SavedTensorMeter, base_name, storage_key
from .methods.base import Method
from .specs import ModelSpec


@dataclass
class Measurement:
    model: str
    method: str
    knobs: dict[str, Any]
    settings: dict[str, Any]
    components: dict[str, int]
    per_block_bytes: list[int]
    losses: list[float]
    total_params: int
    trainable_params: int
    changed_trainable: bool
    frozen_unchanged: bool
    device_peak: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "method": self.method, "knobs": self.knobs, "settings": self.settings,
            "total_params": self.total_params, "trainable_params": self.trainable_params,
            "components": [{"name": k, "bytes": v, "formula": "measured"} for k, v in self.components.items()],
            "per_block_bytes": self.per_block_bytes, "losses": self.losses, "device_peak": self.device_peak,
            "changed_trainable": self.changed_trainable, "frozen_unchanged": self.frozen_unchanged,
        }


def _sum_unique(tensors, exclude: set | None = None) -> int:
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        k = storage_key(t)
        if exclude is None or k not in exclude:
            seen[k] = k[1]
    return sum(seen.values())


def quant_state_tensors(model):
    for module in model.modules():
        weight = getattr(module, "weight", None)
        qs = getattr(weight, "quant_state", None)
        if qs is not None:
            yield from (t for t in (qs.absmax, qs.code, qs.offset) if t is not None)
            if getattr(qs, "state2", None) is not None:
                yield from (qs.state2.absmax, qs.state2.code)
        scb = getattr(weight, "SCB", None)
        if scb is not None:
            yield scb


def _logical_numel(param) -> int:
    """Elements of the weight a parameter stands for (a 4-bit one packs two per byte)."""
    qs = getattr(param, "quant_state", None)
    return int(qs.shape.numel()) if qs is not None else param.numel()


def _tracked_step(model, optimizer, ids, exclude) -> tuple[float, int, str]:
    """One training step under :class:`PeakTracker`: (loss, peak bytes, op at the peak)."""
    import torch

    baseline = {k[0] for k in exclude} | {ids.untyped_storage().data_ptr()}
    baseline |= {
        v.untyped_storage().data_ptr()
        for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    }
    tracker = PeakTracker(baseline)
    with tracker:
        loss = _train_step(model, optimizer, ids)
    return loss, tracker.peak, tracker.peak_op


def _train_step(model, optimizer, ids) -> float:
    out = model(input_ids=ids, labels=ids)
    loss = float(out.loss.detach())
    out.loss.backward()
    del out
    optimizer.step()
    return loss


def measure(spec: ModelSpec, method: Method, knobs: dict[str, Any] | None, settings: TrainingSettings,
            steps: int = 2, seed: int = 0) -> Measurement:
    """Run ``steps`` real training steps and measure every component."""
    import torch

    from .loading import load_for_training
    from .optimizers import build_optimizer

    knobs = method.resolve(knobs)
    torch.manual_seed(seed)
    device = torch.device(settings.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = load_for_training(spec, method, knobs, settings)
    if device.type == "cuda" and not method.quantization:
        model.to(device)
    params = dict(model.named_parameters())
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    before = {n: p.detach().float().clone() for n, p in params.items()}
    optimizer = build_optimizer(trainable.values(), settings.optimizer, lr=1e-2)

    base_names = {p.name for p in spec.inventory.params}
    adapter_params = [p for n, p in trainable.items() if base_name(n, base_names) not in base_names]
    model_tensors = list(params.values()) + list(model.buffers()) + list(quant_state_tensors(model))
    exclude = {storage_key(t) for t in model_tensors}
    weights = _sum_unique(t for t in model_tensors if not any(t is a for a in adapter_params))

    vocab = spec.vocab_size
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (settings.batch_size, settings.seq_len), generator=gen).to(device)
    losses, activations, logits, per_block = [], 0, 0, []
    peak_step = None
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        if step == 0:  # what the forward saves for backward
            meter = SavedTensorMeter(model, spec, exclude)
            with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
                out = model(input_ids=ids, labels=ids)
            meter.close()
            meter.settle(out.loss)
            activations = meter.total(lambda p: p != "logits")
            logits = meter.total(lambda p: p == "logits")
            if storage_key(out.logits) not in meter.by_phase.get("logits", {}):
                logits += storage_key(out.logits)[1]
            per_block = [sum(meter.by_phase.get(f"block{i}", {}).values()) for i in range(spec.num_layers)]
            losses.append(float(out.loss.detach()))
            out.loss.backward()
            del out
            optimizer.step()
        elif step == steps - 1 and device.type == "cpu":  # the peak of a whole step, states included
            loss, peak, peak_op = _tracked_step(model, optimizer, ids, exclude)
            losses.append(loss)
            peak_step = (peak, peak_op)
        else:
            losses.append(_train_step(model, optimizer, ids))

    grads = _sum_unique(p.grad for p in trainable.values() if p.grad is not None)
    state_tensors = [
        v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    ]
    opt_bytes = _sum_unique(state_tensors, exclude)
    components = {
        "weights": weights,
        "trainable_weights": _sum_unique(adapter_params),
        "gradients": grads,
        "optimizer": opt_bytes,
        "activations": activations,
        "logits": logits,
        "overhead": 0,
    }
    device_peak = {"host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if peak_step is not None:
        persistent = components["weights"] + components["trainable_weights"] + components["optimizer"]
        device_peak["peak_tensor_bytes"] = persistent + peak_step[0]
        device_peak["peak_at_op"] = peak_step[1]
    if device.type == "cuda":
        device_peak.update(max_memory_allocated=torch.cuda.max_memory_allocated(),
                           memory_reserved=torch.cuda.memory_reserved())
    changed = all(not torch.equal(before[n], p.detach().float()) for n, p in trainable.items())
    frozen_same = all(torch.equal(before[n], p.detach().float()) for n, p in params.items() if n not in trainable)
    return Measurement(
        model=spec.name, method=method.name, knobs=knobs, settings=settings.as_dict(), components=components,
        per_block_bytes=per_block, losses=losses, total_params=sum(
            _logical_numel(p) for n, p in params.items() if base_name(n, base_names) in base_names
        ), trainable_params=sum(p.numel() for p in trainable.values()), changed_trainable=changed,
        frozen_unchanged=frozen_same, device_peak=device_peak,
    )
