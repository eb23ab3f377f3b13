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


def cache_dir() -> Path:
    """The cache root: ``$WORKBENCH_CACHE`` or ``~/.cache/peft-workbench``."""
    root = os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "peft-workbench"
    return Path(root)
