"""Measured memory of real training steps, in the planner's schema and component names.

Everything is measured on the loop users run: the worker's own ``transformers.Trainer``
(:func:`workbench.training.recipe.build_trainer`), fed a synthetic dataset of
variable-length examples (:func:`synthetic_examples`: labels ``-100`` on a prompt part,
batches padded to their longest example by the worker's collator, with an attention mask).

- ``weights``, ``trainable_weights``, ``gradients``, ``optimizer``: bytes of the real
  tensors (parameters, buffers, bitsandbytes quantization states, ``.grad``, optimizer
  state), deduplicated by storage;
- ``activations``: tensors autograd saves during one forward pass of the first (widest)
  padded micro-batch, seen through ``torch.autograd.graph.saved_tensors_hooks`` and
  deduplicated by storage (parameters and buffers excluded); ``logits``: those saved from
  the output head on, plus the logits tensor;
- the peak: the worker's :class:`~workbench.training.telemetry.StepPeakCallback` on every
  optimizer step of the Trainer (every micro-batch of an accumulated step, clipping and the
  optimizer step; on CPU live tensor bytes followed op by op, on CUDA max allocated);
  the process's peak resident set beside it.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Any

from .memory.settings import TrainingSettings
from .tracking import SavedTensorMeter, base_name, storage_key
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


def synthetic_examples(vocab: int, batch_size: int, grad_accum: int, seq_len: int, steps: int,
                       seed: int = 0) -> dict[str, list[list[int]]]:
    """``batch_size x grad_accum x steps`` examples as ``input_ids``/``labels`` columns. The
    first optimizer step's examples (the run's probe takes the longest first) are
    ``seq_len, seq_len - 1, ...`` tokens, so the widest batch is exactly ``seq_len``; the
    others are between ``seq_len - r`` and ``seq_len`` tokens (``r = min(8, seq_len // 8)``),
    so that every later step, the first with optimizer state, is nearly as wide and batches
    of several examples hold padding. Labels are ``-100`` on the first quarter of each
    example (its prompt); the collator pads labels with ``-100`` too."""
    import random

    rng = random.Random(seed)
    first = batch_size * grad_accum
    spread = max(1, min(8, seq_len // 8))
    lengths = [max(2, seq_len - i) for i in range(first)]
    lengths += [rng.randint(max(2, seq_len - spread), seq_len) for _ in range(first * (steps - 1))]
    ids = [[rng.randrange(10, vocab) for _ in range(n)] for n in lengths]
    labels = [[-100] * (n // 4) + x[n // 4:] for x, n in zip(ids, lengths)]
    return {"input_ids": ids, "labels": labels}


class _WidthRecorder:
    """Wraps the Trainer's collator and records each batch's width (its padded length)."""

    def __init__(self, collate) -> None:
        self.collate, self.widths = collate, []

    def __call__(self, features):
        batch = self.collate(features)
        self.widths.append(int(batch["input_ids"].shape[-1]))
        return batch


def trainer_for(spec: ModelSpec, method: Method, knobs: dict[str, Any], settings: TrainingSettings, model,
                steps: int, seed: int, output_dir, callbacks: list):
    """The worker's Trainer (:func:`~workbench.training.recipe.build_trainer`) for ``steps``
    optimizer steps over :func:`synthetic_examples`; its collator records batch widths."""
    import datasets

    from .data import load_tokenizer
    from .runspec import RunSpec, Schedule
    from .training.recipe import build_trainer

    # lr 1e-2, constant: every trainable tensor moves visibly in one step, even in bfloat16
    run = RunSpec(model=spec.name, method=method.name, knobs=knobs, settings=settings,
                  schedule=Schedule(max_steps=steps, learning_rate=1e-2, lr_scheduler="constant", seed=seed))
    train = datasets.Dataset.from_dict(synthetic_examples(spec.vocab_size, settings.batch_size, settings.grad_accum,
                                                          settings.seq_len, steps, seed))
    trainer = build_trainer(run, model, load_tokenizer("tiny"), train, None, output_dir, callbacks)
    trainer.data_collator = _WidthRecorder(trainer.data_collator)
    return trainer


def trainer_step_peak(spec: ModelSpec, method: Method, knobs: dict[str, Any] | None, settings: TrainingSettings,
                      steps: int = 2, seed: int = 0, model=None) -> dict[str, Any]:
    """Train ``steps`` optimizer steps with the worker's Trainer and return the largest step
    peak :class:`~workbench.training.telemetry.StepPeakCallback` measured from the second step
    on (the first has no optimizer state until its own optimizer step) (``peak_bytes``,
    ``peak_op``, ``peak_step`` and ``peak_width``: the widest micro-batch of that step, the
    sequence length to plan it at), every step's ``records``, the batch ``widths`` and the
    ``losses``."""
    import tempfile

    import torch

    from .loading import load_for_training
    from .training.telemetry import StepPeakCallback

    knobs = method.resolve(knobs)
    if model is None:
        torch.manual_seed(seed)
        model = load_for_training(spec, method, knobs, settings)
    device = "cuda" if settings.device == "cuda" else "cpu"
    callback = StepPeakCallback(None, model, device, every=1)
    with tempfile.TemporaryDirectory(prefix="workbench-measure-") as out:
        trainer = trainer_for(spec, method, knobs, settings, model, steps, seed, out, [callback])
        trainer.train()
    widths = trainer.data_collator.widths
    accum = settings.grad_accum
    for record in callback.records:  # the widest micro-batch of each optimizer step
        record["width"] = max(widths[(record["step"] - 1) * accum:record["step"] * accum])
    # the steady state the planner describes: from the second step on, the optimizer state exists
    # during backward (the first step creates it in its optimizer step)
    steady = [r for r in callback.records if r["step"] >= 2] or callback.records
    top = max(steady, key=lambda r: r["peak_bytes"])
    return {"peak_bytes": top["peak_bytes"], "peak_op": top.get("peak_op"), "peak_step": top["step"],
            "peak_width": top["width"], "records": callback.records, "widths": widths,
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "optimizer": trainer.optimizer, "model": model}


def measure(spec: ModelSpec, method: Method, knobs: dict[str, Any] | None, settings: TrainingSettings,
            steps: int = 2, seed: int = 0) -> Measurement:
    """Measure every component on one forward/backward of the first (widest) padded
    micro-batch, then train ``steps`` optimizer steps with the worker's Trainer and take the
    largest step peak (see the module docstring)."""
    import torch

    from .loading import load_for_training

    knobs = method.resolve(knobs)
    torch.manual_seed(seed)
    device = torch.device(settings.device)
    model = load_for_training(spec, method, knobs, settings)
    if device.type == "cuda" and not method.quantization:
        model.to(device)
    params = dict(model.named_parameters())
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    # copies to tell later whether each tensor moved: on the host, never on the measured device
    before = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
    at_start = 0
    if device.type == "cuda":  # loading and the copies are set-up, not training: the peak starts here
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        at_start = int(torch.cuda.memory_allocated())

    base_names = {p.name for p in spec.inventory.params}
    adapter_params = [p for n, p in trainable.items() if base_name(n, base_names) not in base_names]
    model_tensors = list(params.values()) + list(model.buffers()) + list(quant_state_tensors(model))
    exclude = {storage_key(t) for t in model_tensors}
    weights = _sum_unique(t for t in model_tensors if not any(t is a for a in adapter_params))

    # the components: the probe's first micro-batch, padded by the worker's collator
    from .data import load_tokenizer
    from .training.recipe import make_collator

    examples = synthetic_examples(spec.vocab_size, settings.batch_size, settings.grad_accum, settings.seq_len,
                                  steps, seed)
    features = [{"input_ids": i, "labels": lab} for i, lab in
                zip(examples["input_ids"][:settings.batch_size], examples["labels"][:settings.batch_size])]
    from .runspec import RunSpec

    collate = make_collator(RunSpec(model=spec.name, method=method.name, knobs=knobs, settings=settings),
                            load_tokenizer("tiny"))
    batch = {k: v.to(device) for k, v in collate(features).items()}
    meter = SavedTensorMeter(model, spec, exclude)
    # the Trainer's own autocast (accelerate's, for the mixed modes and fp16): the same context here
    autocast = torch.autocast(device.type, dtype=getattr(torch, settings.compute_dtype),
                              enabled=settings.autocast != "none")
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t), autocast:
        out = model(**batch)
    meter.close()
    meter.settle(out.loss)
    activations = meter.total(lambda p: p != "logits")
    logits = meter.total(lambda p: p == "logits")
    if storage_key(out.logits) not in meter.by_phase.get("logits", {}):
        logits += storage_key(out.logits)[1]
    per_block = [sum(meter.by_phase.get(f"block{i}", {}).values()) for i in range(spec.num_layers)]
    out.loss.backward()
    del out
    grads = _sum_unique(p.grad for p in trainable.values() if p.grad is not None)
    model.zero_grad(set_to_none=True)

    stepped = trainer_step_peak(spec, method, knobs, settings, steps=steps, seed=seed, model=model)
    optimizer = stepped["optimizer"]
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    state_tensors = [
        v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    ]
    components = {
        "weights": weights,
        "trainable_weights": _sum_unique(adapter_params),
        "gradients": grads,
        "optimizer": _sum_unique(state_tensors, exclude),
        "activations": activations,
        "logits": logits,
        "overhead": 0,
    }
    device_peak = {"host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cpu":
        device_peak["peak_tensor_bytes"] = stepped["peak_bytes"]
        device_peak["peak_at_op"] = stepped["peak_op"]
    else:  # each quantity named: the planner predicts the allocated peak
        top = max((r for r in stepped["records"] if r["peak_bytes"] == stepped["peak_bytes"]), key=lambda r: r["step"])
        device_peak.update(max_memory_allocated=stepped["peak_bytes"], allocated_after_setup=at_start,
                           memory_reserved=int(torch.cuda.memory_reserved()),
                           max_memory_reserved=top.get("max_reserved_bytes"), nvml_used_bytes=top.get("nvml_used_bytes"))
    device_peak["peak_step"] = stepped["peak_step"]
    device_peak["widest_batch"] = max(stepped["widths"])
    device_peak["peak_width"] = stepped["peak_width"]  # plan at this seq_len to compare the peak
    changed = all(not torch.equal(before[n], p.detach().cpu()) for n, p in trainable.items())
    frozen_same = all(torch.equal(before[n], p.detach().cpu()) for n, p in params.items() if n not in trainable)
    return Measurement(
        model=spec.name, method=method.name, knobs=knobs, settings=settings.as_dict(), components=components,
        per_block_bytes=per_block, losses=stepped["losses"], total_params=sum(
            _logical_numel(p) for n, p in params.items() if base_name(n, base_names) in base_names
        ), trainable_params=sum(p.numel() for p in trainable.values()), changed_trainable=changed,
        frozen_unchanged=frozen_same, device_peak=device_peak,
    )
