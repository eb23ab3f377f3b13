"""The inference worker: one process per base model and device that loads the base once,
attaches adapters (peft multi-adapter: one base copy) and answers the web server's chat,
arena, perplexity and evaluation requests. The engine inside is
:class:`workbench.chat.ChatEngine`; this module is its process boundary.

    python -m workbench.inference.worker --model NAME --device cpu|cuda [--idle SECONDS]

Protocol: JSON lines. Requests arrive on stdin (``{"id": n, "op": ..., ...}`` or
``{"op": "cancel", "id": n}``); replies go to the process's original stdout, which is moved
to a private descriptor at start (fd 1 then points at stderr, so a library's ``print`` can
never corrupt the channel). Every reply names its request: ``{"id": n, "piece": text}``
(a streamed answer), ``{"id": n, "progress": [done, total]}``, and last ``{"id": n,
"result": ...}`` or ``{"id": n, "error": {"kind": ..., "message": ...}}``. Before any request
the worker says ``{"ready": {...}}`` -- or ``{"fatal": {...}}`` and exits when its device
has no room for the model.

Memory is claimed before it is used (:mod:`workbench.reservations`): the base weights and a
short request's KV cache before loading, each adapter before attaching it, and a longer
request's KV cache and logits before it runs (:mod:`workbench.memory.inference`), against
the same device claims training runs make. A request that does not fit beside them is
refused with both sides named; the claim never shrinks while the worker lives (the CUDA
caching allocator keeps what it once reserved).

Each request runs on its own thread; the engine serves one at a time (its lock) and a
``cancel`` sets that request's stop flag (generation ends at the next token). The worker
exits when stdin closes (the server is gone) or after ``--idle`` seconds without a request,
releasing its claim, so a queued training run is never kept waiting by an idle chat model.
It never imports gradio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import deque

START_TOKENS = 256  # the KV cache claimed before the first request (requests claim their own)
DEFAULT_IDLE_SECONDS = 900.0


def _gpu_for(device: str):
    """The GPU this worker serves on: of the usable GPUs (NVML, honouring the operator's
    mask), the one with the most room beside the claims on it; None on the CPU."""
    if device != "cuda":
        return None
    from ..devices import usable_gpus
    from ..errors import WorkbenchError
    from ..reservations import device_key, room

    gpus = usable_gpus()
    if not gpus:
        raise WorkbenchError("no visible GPU (NVML) for the inference worker; serve on the CPU")
    return max(gpus, key=lambda g: room(device_key("cuda", g), gpu=g)[0])


class Serving:
    """What the worker has claimed, and the plan behind it."""

    def __init__(self, model: str, device: str, gpu) -> None:
        from ..reservations import device_key
        from ..specs import load_model_spec

        self.model, self.device, self.gpu = model, device, gpu
        self.key = device_key(device, gpu)
        self.spec = load_model_spec(model)
        self.dtype = "bfloat16" if device == "cuda" else "float32"
        self.adapter_elements = 0
        self.claimed = 0
        self.plan = None  # the plan of the largest claim so far
        self.shape = (1, START_TOKENS, False)  # its request: batch, tokens, scoring
        self._lock = threading.Lock()  # an adapter being attached and a request may claim at once

    def _gpu_now(self):
        if self.gpu is None:
            return None
        from ..devices import visible_gpus

        return next((g for g in visible_gpus() if g.uuid == self.gpu.uuid), self.gpu)

    def need(self, batch: int, tokens: int, scoring: bool = False, adapter_elements: int | None = None) -> None:
        """Claim what a request of ``batch`` x ``tokens`` needs, if more than claimed so far
        (:class:`workbench.reservations.NoRoom` when it does not fit)."""
        from ..memory.inference import plan_inference
        from ..reservations import claim

        with self._lock:
            elements = self.adapter_elements if adapter_elements is None else adapter_elements
            plan = plan_inference(self.spec, self.dtype, self.device, elements, batch, tokens, scoring)
            if plan.total_bytes > self.claimed:
                claim(self.key, plan.total_bytes, f"the chat model {self.model} ({plan.describe()})", "inference",
                      gpu=self._gpu_now())
                self.claimed, self.plan, self.shape = plan.total_bytes, plan, (batch, tokens, scoring)

    def release(self) -> None:
        from ..reservations import release

        release(self.key)


def measured(engine) -> dict:
    """What the worker holds now, each quantity named: tensor bytes of the model (parameters
    and buffers, each storage once), the process's resident set; on CUDA allocated, peak
    allocated and reserved (torch) and the GPU's used memory (NVML)."""
    import psutil

    out = {"rss_bytes": int(psutil.Process().memory_info().rss)}
    model = engine._model
    if model is not None:
        from ..tracking import storage_key

        out["tensor_bytes"] = sum(dict(storage_key(t) for t in [*model.parameters(), *model.buffers()]).values())
    if engine.device == "cuda":
        import torch

        out.update(allocated_bytes=int(torch.cuda.memory_allocated()),
                   max_allocated_bytes=int(torch.cuda.max_memory_allocated()),
                   reserved_bytes=int(torch.cuda.memory_reserved()))
        from ..devices import nvml_handle

        handle = nvml_handle(0)
        if handle is not None:
            import pynvml

            out["nvml_used_bytes"] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    return out


class Worker:
    def __init__(self, model: str, device: str, idle: float, channel) -> None:
        self.channel, self.idle = channel, idle
        self._out = threading.Lock()
        self._jobs: dict[int, threading.Event] = {}
        self._last = time.monotonic()
        self.recent: deque = deque(maxlen=8)  # the last requests served: op, seconds, pieces, cancelled
        self.model, self.device = model, device
        self.serving = self.engine = None
        self._ops: dict[int, str] = {}  # request id -> its operation, while it runs

    def send(self, message: dict) -> None:
        line = json.dumps(message, ensure_ascii=False)
        with self._out:
            self.channel.write(line + "\n")
            self.channel.flush()

    def start(self) -> bool:
        """Claim the base's memory and say ready (or fatal); False when it cannot serve."""
        from ..chat import ChatEngine
        from ..devices import worker_gpu_env
        from ..errors import WorkbenchError

        try:
            gpu = _gpu_for(self.device)
            if gpu is not None:  # before anything touches CUDA: cuda:0 is the GPU claimed
                os.environ.update(worker_gpu_env([gpu.cuda_id]))
            self.serving = Serving(self.model, self.device, gpu)
            self.serving.need(1, START_TOKENS)
            self.engine = ChatEngine(self.model, self.serving.dtype, device="cuda" if gpu is not None else "cpu")
        except WorkbenchError as exc:
            self.send({"fatal": {"kind": type(exc).__name__, "message": str(exc)}})
            return False
        self.engine.before_run = self.serving.need
        self.send({"ready": {"pid": os.getpid(), "device": self.device, "gpu": getattr(gpu, "name", None),
                             "dtype": self.serving.dtype, "plan": self.serving.plan.as_dict()}})
        return True

    def _info(self) -> dict:
        loaded = self.engine._model is not None  # read without the engine's lock: info never waits
        return {"loaded": loaded, "context": self.engine._context if loaded else None,
                "adapters": self.engine.adapters, "pid": os.getpid(),
                "device": self.engine.device, "dtype": self.serving.dtype, "claimed_bytes": self.serving.claimed,
                "plan": self.serving.plan.as_dict(), "measured": measured(self.engine), "idle_seconds": self.idle,
                "busy": sum(1 for op in list(self._ops.values()) if op != "info"), "recent": list(self.recent)}

    def _add_adapter(self, name: str, folder: str) -> None:
        from ..memory.inference import adapter_numel

        from pathlib import Path

        if name in self.engine.adapters:
            return
        self.engine.check_adapter(Path(folder))  # its files first, then its memory
        elements = self.serving.adapter_elements + adapter_numel(folder)
        self.serving.need(*self.serving.shape, adapter_elements=elements)
        self.engine.add_adapter(name, folder)
        self.serving.adapter_elements = elements

    def handle(self, request: dict) -> None:
        from ..chat import Sampling

        rid, op = request.get("id"), request.get("op")
        stop, started, pieces, outcome = self._jobs[rid], time.monotonic(), 0, "done"
        try:
            if op == "info":
                result = self._info()
            elif op == "add_adapter":
                result = self._add_adapter(str(request["name"]), str(request["folder"]))
            elif op == "stream":
                sampling = Sampling(**request["sampling"])
                for piece in self.engine.stream(request["prompt"], request["who"], sampling, stop=stop):
                    self.send({"id": rid, "piece": piece})
                    pieces += 1
                result = None
            elif op == "answer_batch":
                result = self.engine.answer_batch(request["conversations"], request["who"], request["max_new_tokens"],
                                                  names=request.get("names"), stop=stop)
            elif op == "perplexity":
                result = self.engine.perplexity(request["texts"], request["who"], stop=stop,
                                                progress=lambda done, total: self.send({"id": rid,
                                                                                        "progress": [done, total]}))
            else:
                raise ValueError(f"unknown operation {op!r}")
            self.send({"id": rid, "result": result})
        except Exception as exc:  # a message for the caller; the worker goes on serving
            from ..errors import WorkbenchError

            message = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
            self.send({"id": rid, "error": {"kind": type(exc).__name__, "message": message}})
            outcome = type(exc).__name__
        finally:
            if op != "info":
                self.recent.append({"op": op, "seconds": round(time.monotonic() - started, 3), "pieces": pieces,
                                    "cancelled": stop.is_set(), "outcome": outcome})
            self._jobs.pop(rid, None)
            self._ops.pop(rid, None)
            if op != "info":  # asking what the worker holds is not using it: it still goes idle
                self._last = time.monotonic()

    def _watch_idle(self) -> None:
        while True:
            time.sleep(min(5.0, max(0.2, self.idle / 4)))
            busy = any(op != "info" for op in list(self._ops.values()))
            if not busy and time.monotonic() - self._last > self.idle:
                self.stop(0)

    def stop(self, code: int) -> None:
        if self.serving is not None:
            self.serving.release()
        os._exit(code)  # generate threads are daemons; nothing is left half-written

    def serve(self, requests) -> None:
        threading.Thread(target=self._watch_idle, name="idle", daemon=True).start()
        for line in requests:
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError:
                continue  # the server writes whole JSON lines; anything else is ignored
            if request.get("op") not in ("cancel", "info"):
                self._last = time.monotonic()
            if request.get("op") == "cancel":
                event = self._jobs.get(request.get("id"))
                if event is not None:
                    event.set()
                continue
            rid = request.get("id")
            if not isinstance(rid, int) or rid in self._jobs:
                continue
            self._jobs[rid] = threading.Event()
            self._ops[rid] = str(request.get("op"))
            threading.Thread(target=self.handle, args=(request,), name=f"request-{rid}", daemon=True).start()
        self.stop(0)  # stdin closed: the server is gone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE_SECONDS)
    args = parser.parse_args(argv)
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # stray prints go to the log, never into the channel
    sys.stdout = sys.stderr
    worker = Worker(args.model, args.device, args.idle, channel)
    if not worker.start():
        return 3
    worker.serve(sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
