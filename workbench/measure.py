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
import weakref
from dataclasses import dataclass, field
from typing import Any

from .memory.settings import TrainingSettings
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


def _key(t) -> tuple[int, int]:
    s = t.untyped_storage()
    return (s.data_ptr(), s.nbytes())


def _sum_unique(tensors, exclude: set | None = None) -> int:
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        k = _key(t)
        if exclude is None or k not in exclude:
            seen[k] = k[1]
    return sum(seen.values())


def _quant_state_tensors(model):
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


def _base_name(name: str, known: set[str]) -> str:
    """A parameter/module name without peft's wrappers (``base_model.model.`` for tuners,
    ``base_model.`` for prompt learning, ``.base_layer`` inside adapted layers): the first
    candidate that names something in the original model."""
    candidates = [name[len(p):] for p in ("base_model.model.", "base_model.") if name.startswith(p)] + [name]
    candidates = [c.replace(".base_layer", "") for c in candidates]
    return next((c for c in candidates if c in known), candidates[0])


class _SavedTensorMeter:
    """Counts bytes saved for backward and still alive when the forward pass ends, by phase
    (``block<i>``, ``final``, ``logits``). Tensors saved by a side graph that is dropped
    during the forward (e.g. a detached weight-norm computation) are freed before backward
    and are not counted: each saved tensor is held by a weak reference only."""

    def __init__(self, model, spec: ModelSpec, exclude: set) -> None:
        self.exclude = exclude
        self.phase = "embed"
        self.records: list[tuple[weakref.ref, str]] = []
        self.by_phase: dict[str, dict[tuple[int, int], int]] = {}
        self.handles = []
        inv = spec.inventory
        modules = {p.name.rsplit(".", i)[0] for p in inv.params for i in range(1, p.name.count(".") + 1)}
        for name, module in model.named_modules():
            base = _base_name(name, modules)
            parts = base.split(".")
            if base.startswith(inv.block_prefix + ".") and len(parts) == len(inv.block_prefix.split(".")) + 1:
                phase = "block" + parts[-1]
            elif base == inv.head_name:
                phase = "logits"
            elif base == inv.block_prefix.rsplit(".", 1)[0] + ".norm":
                phase = "final"
            else:
                continue
            self.handles.append(module.register_forward_pre_hook(lambda m, a, ph=phase: self._enter(ph)))

    def _enter(self, phase: str) -> None:
        self.phase = phase

    def pack(self, t):
        self.records.append((weakref.ref(t), self.phase))
        return t

    def settle(self) -> None:
        """Group the saved tensors alive now by phase, deduplicated by storage."""
        seen: set[tuple[int, int]] = set()
        for ref, phase in self.records:
            t = ref()
            if t is None:
                continue
            k = _key(t)
            if k in self.exclude or k in seen:
                continue
            seen.add(k)
            self.by_phase.setdefault(phase, {})[k] = k[1]

    def total(self, phases) -> int:
        return sum(sum(d.values()) for p, d in self.by_phase.items() if phases(p))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


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
    adapter_params = [p for n, p in trainable.items() if _base_name(n, base_names) not in base_names]
    model_tensors = list(params.values()) + list(model.buffers()) + list(_quant_state_tensors(model))
    exclude = {_key(t) for t in model_tensors}
    weights = _sum_unique(t for t in model_tensors if not any(t is a for a in adapter_params))

    vocab = spec.vocab_size
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (settings.batch_size, settings.seq_len), generator=gen).to(device)
    losses, activations, logits, per_block = [], 0, 0, []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        meter = _SavedTensorMeter(model, spec, exclude)
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            out = model(input_ids=ids, labels=ids)
        meter.close()
        meter.settle()
        if step == 0:
            activations = meter.total(lambda p: p != "logits")
            logits = meter.total(lambda p: p == "logits")
            if _key(out.logits) not in meter.by_phase.get("logits", {}):
                logits += _key(out.logits)[1]
            per_block = [sum(meter.by_phase.get(f"block{i}", {}).values()) for i in range(spec.num_layers)]
        losses.append(float(out.loss.detach()))
        out.loss.backward()
        del out
        optimizer.step()

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
    if device.type == "cuda":
        device_peak.update(max_memory_allocated=torch.cuda.max_memory_allocated(),
                           memory_reserved=torch.cuda.memory_reserved())
    changed = all(not torch.equal(before[n], p.detach().float()) for n, p in trainable.items())
    frozen_same = all(torch.equal(before[n], p.detach().float()) for n, p in params.items() if n not in trainable)
    return Measurement(
        model=spec.name, method=method.name, knobs=knobs, settings=settings.as_dict(), components=components,
        per_block_bytes=per_block, losses=losses, total_params=sum(
            _logical_numel(p) for n, p in params.items() if _base_name(n, base_names) in base_names
        ), trainable_params=sum(p.numel() for p in trainable.values()), changed_trainable=changed,
        frozen_unchanged=frozen_same, device_peak=device_peak,
    )
