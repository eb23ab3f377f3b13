"""Instruments for ``workbench measure``: saved-for-backward bytes and the live-tensor peak.

- :class:`SavedTensorMeter` -- tensors autograd saves in the forward pass and that are still
  alive when it ends (``torch.autograd.graph.saved_tensors_hooks``, weak references,
  deduplicated by storage), grouped by phase: ``block<i>``, ``final``, ``logits``.
- :class:`PeakTracker` -- a ``TorchDispatchMode`` that follows every tensor storage created
  during a training step until its last tensor is freed, giving the exact peak of tensor
  bytes on the CPU (where PyTorch has no ``max_memory_allocated``).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .specs import ModelSpec


def storage_key(t) -> tuple[int, int]:
    s = t.untyped_storage()
    return (s.data_ptr(), s.nbytes())


def base_name(name: str, known: set[str]) -> str:
    """A parameter/module name without peft's wrappers (``base_model.model.`` for tuners,
    ``base_model.`` for prompt learning, ``.base_layer`` inside adapted layers): the first
    candidate that names something in the original model."""
    candidates = [name[len(p):] for p in ("base_model.model.", "base_model.") if name.startswith(p)] + [name]
    candidates = [c.replace(".base_layer", "") for c in candidates]
    return next((c for c in candidates if c in known), candidates[0])


class SavedTensorMeter:
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
            base = base_name(name, modules)
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

    def settle(self, output=None) -> None:
        """Group the saved tensors alive now by phase, deduplicated by storage. Tensors that
        custom autograd functions keep on ``ctx.tensors`` (bitsandbytes' 8-bit matmul does,
        bypassing ``save_for_backward``) are found by walking the graph from ``output``."""
        seen: set[tuple[int, int]] = set()
        for ref, phase in self.records:
            t = ref()
            if t is None:
                continue
            k = storage_key(t)
            if k in self.exclude or k in seen:
                continue
            seen.add(k)
            self.by_phase.setdefault(phase, {})[k] = k[1]
        for t in _ctx_tensors(output):
            k = storage_key(t)
            if k not in self.exclude and k not in seen:
                seen.add(k)
                self.by_phase.setdefault("ctx", {})[k] = k[1]

    def total(self, phases) -> int:
        return sum(sum(d.values()) for p, d in self.by_phase.items() if phases(p))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _ctx_tensors(output):
    """Tensors that custom autograd functions (``torch.autograd.Function``) keep as plain
    ``ctx`` attributes -- bitsandbytes' ``ctx.A`` / ``ctx.tensors`` -- in ``output``'s graph."""
    if output is None or output.grad_fn is None:
        return
    stack, visited = [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        if hasattr(node, "_forward_cls"):  # a custom Function's ctx
            for value in getattr(node, "__dict__", {}).values():
                if isinstance(value, torch.Tensor):
                    yield value
                elif isinstance(value, (list, tuple)):
                    yield from (t for t in value if isinstance(t, torch.Tensor))
        stack.extend(fn for fn, _ in node.next_functions)


class PeakTracker(TorchDispatchMode):
    """Peak bytes of tensor storages created while the mode is active and alive at once.

    Storages alive before (``baseline``: weights, optimizer states, inputs) are not counted.
    A storage is freed when the last tensor created on it (an op output or a view) dies,
    seen through a ``weakref.ref`` callback per tensor (cheaper than ``weakref.finalize``,
    which also registers every object for interpreter exit). Once the tracker itself is
    dropped its references die with it and no callback runs.
    """

    def __init__(self, baseline: set[int]) -> None:
        super().__init__()
        self.baseline = baseline
        self.refs: dict[int, list[int]] = {}  # data_ptr -> [live tensors, nbytes]
        self._watch: dict[int, tuple[weakref.ref, int]] = {}  # id(weak ref) -> (the ref, data_ptr)
        self.live = 0
        self.peak = 0
        self.peak_op = ""

    def _freed(self, ref: weakref.ref) -> None:
        ptr = self._watch.pop(id(ref), (None, None))[1]
        entry = self.refs.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[ptr]

    def _track(self, t, func) -> None:
        if t.device.type == "meta":
            return
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self.baseline:
            return
        entry = self.refs.get(ptr)
        if entry is None:
            nbytes = storage.nbytes()
            self.refs[ptr] = [1, nbytes]
            self.live += nbytes
            if self.live > self.peak:
                self.peak, self.peak_op = self.live, str(func)
        else:
            entry[0] += 1
        ref = weakref.ref(t, self._freed)
        self._watch[id(ref)] = (ref, ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):  # the common case, without flattening
            self._track(out, func)
        else:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self._track(t, func)
        return out
