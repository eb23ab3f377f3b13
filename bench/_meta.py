"""What a benchmark result was measured on: commit, date, device and library versions.

Every script that writes ``bench/results/*`` puts :func:`run_metadata` under ``"meta"`` in its
JSON and :func:`markdown_header` at the top of its markdown, so that any number there can be
traced to the code (commit, and whether the tree had uncommitted changes), the machine and
the libraries that produced it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent  # bench/
REPO = HERE.parent
RESULTS = HERE / "results"

# every benchmark imports this module first (``from _meta import ...``; a script's own folder is
# on sys.path): the checkout's workbench is importable, and nothing reaches a model hub
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets", "gradio")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """The first GPU's name (torch, else nvidia-smi); None without one."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def versions() -> dict[str, str]:
    """Installed versions (package metadata, so nothing heavy is imported); absent ones say so."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_metadata(device: str = "cpu") -> dict:
    """Commit (``git rev-parse HEAD``), whether tracked files had uncommitted changes (and
    which), UTC date, device (CPU model; GPU name for ``cuda``), machine and versions."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    changed = [line[3:] for line in status.splitlines() if line.strip()] if status else []
    meta = {"commit": (_git("rev-parse", "HEAD") or "unknown").strip(), "dirty": bool(changed) if status is not None else None,
            "dirty_files": changed[:30], "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device, "cpu": cpu_model(), "cpus": os.cpu_count(), "machine": platform.platform()}
    if device == "cuda":
        meta["gpu"] = gpu_name() or "none found"
    meta["device_name"] = meta.get("gpu") or meta["cpu"]
    if "torch" in sys.modules:
        meta["torch_threads"] = sys.modules["torch"].get_num_threads()
    meta["versions"] = versions()
    meta.update(meta["versions"])  # flat too: older readers use meta["torch"] etc.
    return meta


def markdown_header(title: str, meta: dict) -> list[str]:
    """The first lines of a results markdown file: title, then commit, date, device, versions."""
    v = meta["versions"]
    commit = meta["commit"][:12] + (" (with uncommitted changes)" if meta.get("dirty") else "")
    device = f"{meta['device']}: {meta['device_name']}" + (f", {meta['cpus']} CPUs" if meta["device"] == "cpu" else "")
    return [f"# {title}", "",
            f"- commit: `{commit}`", f"- date (UTC): {meta['date']}", f"- device: {device}",
            "- versions: " + ", ".join(f"{k} {v[k]}" for k in ("python",) + LIBRARIES), ""]
