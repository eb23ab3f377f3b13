"""What the web UI accepts as a model name: checked before anything is loaded.

The command line is the operator's and may name any folder; the browser is not trusted.
From the UI a model is ``tiny``, a bundled name, a hub id (``org/name``), or an existing
local folder *inside the configured model roots* -- never a URL, a ``file://`` path or a
folder elsewhere on the machine. Roots: ``$WORKBENCH_MODEL_ROOTS`` (``os.pathsep``
separated; ``python app.py --model-root DIR`` sets it), else the working directory and
the workbench cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UnknownModelError
from .paths import BUNDLED_MODELS_DIR, cache_dir
from .specs import HUB_ID
from .smollm2 import SMOLLM2_NAME, is_smollm2
from .tiny import TINY_NAME

MAX_NAME_LENGTH = 512
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def model_roots() -> list[Path]:
    configured = os.environ.get("WORKBENCH_MODEL_ROOTS")
    roots = [Path(p) for p in configured.split(os.pathsep) if p] if configured else [Path.cwd(), cache_dir()]
    return [r.expanduser().resolve() for r in roots]


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
        raise UnknownModelError(f"{name!r}: URLs are not accepted; use a hub id like 'org/name' or a local folder "
                                f"inside the model roots")
    if HUB_ID.match(name) and ".." not in name and (BUNDLED_MODELS_DIR / name.replace("/", "__")).is_dir():
        return name
    looks_local = name.startswith(("/", "~", ".")) or "\\" in name or Path(name).expanduser().is_dir()
    if looks_local:
        path = Path(name).expanduser().resolve()
        roots = model_roots()
        if not any(path == r or r in path.parents for r in roots):
            raise UnknownModelError(f"{name!r} is outside the model folders this server allows "
                                    f"({', '.join(map(str, roots))}); the operator adds folders with --model-root")
        if not path.is_dir():
            raise UnknownModelError(f"{name!r}: no such folder")
        return str(path)
    if HUB_ID.match(name) and ".." not in name:
        return name
    raise UnknownModelError(f"{name!r} is not a model name: use a hub id like 'org/name', a bundled name, or a local "
                            f"folder inside the model roots")
