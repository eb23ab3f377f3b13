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


def _nvml_used() -> Callable[[], int | None]:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # no NVML (CPU machine, or the package is missing)
        return lambda: None


class MemorySampler:
    def __init__(self, events: EventWriter, device: str, interval: float = 0.25) -> None:
        self.events, self.device, self.interval = events, device, interval
        self.tensor_bytes: int | None = None  # last count from the training thread
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._nvml = _nvml_used() if device == "cuda" else (lambda: None)

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
        if self.device == "cuda":
            import torch

            data = {"source": "cuda", "allocated": torch.cuda.memory_allocated(),
                    "reserved": torch.cuda.memory_reserved(), "max_allocated": torch.cuda.max_memory_allocated(),
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

    def __init__(self, sampler: MemorySampler, model, optimizer) -> None:
        self.sampler, self.count = sampler, accountant(model, optimizer)

    def on_train_begin(self, args, state, control, **kwargs):
        self.sampler.tensor_bytes = self.count()

    def on_step_end(self, args, state, control, **kwargs):
        self.sampler.tensor_bytes = self.count()


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
        for state in list(optimizer.state.values()):
            for v in list(state.values()):
                if isinstance(v, torch.Tensor):
                    s = v.untyped_storage()
                    seen[s.data_ptr()] = s.nbytes()
        return sum(seen.values())

    return count
