"""Runs take turns on the machine's devices; the others wait as ``queued`` and start in order.

CPU: one run at a time, holding an exclusive ``flock`` on ``sessions/.device-cpu.lock``.
GPUs: one lock file per GPU, named by its UUID (``sessions/.gpu-GPU-<uuid>.lock``), so that
servers with different ``CUDA_VISIBLE_DEVICES`` on one machine still share a GPU's lock. The
GPUs are those the operator's ``CUDA_VISIBLE_DEVICES`` shows (:func:`workbench.devices.usable_gpus`,
NVML, never CUDA). A run needing k GPUs waits until it holds k of them at once -- a 2-GPU run
waits for two free GPUs, while single-GPU runs on a multi-GPU machine run side by side on
different GPUs. The granted GPUs' UUIDs become the run's ``CUDA_VISIBLE_DEVICES``
(:func:`workbench.devices.worker_gpu_env`).

The kernel releases a lock when its process dies, even by SIGKILL. A run takes its turn only
when no older queued session is still waiting (session ids sort by creation time), so
runs start in the order they were queued.

With its locks a run claims its predicted peak on its devices (:mod:`workbench.reservations`),
so an inference worker (chat) started later sees it. When a chat model's claim leaves too
little room, the run gives its locks back and waits -- still ``queued``, with the reason in
an event -- until the chat model is released (its worker stops after a while idle, or with
*Release the model* on the Chat tab). It waits only when releasing the chat models would
make it fit; otherwise (no chat model, or a run too big even without one) it never waits on
claims: the preflight and the worker's memory cap judge the device as before.
"""

from __future__ import annotations

import fcntl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import SettingsError


@dataclass
class Turn:
    """The locks a run holds (keep the object alive) and the GPU indices it was given."""

    locks: list[IO] = field(default_factory=list)
    gpus: list[str] = field(default_factory=list)  # CUDA_VISIBLE_DEVICES entries (UUIDs)
    claims: list[str] = field(default_factory=list)  # device keys claimed (workbench.reservations)

    def close(self) -> None:
        from ..reservations import release

        for key in self.claims:
            release(key)
        self.claims = []
        for lock in self.locks:
            lock.close()
        self.locks = []


def _claim(turn: Turn, devices: list[tuple[str, object]], need_bytes: int, what: str) -> tuple | None:
    """Claim ``need_bytes`` on each of ``devices`` ((key, GpuInfo or None)) for this run;
    (the reason it must wait, the chat models in the way) or None when it may go on."""
    from ..reservations import NoRoom, claim, claims, room

    for key, gpu in devices:
        try:
            claim(key, need_bytes, what, "training", gpu=gpu)
            turn.claims.append(key)
        except NoRoom as exc:
            chat = [c for c in claims(key) if c.kind == "inference"]
            # wait only for what releasing the chat models would make fit; a run too big even
            # then goes on (the preflight and the memory cap judge it), it would wait forever
            if chat and need_bytes <= room(key, gpu=gpu)[0] + sum(c.bytes for c in chat):
                return str(exc), tuple(sorted(c.what for c in chat))
    return None


def _older_waiting(folder: Path) -> bool:
    from ..sessions import last_status, worker_alive

    for other in folder.parent.iterdir():
        if other.name < folder.name and other.is_dir() and (other / "job.json").is_file():
            if last_status(other) == "queued" and worker_alive(other):
                return True
    return False


def _try(path: Path) -> IO | None:
    lock = open(path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return lock
    except BlockingIOError:
        lock.close()
        return None


def wait_for_turn(folder: Path, device: str, count: int = 1, poll: float = 0.5, need_bytes: int | None = None,
                  on_wait=None) -> Turn:
    """Block until this session may run: the CPU lock, or ``count`` free GPUs -- and, with
    ``need_bytes`` (its predicted peak per device), room beside a chat model's claim;
    ``on_wait(reason)`` is called when a chat model makes it wait (once per reason)."""
    from ..devices import usable_gpus
    from ..reservations import device_key

    gpus = usable_gpus() if device == "cuda" else []
    total = len(gpus)
    if device == "cuda" and count > total > 0:
        raise SettingsError(f"the run needs {count} GPUs; this machine has {total}")
    said = None
    while True:
        if not _older_waiting(folder):
            turn, chosen, ready = Turn(), [], False
            if device != "cuda" or total == 0:  # CPU, or CUDA without NVML: one run at a time
                lock = _try(folder.parent / f".device-{device}.lock")
                if lock is not None:
                    turn.locks.append(lock)
                    ready = True
                    if device != "cuda":  # a GPU NVML cannot see has no known room: nothing to claim
                        chosen.append((device_key("cpu"), None))
            else:
                for gpu in gpus:
                    lock = _try(folder.parent / f".gpu-{gpu.lock_name}.lock")
                    if lock is not None:
                        turn.locks.append(lock)
                        turn.gpus.append(gpu.cuda_id)
                        chosen.append((device_key("cuda", gpu), gpu))
                        if len(turn.gpus) == count:
                            ready = True
                            break
            if ready:
                blocked = _claim(turn, chosen, need_bytes, f"run {folder.name}") if need_bytes else None
                if blocked is None:
                    return turn
                if blocked[1] != said and on_wait is not None:  # said once per chat model in the way
                    on_wait(blocked[0])
                said = blocked[1]
            turn.close()  # not enough free at once: hold none while waiting
        time.sleep(poll)
