"""Memory samples from a background thread, several times a second, each naming its source.

- CUDA: ``torch.cuda.memory_allocated`` / ``memory_reserved`` / ``max_memory_allocated`` and,
  when NVML is available, the device's used bytes as the driver sees them;
- CPU: the process's resident set (psutil) and the bytes of live tensors the worker can
  account for (parameters, gradients, optimizer states).

The tensor count is taken *in the training thread* at the end of each step
(:class:`TensorAccountCallback`) and only read by the sampler: touching ``param.grad``
from another thread races with the autograd engine, which writes gradients without the
GIL (seen here as heap corruption).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from transformers import TrainerCallback

from .events import EventWriter


def _physical_gpu(local: int) -> int:
    """NVML counts physical GPUs; torch counts those in ``CUDA_VISIBLE_DEVICES``."""
    import os

    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return int(visible[local]) if local < len(visible) and visible[local].strip().isdigit() else local


def _nvml_used(local: int = 0) -> Callable[[], int | None]:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(_physical_gpu(local))
        return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # no NVML (CPU machine, or the package is missing)
        return lambda: None


class MemorySampler:
    """Samples this process's memory. In a multi-process run every rank has one, and its
    samples carry ``rank`` (the live chart draws one line per GPU)."""

    def __init__(self, events: EventWriter, device: str, interval: float = 0.25, rank: int | None = None,
                 local_rank: int = 0) -> None:
        self.events, self.device, self.interval = events, device, interval
        self.rank, self.local_rank = rank, local_rank
        self.tensor_bytes: int | None = None  # last count from the training thread
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._nvml = _nvml_used(local_rank) if device == "cuda" else (lambda: None)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling, with one last sample so that even a run shorter than one interval
        has a figure after training."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.events.emit("memory", **self.sample())

    def sample(self) -> dict[str, Any]:
        data = self._sample()
        return data if self.rank is None else {**data, "rank": self.rank}

    def _sample(self) -> dict[str, Any]:
        if self.device == "cuda":
            import torch

            d = self.local_rank
            data = {"source": "cuda", "allocated": torch.cuda.memory_allocated(d),
                    "reserved": torch.cuda.memory_reserved(d), "max_allocated": torch.cuda.max_memory_allocated(d),
                    "nvml_used": self._nvml()}
            self.peak = max(self.peak, data["max_allocated"])
        else:
            import psutil

            data = {"source": "cpu", "rss": psutil.Process().memory_info().rss, "tensor_bytes": self.tensor_bytes}
            self.peak = max(self.peak, data["rss"])
        return data

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            self.events.emit("memory", **self.sample())
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - started)))


class TensorAccountCallback(TrainerCallback):
    """Counts parameter/gradient/optimizer bytes in the training thread after each step
    (before the next ``zero_grad``) and hands the number to the sampler."""

    def __init__(self, sampler: MemorySampler, model, optimizer=None) -> None:
        self.sampler, self.model, self.optimizer = sampler, model, optimizer  # None: the Trainer builds it

    def _count(self, kwargs) -> int:
        return accountant(self.model, self.optimizer or kwargs.get("optimizer"))()

    def on_train_begin(self, args, state, control, **kwargs):
        self.sampler.tensor_bytes = self._count(kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        self.sampler.tensor_bytes = self._count(kwargs)


def accountant(model, optimizer) -> Callable[[], int]:
    """Bytes of parameters, gradients and optimizer state, deduplicated by storage."""
    import torch

    def count() -> int:
        seen: dict[int, int] = {}
        for p in model.parameters():
            for t in (p, p.grad):
                if t is not None:
                    s = t.untyped_storage()
                    seen[s.data_ptr()] = s.nbytes()
        for state in list(optimizer.state.values()) if optimizer is not None else []:
            for v in list(state.values()):
                if isinstance(v, torch.Tensor):
                    s = v.untyped_storage()
                    seen[s.data_ptr()] = s.nbytes()
        return sum(seen.values())

    return count
