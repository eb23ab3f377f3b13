"""Hub lookups that cannot hold a request for long: the Hugging Face hub's reachability is
detected once, answers are remembered, and every wait has a bound.

Without this, an unknown hub id on a machine without internet took ~23 s (huggingface_hub
retries a failed connection five times, 1+2+4+8+8 s), and a burst of them kept the page's
queue full for minutes. Now:

- :func:`hub_online`: ``False`` at once when the operator set ``HF_HUB_OFFLINE``; else one TCP
  probe of the hub (or of the configured proxy) of at most :data:`PROBE_SECONDS`, its answer
  kept for :data:`STATE_SECONDS`. While the hub is out of reach huggingface_hub is switched to
  offline mode *for this process*, so that every hub call (configs here, tokenizers, chat)
  answers from the local hub cache at once; a probe that reaches the hub again undoes it.
- :func:`hub_config`: a model's config from the answers of the last minutes, else the local
  hub cache (an already downloaded model still resolves offline), else one download of its
  ``config.json``, waited on for at most :data:`FETCH_SECONDS`, at most :data:`DOWNLOADS` at
  once. A failure is remembered for :data:`MISS_SECONDS`: the same bogus id answers at once.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from .errors import UnknownModelError

PROBE_SECONDS = 1.5  # TCP connect to the hub or proxy, name lookup included
FETCH_SECONDS = 3.0  # the whole download of one config.json (a real hub answers in well under 1 s)
STATE_SECONDS = 60.0  # how long a probe's answer is kept
MISS_SECONDS = 120.0  # how long a failed lookup is kept
HIT_SECONDS = 300.0  # how long a fetched config is kept
DOWNLOADS = 2  # hub downloads at once; beyond them a lookup is answered "busy"
MAX_ANSWERS = 1024

_PROBE_LOCK = threading.Lock()  # one probe at a time: callers during a probe wait for its answer
_LOCK = threading.Lock()  # the remembered answers (never held across a probe or a download)
_STATE: dict[str, Any] = {"until": 0.0, "online": None, "ours": False}  # ours: we switched offline mode on
_ANSWERS: dict[str, tuple[float, Any]] = {}  # name -> (valid until, config dict or error message)
_DOWNLOAD_SLOTS = threading.BoundedSemaphore(DOWNLOADS)
USE_INSTEAD = ("Use a bundled name (listed in the model menu), or a local folder: copy the model's folder "
               "(config.json; to train, its tokenizer and *.safetensors weights too) inside the model folders this "
               "server allows (the operator adds folders with --model-root) and type that folder's path as the model")


def is_hub_id(name: str) -> bool:
    """Is ``name`` a valid Hugging Face hub repo id -- ``name`` (``gpt2``) or ``org/name`` --
    by huggingface_hub's own rule (:func:`huggingface_hub.utils.validate_repo_id`: letters,
    digits, ``-``, ``_``, ``.``, at most 96 characters each side, no ``--`` or ``..``, not
    starting or ending with ``-`` or ``.``, no ``.git`` at the end), in ASCII as the hub
    allows? Says nothing of whether the repo exists."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or not name or not name.isascii():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _hub_address() -> tuple[str, int] | None:
    """(host, port) a hub request connects to first: the proxy for the endpoint's scheme
    when one is configured, else the endpoint itself (``$HF_ENDPOINT``)."""
    import urllib.request
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(endpoint.scheme) or proxies.get("all")
    target = (urlsplit(proxy if "://" in proxy else f"http://{proxy}") if proxy else endpoint)
    try:
        port = target.port or (443 if target.scheme == "https" else 80)
    except ValueError:
        return None
    return (target.hostname, port) if target.hostname else None


def _probe(address: tuple[str, int] | None) -> bool:
    """Does a TCP connection to ``address`` open within :data:`PROBE_SECONDS`? (In a
    thread: the name lookup has no timeout of its own.)"""
    if address is None:
        return False
    answer: list[bool] = []

    def connect():
        try:
            socket.create_connection(address, timeout=PROBE_SECONDS).close()
            answer.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, name="hub-probe", daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS)
    return bool(answer)


def hub_online() -> bool:
    """Can this process reach the hub now? (See the module docstring.)"""
    from huggingface_hub import constants

    with _PROBE_LOCK:
        if constants.HF_HUB_OFFLINE and not _STATE["ours"]:
            return False  # the operator's choice: never probed, never undone
        if _STATE["online"] is not None and time.monotonic() < _STATE["until"]:
            return _STATE["online"]
        online = _probe(_hub_address())
        if _STATE["ours"] or not online:
            constants.HF_HUB_OFFLINE = not online  # read at each call by huggingface_hub and transformers
        _STATE.update(until=time.monotonic() + STATE_SECONDS, online=online, ours=not online)
        return online


def _went_offline() -> None:
    """A download failed to connect or timed out: treat the hub as out of reach, as a
    failed probe would, for :data:`STATE_SECONDS`."""
    from huggingface_hub import constants

    with _PROBE_LOCK:
        if constants.HF_HUB_OFFLINE and not _STATE["ours"]:
            return
        constants.HF_HUB_OFFLINE = True
        _STATE.update(until=time.monotonic() + STATE_SECONDS, online=False, ours=True)


def _remember(name: str, answer: Any, seconds: float) -> None:
    with _LOCK:
        _ANSWERS.pop(name, None)
        while len(_ANSWERS) >= MAX_ANSWERS:
            _ANSWERS.pop(next(iter(_ANSWERS)))
        _ANSWERS[name] = (time.monotonic() + seconds, answer)


def hub_config(name: str) -> dict[str, Any]:
    """The config dict of hub model ``name`` (never remote code), or
    :class:`UnknownModelError` saying why and what to use instead."""
    with _LOCK:
        until, answer = _ANSWERS.get(name, (0.0, None))
    if time.monotonic() < until:
        if isinstance(answer, str):
            raise UnknownModelError(answer)
        return dict(answer)
    try:
        folder = _config_folder(name, hub_online())
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(folder, trust_remote_code=False).to_dict()
        config["_name_or_path"] = name  # not the cache folder it was read from
    except _Busy as exc:
        raise UnknownModelError(str(exc)) from None
    except UnknownModelError as exc:
        _remember(name, str(exc), MISS_SECONDS)
        raise
    except Exception as exc:  # not found, gated, no config.json, unknown architecture: all user-facing
        message = (f"{name!r}: no usable config on the hub ({type(exc).__name__}): the id may be misspelt, private "
                   f"or gated, or transformers does not know its architecture. {USE_INSTEAD}")
        _remember(name, message, MISS_SECONDS)
        raise UnknownModelError(message) from None
    _remember(name, config, HIT_SECONDS)
    return dict(config)


class _Busy(Exception):
    """All download slots are taken: not remembered, the next try may succeed."""


def _config_folder(name: str, online: bool) -> str:
    """The folder holding ``name``'s ``config.json``: from the local hub cache when the hub
    is out of reach, else downloaded in a thread waited on for :data:`FETCH_SECONDS`."""
    from huggingface_hub import hf_hub_download

    if not online:
        try:
            return str(Path(hf_hub_download(name, "config.json", local_files_only=True)).parent)
        except Exception:
            raise UnknownModelError(f"the Hugging Face hub cannot be reached from this server, and {name!r} is not in "
                                    f"its local hub cache. {USE_INSTEAD}") from None
    if not _DOWNLOAD_SLOTS.acquire(timeout=1.0):
        raise _Busy(f"{name!r}: the server is busy fetching other models from the hub; try again in a moment, or "
                    "use a bundled name")
    result: dict[str, Any] = {}

    def download():
        try:
            result["path"] = hf_hub_download(name, "config.json", etag_timeout=FETCH_SECONDS - 1)
        except Exception as exc:  # handed to the caller below
            result["error"] = exc
        finally:
            _DOWNLOAD_SLOTS.release()

    thread = threading.Thread(target=download, name="hub-config", daemon=True)
    thread.start()
    thread.join(FETCH_SECONDS)
    if "path" in result:
        return str(Path(result["path"]).parent)
    from huggingface_hub.errors import LocalEntryNotFoundError  # online, not found locally: a connection problem

    if thread.is_alive() or isinstance(result.get("error"), (ConnectionError, TimeoutError, LocalEntryNotFoundError)):
        _went_offline()  # the probe passed but the hub does not answer: the next lookups use the local cache
        raise UnknownModelError(f"the Hugging Face hub cannot be reached from this server (no answer for {name!r} "
                                f"within {FETCH_SECONDS:g} s); try again later. {USE_INSTEAD}")
    raise result["error"]
