"""How close the memory planner came to measured memory: a one-line summary of the committed
``bench/results/planner_accuracy.json`` (written by ``python bench/planner_accuracy.py``).

Pure: it reads a file and formats numbers; it never measures anything. Where the results file
or the device's entry is missing it returns ``None`` (nothing is invented).
"""

from __future__ import annotations

import json
from pathlib import Path

from .paths import REPO_DIR

RESULTS_FILE = REPO_DIR / "bench" / "results" / "planner_accuracy.json"
DEVICE_NAMES = {"cpu": "CPU", "cuda": "GPU"}


def plan_error_percent(predicted: int, measured: int) -> float | None:
    """The plan's error as the planner-accuracy benchmark reports it, (predicted - measured) /
    measured in percent: positive when the plan is over. ``None`` when nothing was measured."""
    return (predicted - measured) / measured * 100 if measured else None


def planner_accuracy(device: str, path: str | Path | None = None) -> str | None:
    """``"planner error on CPU (tiny/small configs, 2026-11-25): median 0.4%, 31/32 within ±5%,
    worst -7.9%"`` for ``device`` (``"cpu"`` or ``"cuda"``), or ``None`` when that device has
    no measured results."""
    try:
        data = json.loads(Path(path or RESULTS_FILE).read_text(encoding="utf-8"))
        entry = data["results"][device]
        summary = entry["summary"]
        date = str(entry["meta"]["date"])[:10]
        median, within, n = summary["median_abs_error_pct"], summary["within_5pct"], summary["measured"]
        worst = summary["worst_error_pct"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not n:
        return None
    scope = entry["meta"].get("models_label", "measured configs")
    return (f"planner error on {DEVICE_NAMES.get(device, device)} ({scope}, {date}): median {median:.1f}%, "
            f"{within}/{n} within ±5%, worst {worst:+.1f}%")
