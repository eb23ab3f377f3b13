"""The web server's handle on an inference worker (:mod:`workbench.inference.worker`): the
same calls as :class:`workbench.chat.ChatEngine` (``stream``, ``answer``, ``answer_batch``,
``perplexity``, ``add_adapter``, ``adapters``, ``tokenizer``), each a JSON request to the
worker process, so the server never loads a model, never touches CUDA and stays free to
answer while a model generates.

- **Started on demand.** The first request starts the worker (``python -m
  workbench.inference.worker``, an argument list) on the device the server defaults to
  (NVML: a GPU when one is visible, else the CPU) and waits for it to say ready.
- **Streams.** ``stream`` yields each piece as the worker sends it.
- **Cancels.** Closing a stream, or setting the caller's ``stop`` event, sends ``cancel``:
  the worker ends generation at its next token; the caller does not wait for it.
- **Restarts after a crash.** When the worker dies (the OOM killer, ``kill -9``, a crash),
  every request in flight fails with a message saying so; the next request starts a fresh
  worker, and the adapters attached before are attached again.
- **Refuses what does not fit.** The worker claims its memory before loading
  (:mod:`workbench.reservations`); a refusal comes back as :class:`NoRoom`, naming what is
  on the device.
- **Goes idle.** The worker exits after ``WORKBENCH_INFERENCE_IDLE_S`` seconds (default 900)
  without a request, releasing its memory; :meth:`close` stops it at once.

The worker's stderr (its log) is ``sessions/.inference/<model>.log``; a crash message quotes
its last lines.
"""

from __future__ import annotations

import copy
import itertools
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..chat import BASE, ChatEngine
from ..chat_request import ModelBusyError, OperationCancelled, PromptTooLongError, Sampling, check_stop, env_setting
from ..errors import WorkbenchError
from ..reservations import NoRoom

IDLE_VARIABLE, DEFAULT_IDLE_SECONDS = "WORKBENCH_INFERENCE_IDLE_S", 900.0
START_SECONDS = 600.0  # the most a worker may take to import its libraries and say ready
POLL = 0.1
ERRORS = {cls.__name__: cls for cls in (ModelBusyError, PromptTooLongError, OperationCancelled, NoRoom)}


class WorkerGone(WorkbenchError):
    """The inference worker stopped while a request was in flight."""


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        why = " (the kernel's OOM killer, or kill -9)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{why}"
    return f"exited with code {code}"


class InferenceClient:
    def __init__(self, model: str, device: str | None = None, idle_seconds: float | None = None) -> None:
        from ..devices import default_device

        self.model_name = model
        self.device = device or default_device()  # NVML, never CUDA
        self.idle_seconds = float(idle_seconds if idle_seconds is not None
                                  else env_setting(IDLE_VARIABLE, DEFAULT_IDLE_SECONDS))
        self._adapters: dict[str, Path] = {}
        self._proc: subprocess.Popen | None = None
        self._pending: dict[int, queue.Queue] = {}
        self._ids = itertools.count(1)
        self._start_lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._tokenizer = None
        self.ready: dict | None = None  # the worker's ready message (pid, device, plan)
        self.last_exit: str | None = None  # how the previous worker stopped, e.g. "pid 7 was killed by SIGKILL"
        self._released: set[int] = set()  # workers stopped by close()

    # -- the process -----------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        from ..sessions import sessions_dir

        folder = sessions_dir() / ".inference"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / (re.sub(r"[^A-Za-z0-9._-]", "_", self.model_name)[-100:] + ".log")

    def _log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])[-800:]

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _ensure(self) -> subprocess.Popen:
        """The running worker, started (and its adapters attached) when there is none."""
        with self._start_lock:
            if self.alive:
                return self._proc
            startup: queue.Queue = queue.Queue()
            with open(self.log_path, "w", encoding="utf-8") as log:  # an argument list: no shell
                proc = subprocess.Popen([sys.executable, "-m", "workbench.inference.worker", "--model", self.model_name,
                                         "--device", self.device, "--idle", str(self.idle_seconds)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                        text=True, encoding="utf-8", bufsize=1, close_fds=True)
            self._proc, self.ready = proc, None
            threading.Thread(target=self._read, args=(proc, startup), name=f"inference-{proc.pid}",
                             daemon=True).start()
            try:
                first = startup.get(timeout=START_SECONDS)
            except queue.Empty:
                proc.kill()
                raise WorkerGone(f"the inference worker for {self.model_name} did not start within "
                                 f"{START_SECONDS:g} s") from None
            if "ready" not in first:
                proc.wait()
                fatal = first.get("fatal") or {}
                cls = ERRORS.get(fatal.get("kind"), WorkbenchError)
                raise cls(fatal.get("message") or f"the inference worker for {self.model_name} "
                          f"{_exit_reason(proc.returncode)} while starting: {self._log_tail()}")
            self.ready = first["ready"]
            for name, folder in list(self._adapters.items()):  # a restarted worker gets them back
                try:
                    self._call({"op": "add_adapter", "name": name, "folder": str(folder)}, proc=proc)
                except WorkbenchError:  # gone or changed since: attached again when next asked for
                    self._adapters.pop(name, None)
            return proc

    def _read(self, proc: subprocess.Popen, startup: queue.Queue) -> None:
        """Route the worker's replies to their requests; when it ends, fail what is in flight."""
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "ready" in message or "fatal" in message:
                startup.put(message)
                continue
            box = self._pending.get(message.get("id"))
            if box is not None:
                box.put(message)
        code = proc.wait()
        why = f"the inference worker for {self.model_name} (pid {proc.pid}) {_exit_reason(code)}"
        if code != 0:
            tail = self._log_tail()
            why += f"; it starts again on the next request{f'. Its log ends: {tail}' if tail else ''}"
        if proc.pid in self._released:
            self.last_exit = f"pid {proc.pid} was released"
        elif code == 0:
            self.last_exit = f"pid {proc.pid} stopped after {self.idle_seconds / 60:g} min idle"
        else:
            self.last_exit = f"pid {proc.pid} {_exit_reason(code)}"
        startup.put({"fatal": {"kind": "WorkerGone", "message": why}})
        for box in list(self._pending.values()):
            box.put({"gone": why})

    def close(self) -> None:
        """Stop the worker now (it releases its memory); the next request starts a new one."""
        with self._start_lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            self._released.add(proc.pid)
            try:
                proc.stdin.close()  # the worker exits at the end of its input
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()

    # -- requests ---------------------------------------------------------------------------

    def _send(self, proc: subprocess.Popen, message: dict) -> None:
        with self._send_lock:
            try:
                proc.stdin.write(json.dumps(message, ensure_ascii=False) + "\n")
                proc.stdin.flush()
            except (OSError, ValueError):  # the worker is gone: its reader fails the request
                pass

    def _request(self, message: dict, stop: threading.Event | None = None,
                 proc: subprocess.Popen | None = None) -> Iterator[dict]:
        """Send ``message`` and yield the worker's replies to it up to and including the
        last; raises the worker's error as its own kind. Closing the iterator (or ``stop``)
        cancels the request in the worker. A worker that went idle (exited 0) just as the
        request was sent is started again and asked once more."""
        given = proc
        for attempt in (1, 2):
            proc = given or self._ensure()
            rid = next(self._ids)
            box: queue.Queue = queue.Queue()
            self._pending[rid] = box
            cancelled = finished = replied = False
            try:
                self._send(proc, {**message, "id": rid})
                while True:
                    if stop is not None and stop.is_set() and not cancelled:
                        self._send(proc, {"op": "cancel", "id": rid})
                        cancelled = True
                    try:
                        reply = box.get(timeout=POLL)
                    except queue.Empty:
                        if proc.poll() is not None:
                            time.sleep(POLL)  # its reader posts "gone" once the pipe is drained
                            if box.empty():
                                box.put({"gone": f"the inference worker for {self.model_name} "
                                                 f"{_exit_reason(proc.returncode)}; it starts again on the next "
                                                 "request"})
                        continue
                    if "gone" in reply:
                        finished = True
                        if attempt == 1 and not replied and given is None and proc.returncode == 0:
                            break  # it went idle as we asked: ask a new one
                        raise WorkerGone(reply["gone"])
                    if "error" in reply:
                        finished = True
                        error = reply["error"]
                        raise ERRORS.get(error.get("kind"), WorkbenchError)(error.get("message", "failed"))
                    finished, replied = "result" in reply, True
                    yield reply
                    if finished:
                        return
            finally:
                self._pending.pop(rid, None)
                if not finished and not cancelled:  # closed early: stop the work in the worker
                    self._send(proc, {"op": "cancel", "id": rid})

    def _call(self, message: dict, stop: threading.Event | None = None, proc: subprocess.Popen | None = None,
              on_progress: Callable[[int, int], None] | None = None):
        for reply in self._request(message, stop, proc):
            if "progress" in reply and on_progress is not None:
                on_progress(*reply["progress"])
            if "result" in reply:
                return reply["result"]
        raise WorkerGone(f"the inference worker for {self.model_name} ended the request without a result")

    # -- the engine's calls ----------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    @property
    def tokenizer(self):
        """A copy of the model's tokenizer, loaded here (a tokenizer needs no model)."""
        if self._tokenizer is None:
            from ..data import load_tokenizer
            from ..loading import weights_dir
            from ..specs import load_model_spec

            spec = load_model_spec(self.model_name)
            self._tokenizer = load_tokenizer(self.model_name if spec.source == "builtin"
                                             else str(weights_dir(spec)))
        return copy.deepcopy(self._tokenizer)

    def info(self) -> dict | None:
        """What the running worker holds (pid, device, claim and its plan, measured memory);
        None when no worker runs (nothing is started to answer)."""
        if not self.alive:
            return None
        try:
            return self._call({"op": "info"}, proc=self._proc)
        except WorkbenchError:
            return None

    def add_adapter(self, name: str, folder: str | Path) -> None:
        """Attach a finished run's adapter under ``name`` (the worker checks its files and
        claims its memory first); remembered, and attached again after a restart."""
        folder = Path(folder)
        if name == BASE or not name or name in self._adapters:
            raise WorkbenchError(f"adapter name {name!r} is taken or reserved")
        self._call({"op": "add_adapter", "name": name, "folder": str(folder)})
        self._adapters[name] = folder

    def stream(self, prompt, who: str, sampling: Sampling, stop: threading.Event | None = None) -> Iterator[str]:
        """The answer of ``who``, piece by piece as the worker generates it."""
        message = {"op": "stream", "prompt": prompt, "who": who, "sampling": {
            "max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "seed": sampling.seed}}
        replies = self._request(message, stop)
        try:
            for reply in replies:
                if "piece" in reply:
                    yield reply["piece"]
        finally:
            replies.close()

    answer = ChatEngine.answer  # the whole streamed answer, the engine's own code over this stream

    def answer_batch(self, conversations: list, who: str, max_new_tokens: int, names: list[str] | None = None,
                     stop: threading.Event | None = None) -> list[str]:
        check_stop(stop, f"the answers of {who}")
        result = self._call({"op": "answer_batch", "conversations": conversations, "who": who,
                             "max_new_tokens": max_new_tokens, "names": names}, stop)
        check_stop(stop, f"the answers of {who}")
        return result

    def perplexity(self, texts: list[str], who: str, stop: threading.Event | None = None,
                   progress: Callable[[int, int], None] | None = None) -> float:
        check_stop(stop, f"perplexity of {who}")
        return self._call({"op": "perplexity", "texts": texts, "who": who}, stop, on_progress=progress)


def describe(info: dict | None, client: InferenceClient | None = None) -> str:
    """The Chat tab's line on the model worker: where it runs, what it claimed (the plan's
    parts) and what it holds now, each number named."""
    GIB = 1024**3
    if info is None:
        gone = client.last_exit if client is not None else None
        return ("Model worker: not running (it starts with the next answer)"
                + (f"; the last one, {gone}." if gone else "."))
    plan = info["plan"]
    parts = ", ".join(f"{p['name'].replace('_', ' ')} {p['bytes'] / GIB:.2f}" for p in plan["parts"] if p["bytes"])
    held = info.get("measured") or {}
    now = [f"{label} {held[key] / GIB:.2f} GiB" for key, label in (
        ("tensor_bytes", "model tensors"), ("allocated_bytes", "CUDA allocated"), ("reserved_bytes", "CUDA reserved"),
        ("nvml_used_bytes", "GPU used (NVML)"), ("rss_bytes", "process RSS")) if key in held]
    return (f"Model worker: pid {info['pid']} on {info['device']} ({info['dtype']}), "
            f"{'loaded' if info.get('loaded') else 'loading on first answer'}; "
            f"claimed {info['claimed_bytes'] / GIB:.2f} GiB = {parts} GiB for {plan['batch']} x {plan['tokens']:,} "
            f"tokens; now {', '.join(now)}. It stops after {info['idle_seconds'] / 60:g} min idle.")
