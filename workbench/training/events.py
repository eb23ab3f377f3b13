"""The worker's event log, ``sessions/<id>/events.jsonl``: one JSON object per line.

Kinds: ``status`` (queued, loading, running, saving, completed, failed, cancelled,
interrupted -- with a reason), ``log`` (step, epoch, loss, eval loss, learning rate, grad
norm, tokens/s, ETA) and ``memory`` (samples, each naming its source). Readers tail the file
by byte offset and never see half a line.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

STATUSES = ("queued", "loading", "running", "saving", "completed", "failed", "cancelled", "interrupted")
FINAL = ("completed", "failed", "cancelled", "interrupted")


class EventWriter:
    """Appends events; safe to call from the training thread and the sampler thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fh = open(self.path, "a", encoding="utf-8")

    def emit(self, kind: str, **data: Any) -> dict[str, Any]:
        event = {"kind": kind, "time": time.time(), **data}
        line = json.dumps(event, default=str) + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
        return event

    def status(self, status: str, **data: Any) -> dict[str, Any]:
        assert status in STATUSES, status
        return self.emit("status", status=status, **data)

    def close(self) -> None:
        with self._lock:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()


def read_events(path: str | Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events after byte ``offset`` and the offset to continue from (complete lines only)."""
    path = Path(path)
    if not path.exists():
        return [], offset
    with open(path, "rb") as fh:
        fh.seek(offset)
        chunk = fh.read()
    end = chunk.rfind(b"\n") + 1
    events = []
    for line in chunk[:end].splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn line from a killed writer: skip it, keep the rest
    return events, offset + end
