"""The merged-model export, in its own process: ``python -m workbench.training.merge <result> <out>``.

Merging loads the base model and the adapter, so it never runs in the web server (which must
not load weights for this nor initialise CUDA): :func:`workbench.exports.export_run` starts
this module by argument list, with no GPU visible (a merge is a weight sum: the CPU does it,
and a training run on the GPU keeps its memory). It prints one JSON line, ``{"ok": true}`` or
``{"error": "<the message for the user>"}``, and exits 0 or 1; the folder ``<out>`` exists only
when the merge is complete (:func:`workbench.training.artifacts.export_merged` writes it under
``<out>.partial`` and renames it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import WorkbenchError

#: a merge that takes longer than this is stopped (a 7B model merges in a few minutes on a CPU)
TIMEOUT_SECONDS = 3600


def merge_in_worker(result: Path, destination: Path, timeout: float = TIMEOUT_SECONDS) -> Path:
    """Run the merge of ``result`` into ``destination`` in a child process; its message on failure."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    try:
        done = subprocess.run([sys.executable, "-m", "workbench.training.merge", str(result), str(destination)],
                              env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WorkbenchError(f"the merge did not finish within {timeout / 60:.0f} min; export the adapter zip "
                             "instead") from None
    answer = {}
    for line in reversed(done.stdout.splitlines()):
        try:
            answer = json.loads(line)
            break
        except ValueError:
            continue
    if done.returncode == 0 and answer.get("ok") and destination.is_dir():
        return destination
    if answer.get("error"):
        raise WorkbenchError(answer["error"])
    how = f"was killed by signal {-done.returncode}" if done.returncode < 0 else f"exited with code {done.returncode}"
    raise WorkbenchError(f"the merge process {how} (out of memory?); export the adapter zip instead")


def main(argv: list[str]) -> int:
    from .artifacts import export_merged

    result, destination = Path(argv[0]), Path(argv[1])
    try:
        export_merged(result, destination)
    except WorkbenchError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    print(json.dumps({"ok": True}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
