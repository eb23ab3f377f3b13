"""Checkpoints that are complete or invisible.

The Trainer writes each checkpoint into ``.staging/``; only when every file is on disk is
it marked ``COMPLETE`` and renamed into ``checkpoints/`` (see ``CheckpointPublisher``), and a
folder without the marker is never listed or loaded. The final adapter is written to a temporary folder and renamed into
place, so a crash while saving never leaves a folder that looks finished, and a previous
adapter is never overwritten by a partial one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

MARKER = "COMPLETE"


def mark_complete(folder: Path, **info) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    marker = folder / (MARKER + ".tmp")
    marker.write_text(json.dumps({"time": time.time(), **info}))
    os.replace(marker, folder / MARKER)


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def complete_checkpoints(session_dir: Path) -> list[Path]:
    """Complete intermediate checkpoints, oldest first."""
    root = session_dir / "checkpoints"
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and is_complete(p)] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]))


def final_adapter(session_dir: Path) -> Path | None:
    folder = session_dir / "final"
    return folder if folder.is_dir() and is_complete(folder) else None


def newest_complete(session_dir: Path) -> Path | None:
    """The final adapter, else the newest complete checkpoint, else None."""
    return final_adapter(session_dir) or (complete_checkpoints(session_dir) or [None])[-1]


def save_atomically(target: Path, write) -> Path:
    """``write(tmp_folder)``, mark it complete, then rename it to ``target``."""
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        mark_complete(tmp)
        if target.exists():  # keep the previous one until the new one is complete
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
