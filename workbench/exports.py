"""Exports of finished runs (the adapter zip, the merged model zip): private, per run, short-lived.

An export is written into its run's folder, ``sessions/<id>/exports/<id>-adapter.zip`` or
``<id>-merged.zip`` (the folder is private to the server's user, mode 0700), never into
gradio's shared temporary folder. The web server hands it out only through its own export
route, which asks :func:`export_file` -- the owner check of :func:`workbench.sessions.check_access`
-- so a run's export is served to the run's owner and to nobody else (an unknown run, a run of
someone else and a missing export read the same). A new export of the same kind replaces the
previous one, and :func:`cleanup_exports` removes exports older than
``$WORKBENCH_EXPORT_MAX_AGE_HOURS`` (default 24; ``python app.py --export-max-age-hours``):
at start, at each export, and periodically while the server runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import WorkbenchError

EXPORTS = "exports"
KINDS = {"zip": "adapter", "merged": "merged"}  # the Runs tab's action -> the file name's suffix
MAX_AGE_ENV = "WORKBENCH_EXPORT_MAX_AGE_HOURS"
DEFAULT_MAX_AGE_HOURS = 24.0
PARTIAL = ".partial-"  # an export being written; removed when it is older than an hour and the maximum age
_PARTIAL_GRACE_SECONDS = 3600.0


def max_age_seconds() -> float:
    """How long an export is kept: ``$WORKBENCH_EXPORT_MAX_AGE_HOURS`` hours (default 24)."""
    raw = os.environ.get(MAX_AGE_ENV)
    try:
        hours = float(raw) if raw else DEFAULT_MAX_AGE_HOURS
    except ValueError:
        raise WorkbenchError(f"{MAX_AGE_ENV}={raw!r} is not a number of hours") from None
    if not hours > 0:
        raise WorkbenchError(f"{MAX_AGE_ENV} must be positive, got {raw!r}")
    return hours * 3600.0


def export_name(session_id: str, action: str) -> str:
    """The file name of a run's export: ``<id>-adapter.zip`` or ``<id>-merged.zip``."""
    if action not in KINDS:
        raise WorkbenchError(f"unknown export {action!r}; one of {', '.join(KINDS)}")
    return f"{session_id}-{KINDS[action]}.zip"


def export_run(session_id: str, action: str, user: str | None = None) -> Path:
    """Write the export (``action``: "zip" or "merged") of one of ``user``'s finished runs into
    the run's private export folder; returns its path (for the export route, never for gradio)."""
    from .sessions import check_access
    from .training.artifacts import export_zip
    from .training.checkpoints import final_adapter
    from .training.merge import merge_in_worker

    folder = check_access(session_id, user)
    name = export_name(session_id, action)
    final = final_adapter(folder)
    if final is None:
        raise WorkbenchError(f"{session_id} has no finished result yet.")
    cleanup_exports()
    out = folder / EXPORTS
    out.mkdir(mode=0o700, exist_ok=True)
    os.chmod(out, 0o700)
    work = Path(tempfile.mkdtemp(prefix=PARTIAL, dir=out))  # a crash leaves no half-written export behind
    try:
        if action == "merged":
            merged = merge_in_worker(final, work / f"{session_id}-merged")  # weights never load in the server
            archive = Path(shutil.make_archive(str(work / f"{session_id}-merged"), "zip", merged))
        else:
            archive = export_zip(final, work / name)
        os.chmod(archive, 0o600)
        os.replace(archive, out / name)  # atomic: a concurrent download sees the old file or the new one
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the merged model folder: only its zip is kept
    return out / name


def export_file(session_id: str, name: str, user: str | None) -> Path:
    """The export ``name`` of run ``session_id`` if ``user`` owns the run and it exists; else
    the same :class:`WorkbenchError` for every other case (foreign run, unknown run or file)."""
    from .sessions import check_access

    missing = WorkbenchError(f"no export {name!r} of session {session_id}")
    try:
        folder = check_access(session_id, user)
    except WorkbenchError:
        raise missing from None
    if name not in {export_name(session_id, action) for action in KINDS}:
        raise missing
    path = folder / EXPORTS / name
    try:
        if not path.is_file() or path.is_symlink() or path.parent.is_symlink():
            raise missing
    except OSError:
        raise missing from None
    if time.time() - path.stat().st_mtime > max_age_seconds():
        raise missing  # expired: cleanup removes it at the latest at its next round
    return path


def cleanup_exports(max_age: float | None = None, now: float | None = None) -> int:
    """Remove exports older than ``max_age`` seconds (default :func:`max_age_seconds`) from every
    run of the store; returns the bytes freed. Unfinished exports are given at least an hour."""
    from .sessions import sessions_dir

    max_age = max_age_seconds() if max_age is None else max_age
    now = time.time() if now is None else now
    root = sessions_dir()
    freed = 0
    if not root.is_dir():
        return 0
    for exports in root.glob(f"*/{EXPORTS}"):
        if exports.is_symlink() or not exports.is_dir():
            continue
        for entry in exports.iterdir():
            try:
                info = entry.lstat()
                partial = entry.name.startswith(PARTIAL)
                if now - info.st_mtime <= (max(max_age, _PARTIAL_GRACE_SECONDS) if partial else max_age):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    freed += sum(p.lstat().st_size for p in entry.rglob("*") if p.is_file())
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    freed += info.st_size
                    entry.unlink()
            except OSError:
                continue  # removed by a concurrent cleanup, or not ours to remove
    return freed
