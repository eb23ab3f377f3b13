"""What the web UI accepts as a model name: checked before anything is loaded.

The command line is the operator's and may name any folder; the browser is not trusted.
From the UI a model is ``tiny``, a bundled name, a hub id (``gpt2`` or ``org/name``, by
huggingface_hub's own rule: :func:`workbench.hub.is_hub_id`), or an existing local folder
*inside the configured model roots* -- never a URL, a ``file://`` path or a folder elsewhere
on the machine. A bundled name or a local folder wins over a hub id of the same spelling.
Roots: ``$WORKBENCH_MODEL_ROOTS`` (``os.pathsep`` separated; ``python app.py --model-root
DIR`` sets it), else the working directory and the workbench cache.

Some folders are never models, whatever the roots (:func:`private_folders`): the sessions
store (every user's runs: a run's adapter is reached by its run id through the owner check
of :func:`workbench.sessions.check_access`, never by its folder) and gradio's upload folder.
A name that resolves inside one -- typed relative or absolute, through a symlink, for a
session that exists or not, of any owner -- is refused before the file system is asked
whether it exists, with the one message used for every folder outside the roots. No
message names a server path: not the roots, not the working directory.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .errors import UnknownModelError
from .paths import BUNDLED_MODELS_DIR, cache_dir
from .hub import is_hub_id
from .smollm2 import SMOLLM2_NAME, is_smollm2
from .tiny import TINY_NAME

MAX_NAME_LENGTH = 512
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
#: the refusal of every folder a browser may not name (outside the roots, or private): one text,
#: so that it tells nothing about what is there
OUTSIDE_ROOTS = ("that folder is outside the model folders this server allows; the operator adds folders with "
                 "--model-root (a finished run's adapter is picked by its run id on the Chat tab)")


def model_roots() -> list[Path]:
    configured = os.environ.get("WORKBENCH_MODEL_ROOTS")
    roots = [Path(p) for p in configured.split(os.pathsep) if p] if configured else [Path.cwd(), cache_dir()]
    return [r.expanduser().resolve() for r in roots]


def private_folders() -> list[Path]:
    """Folders no model name from the browser may point into, whatever the roots: the
    sessions store (``$WORKBENCH_SESSIONS`` or ``sessions/``) and gradio's upload folder
    (``$GRADIO_TEMP_DIR``, else gradio's default under the temp folder). The workbench
    cache holds only model folders (``models/<version>``), so none of it is private."""
    from .sessions import sessions_dir

    folders = [sessions_dir(), Path(tempfile.gettempdir()) / "gradio"]
    if os.environ.get("GRADIO_TEMP_DIR"):
        folders.append(Path(os.environ["GRADIO_TEMP_DIR"]))
    out = []
    for folder in folders:
        absolute = Path(os.path.abspath(folder.expanduser()))
        out += [absolute, absolute.resolve()]
    return out


def _inside(path: Path, folders: list[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def _is_private(name: str) -> bool:
    """Does ``name``, read as a path, land in a private folder -- as written (``..``
    folded) or with symlinks followed? Answers the same for a folder that exists and one
    that does not: nothing here depends on what is inside the store."""
    try:
        written = Path(os.path.abspath(Path(name).expanduser()))
        resolved = written.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an unknown ~user: not a model either
        return True
    private = private_folders()
    return _inside(written, private) or _inside(resolved, private)


def check_model_name(name: str | None) -> str:
    """``name`` cleaned, or :class:`UnknownModelError` saying what is accepted. A local
    folder comes back as its resolved path (symlinks followed, then checked)."""
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME_LENGTH or any(c in name for c in "\0\n\r"):
        raise UnknownModelError("model name is empty, too long or contains control characters")
    if name == TINY_NAME:
        return name
    if is_smollm2(name):
        return SMOLLM2_NAME
    if _SCHEME.match(name) or name.startswith("//"):
        raise UnknownModelError(f"{name!r}: URLs are not accepted; use a hub id like 'gpt2' or 'org/name', or a "
                                f"local folder inside the model folders this server allows")
    if is_hub_id(name) and (BUNDLED_MODELS_DIR / name.replace("/", "__")).is_dir():
        return name
    if _is_private(name):  # before any question about existence: a session's folder is no model, even a missing one
        raise UnknownModelError(OUTSIDE_ROOTS)
    looks_local = name.startswith(("/", "~", ".")) or "\\" in name or Path(name).expanduser().is_dir()
    if looks_local:
        path = Path(name).expanduser().resolve()
        if not _inside(path, model_roots()):
            raise UnknownModelError(OUTSIDE_ROOTS)
        if not path.is_dir():
            raise UnknownModelError(f"{name!r}: no such folder")
        return str(path)
    if is_hub_id(name):  # a bundled name or a local folder of the same spelling was taken above
        return name
    raise UnknownModelError(f"{name!r} is not a model name: use a hub id like 'gpt2' or 'org/name' (letters, digits, "
                            f"'-', '_', '.'), a bundled name, or a local folder inside the model folders this server "
                            f"allows")
