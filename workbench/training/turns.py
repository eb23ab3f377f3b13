"""One training run per device at a time; the others wait as ``queued`` and start in order.

A worker holds an exclusive ``flock`` on ``sessions/.device-<kind>.lock`` for its whole
life (the kernel releases it when the process dies, even by SIGKILL) and takes it only when
no older queued session is still waiting (session ids sort by creation time).
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path


def _older_waiting(folder: Path) -> bool:
    from ..sessions import last_status, worker_alive

    for other in folder.parent.iterdir():
        if other.name < folder.name and other.is_dir() and (other / "job.json").is_file():
            if last_status(other) == "queued" and worker_alive(other):
                return True
    return False


def wait_for_turn(folder: Path, device: str, poll: float = 0.5):
    """Block until this session may use ``device``; returns the open lock file (keep it)."""
    lock = open(folder.parent / f".device-{device}.lock", "a+")
    while True:
        if not _older_waiting(folder):
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return lock
            except BlockingIOError:
                pass
        time.sleep(poll)
