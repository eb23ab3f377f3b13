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
"""

from __future__ import annotations

import fcntl
import os
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

    def close(self) -> None:
        for lock in self.locks:
            lock.close()
        self.locks = []


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


def wait_for_turn(folder: Path, device: str, count: int = 1, poll: float = 0.5) -> Turn:
    """Block until this session may run: the CPU lock, or ``count`` free GPUs."""
    from ..devices import usable_gpus

    gpus = usable_gpus() if device == "cuda" else []
    total = len(gpus)
    if device == "cuda" and count > total > 0:
        raise SettingsError(f"the run needs {count} GPUs; this machine has {total}")
    while True:
        if not _older_waiting(folder):
            if device != "cuda" or total == 0:  # CPU, or CUDA without NVML: one run at a time
                lock = _try(folder.parent / f".device-{device}.lock")
                if lock is not None:
                    return Turn([lock], [])
            else:
                turn = Turn()
                for gpu in gpus:
                    lock = _try(folder.parent / f".gpu-{gpu.lock_name}.lock")
                    if lock is not None:
                        turn.locks.append(lock)
                        turn.gpus.append(gpu.cuda_id)
                        if len(turn.gpus) == count:
                            return turn
                turn.close()  # not enough free at once: hold none while waiting
        time.sleep(poll)
