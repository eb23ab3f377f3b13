"""Live memory of a run, in two kinds that are never mixed on one axis without their names.

- :class:`StepPeakCallback` -- the quantity the planner predicts: the peak of one optimizer
  step (forward, backward, clipping, optimizer step; every micro-batch of an accumulated
  step). On CPU: the peak of live tensor bytes -- the tensors alive when the step begins
  (parameters, buffers, quantization states, optimizer state) plus the storages created
  during it, followed op by op by :class:`~workbench.tracking.PeakTracker` on sampled steps
  (the probe's step -- the second, the first that holds the optimizer's state; the first
  when a run has only one -- then every ``WORKBENCH_STEP_PEAK_EVERY``-th, default 100). On CUDA:
  ``torch.cuda.max_memory_allocated`` over the step (the peak statistics are reset when
  the step begins, so loading is never counted) with ``memory_reserved`` beside it, every step.
  Each becomes a ``step_memory`` event.
- :class:`MemorySampler` -- a background thread, several times a second: on CUDA
  allocated / reserved / peak allocated since the last reset (each step's start) and NVML's
  device used bytes; on CPU the
  process's resident set (RSS), which includes Python, the libraries and allocator slack
  and so is shown as its own line, never as the planner's quantity. Each sample says its
  ``phase``: ``setup`` (loading the model, building the data) until the worker calls
  :meth:`MemorySampler.training`, then ``training``; the sampler's own peak counts training only.

Tensors are inspected only *in the training thread*: touching ``param.grad`` from another
thread races with the autograd engine, which writes gradients without the GIL.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from transformers import TrainerCallback

from .events import EventWriter


def _nvml_used(local: int = 0) -> Callable[[], int | None]:
    """Device memory used, as NVML (and ``nvidia-smi``) reports it, of this process's
    ``cuda:<local>``: the device its ``CUDA_VISIBLE_DEVICES`` names (an index, a GPU or MIG
    UUID), found by :func:`workbench.devices.nvml_handle`, not NVML's index ``local``."""
    from ..devices import nvml_handle

    handle = nvml_handle(local)
    if handle is None:  # no NVML (CPU machine, or the package is missing)
        return lambda: None
    import pynvml

    return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


class MemorySampler:
    """Samples this process's memory. In a multi-process run every rank has one, and its
    samples carry ``rank`` (the live chart draws one line per GPU)."""

    def __init__(self, events: EventWriter, device: str, interval: float = 0.25, rank: int | None = None,
                 local_rank: int = 0) -> None:
        self.events, self.device, self.interval = events, device, interval
        self.rank, self.local_rank = rank, local_rank
        self.peak = 0  # of what is sampled while training (never loading): CUDA peak allocated, CPU RSS
        self.phase = "setup"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._nvml = _nvml_used(local_rank) if device == "cuda" else (lambda: None)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def training(self) -> None:
        """Set-up is over: later samples are of training (loading never counts in the peak;
        StepPeakCallback resets CUDA's peak statistics when training begins)."""
        self.phase = "training"

    def stop(self) -> None:
        """Stop sampling, with one last sample so that even a run shorter than one interval
        has a figure after training."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.events.emit("memory", **self.sample())

    def sample(self) -> dict[str, Any]:
        phase = self.phase
        data = {**self._sample(), "phase": phase}
        if phase == "training":
            self.peak = max(self.peak, data["max_allocated"] if self.device == "cuda" else data["rss"])
        return data if self.rank is None else {**data, "rank": self.rank}

    def _sample(self) -> dict[str, Any]:
        if self.device == "cuda":
            import torch

            d = self.local_rank
            data = {"source": "cuda", "allocated": torch.cuda.memory_allocated(d),
                    "reserved": torch.cuda.memory_reserved(d), "max_allocated": torch.cuda.max_memory_allocated(d),
                    "nvml_used": self._nvml()}
        else:
            import psutil

            data = {"source": "cpu", "rss": psutil.Process().memory_info().rss}
        return data

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            self.events.emit("memory", **self.sample())
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - started)))


# A tracked CPU step costs about 2-3.5x an untracked one on the tiny model (the dispatch mode
# runs Python for every aten op; bench/step_peak_overhead.py), so sampling every 100th step keeps
# the amortised cost near (r - 1) / 100 < 3% of training time; the probe's step (the second:
# the first with the optimizer state) is always sampled.
STEP_PEAK_EVERY = 100


def step_peak_every() -> int:
    import os

    configured = os.environ.get("WORKBENCH_STEP_PEAK_EVERY", "")
    return int(configured) if configured.isdigit() and int(configured) > 0 else STEP_PEAK_EVERY


def persistent_tensors(model, optimizer):
    """Tensors alive between steps: parameters, buffers, quantization states, gradients and
    optimizer state."""
    import torch

    from ..measure import quant_state_tensors

    yield from model.parameters()
    yield from (p.grad for p in model.parameters() if p.grad is not None)
    yield from model.buffers()
    yield from quant_state_tensors(model)
    for state in list(optimizer.state.values()) if optimizer is not None else []:
        for v in list(state.values()):
            if isinstance(v, torch.Tensor):
                yield v


class StepPeakCallback(TrainerCallback):
    """The measured peak of an optimizer step (see the module docstring); ``on_record`` is
    called with each ``step_memory`` record in the training thread (the probe reads the first)."""

    def __init__(self, events: EventWriter | None, model, device: str, every: int | None = None,
                 rank: int | None = None, on_record: Callable[[dict[str, Any]], None] | None = None,
                 first: int = 2) -> None:
        self.events, self.model, self.device = events, model, device
        self.every = every or (1 if device == "cuda" else step_peak_every())
        self.first = first  # the probe's step (1-based): always measured
        self.rank, self.on_record = rank, on_record
        self.records: list[dict[str, Any]] = []
        self._tracker = None
        self._persistent = 0
        self._started = 0.0
        self._optimizer = None

    def _sampled(self, step: int) -> bool:  # ``step``: optimizer steps done before this one
        # the probe's step (the second: the first with the optimizer's state), then every N-th
        return step + 1 == self.first or (step + 1) % self.every == 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._optimizer = kwargs.get("optimizer")
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()  # set-up (loading the model) is not a step

    def on_step_begin(self, args, state, control, **kwargs):
        if not self._sampled(state.global_step):
            return
        self._started = time.perf_counter()
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            return
        from ..tracking import PeakTracker, storage_key

        optimizer = kwargs.get("optimizer") or self._optimizer
        seen: dict[int, int] = {}
        for t in persistent_tensors(self.model, getattr(optimizer, "optimizer", optimizer)):
            ptr, nbytes = storage_key(t)
            if ptr:
                seen[ptr] = nbytes
        self._persistent = sum(seen.values())
        self._tracker = PeakTracker(set(seen))
        self._tracker.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step  # this step's number (1-based)
        if self.device == "cuda":
            if not self._sampled(step - 1):
                return
            import torch

            record = {"step": step, "source": "cuda", "peak_bytes": int(torch.cuda.max_memory_allocated()),
                      "reserved_bytes": int(torch.cuda.memory_reserved()),
                      "max_reserved_bytes": int(torch.cuda.max_memory_reserved()),
                      "nvml_used_bytes": _nvml_used(torch.cuda.current_device())(),
                      "quantity": "cuda max_memory_allocated"}
        else:
            if self._tracker is None:
                return
            tracker, self._tracker = self._tracker, None
            tracker.__exit__(None, None, None)
            record = {"step": step, "source": "cpu", "peak_bytes": self._persistent + tracker.peak,
                      "persistent_bytes": self._persistent, "peak_op": tracker.peak_op,
                      "quantity": "live tensor bytes"}
        record["seconds"] = round(time.perf_counter() - self._started, 4)
        if self.rank is not None:
            record["rank"] = self.rank
        self.records.append(record)
        if self.events is not None:
            self.events.emit("step_memory", **record)
        if self.on_record is not None:
            self.on_record(record)

    def on_train_end(self, args, state, control, **kwargs):
        if self._tracker is not None:  # training stopped inside a sampled step
            self._tracker.__exit__(None, None, None)
            self._tracker = None

    @property
    def peak_bytes(self) -> int | None:
        return max((r["peak_bytes"] for r in self.records), default=None)
