"""Where the workbench keeps files: bundled assets (read-only) and the local cache."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
ASSETS_DIR = REPO_DIR / "assets"
BUNDLED_MODELS_DIR = ASSETS_DIR / "models"
TEXT_DIR = ASSETS_DIR / "text"
DEMO_DIR = ASSETS_DIR / "demo"  # the bundled demo dataset (CC0), the only files the page serves
DEMO_DATASET = DEMO_DIR / "orders.jsonl"
DEMO_HELDOUT = DEMO_DIR / "orders_heldout.jsonl"
#: what the demo is tuned for (bench/demo.py measures it; the page presets it): every example
#: fits in 128 tokens, and 12 steps of 8 at 1e-3 teach the format
DEMO_SETTINGS = {"batch": 8, "seq": 128, "max_steps": 12, "learning_rate": 1e-3}


def is_demo_dataset(path: str | Path | None) -> bool:
    """Is ``path`` the bundled demo dataset, byte for byte (the page uploads a copy of it)?"""
    if not path:
        return False
    try:
        candidate = Path(path)
        return candidate.stat().st_size == DEMO_DATASET.stat().st_size and \
            candidate.read_bytes() == DEMO_DATASET.read_bytes()
    except OSError:
        return False


def publish_folder(target: Path, write, prefix: str) -> Path:
    """``write(tmp)`` into a fresh temporary folder beside ``target``, then rename it to
    ``target`` (readable like any cache entry): a crash leaves no half-written ``target``;
    on any error the temporary folder is removed and the error raised."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def cache_dir() -> Path:
    """The cache root: ``$WORKBENCH_CACHE`` or ``~/.cache/peft-workbench``."""
    root = os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "peft-workbench"
    return Path(root)
