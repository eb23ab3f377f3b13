"""How the page is served: a request guard in front of every route, the private export route,
and :func:`serve`, which launches gradio with both.

The guard is an ASGI middleware handed to the FastAPI app that gradio's ``launch`` creates
(``app_kwargs={"middleware": [...]}``), so gradio's sign-in, ``max_file_size``,
``blocked_paths``, queue and printed URL stay as they are. Before any route runs it refuses:

* a ``Host`` header that is not one of the server's names (400): bound to loopback that is
  ``127.0.0.1``, ``localhost`` and ``[::1]`` (any port), which defeats DNS rebinding;
  bound elsewhere, the bind address (any address literal for ``0.0.0.0``/``::``), the
  loopback names and each ``--allowed-host``; with ``--share``, the ``*.gradio.live`` name;
* a state-changing request (anything but GET/HEAD/OPTIONS, and every websocket) whose
  ``Origin`` -- or, without one, ``Referer`` -- is not this same host and port (403):
  a cross-site upload, ``queue/join`` or API call; clients that send neither (gradio_client,
  curl) are not browsers acting for a visitor and pass;
* a body over the limit (413, a short message, nothing of the body echoed): the upload route
  ``--max-upload-mb`` plus room for the multipart framing, everything else
  :data:`MAX_API_BODY_BYTES`; checked on ``Content-Length`` and by counting the bytes
  actually received (chunked bodies).

A request that fails validation is answered without the ``input`` fields FastAPI would echo.
Exports are served by ``GET /export/<session id>/<file>``: the signed-in user is resolved
from gradio's own sign-in cookie exactly as gradio's ``/user`` route does, and the file is
handed out only through :func:`workbench.exports.export_file` (the owner check).

Gradio's temporary folder (uploads, files it caches for outputs) is per server process and
private (:func:`use_private_gradio_temp`): another server on the machine, signed in or not,
does not serve this one's files; it is removed when the server stops.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SHARE_SUFFIX = ".gradio.live"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_API_BODY_BYTES = 4 * 2**20  # JSON calls (queue/join, api, login): the page's largest is a chat prompt
UPLOAD_FRAMING_BYTES = 64 * 2**10  # multipart boundaries and part headers around an upload's file
UPLOAD_PATH = "/gradio_api/upload"
TEMP_PREFIX = "peft-workbench-gradio-"
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(\d{1,5}))?")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str | None) -> tuple[str, int | None] | None:
    """(lower-case host name without brackets, port or None) of a ``Host`` header, or None
    when it is not one (missing, a user part, a path, a bad port)."""
    match = _HOST.fullmatch(value or "")
    if not match:
        return None
    port = int(match.group(2)) if match.group(2) else None
    if port is not None and not 0 < port < 65536:
        return None
    return match.group(1).strip("[]").lower(), port


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` names the server answers to (see the module docstring)."""

    names: frozenset[str]
    any_address: bool = False  # bound to 0.0.0.0/::: every IP literal (not a name, so no rebinding)
    suffixes: tuple[str, ...] = ()

    @classmethod
    def for_bind(cls, bind: str, extra: tuple[str, ...] = (), share: bool = False) -> "HostPolicy":
        bind = bind.strip("[]").lower()
        wildcard = bind in ("0.0.0.0", "::", "")
        names = set(LOOPBACK_NAMES) | {h.strip("[]").lower() for h in extra}
        if not wildcard:
            names.add(bind)
        return cls(frozenset(names), any_address=wildcard, suffixes=(SHARE_SUFFIX,) if share else ())

    def accepts(self, host_header: str | None) -> bool:
        parts = split_host(host_header)
        if parts is None:
            return False
        name = parts[0]
        if name in self.names or any(name.endswith(s) for s in self.suffixes):
            return True
        if self.any_address:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False


def same_origin(origin: str, host_header: str) -> bool:
    """Is the ``Origin`` (or ``Referer``) URL this host and port? Default ports (80, 443) and
    no port read the same, so a TLS proxy that forwards ``Host`` keeps working."""
    try:
        url = urlsplit(origin)
        ours = split_host(host_header)
        theirs = split_host(url.netloc)
    except ValueError:
        return False
    if url.scheme not in ("http", "https") or ours is None or theirs is None:
        return False

    def port(p: int | None) -> int | None:
        return None if p in (80, 443) else p

    return theirs[0] == ours[0] and port(theirs[1]) == port(ours[1])


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a body passes its limit; the guard answers 413."""


class RequestGuard:
    """The ASGI middleware: Host, Origin and body size checks before any route runs."""

    def __init__(self, app, hosts: HostPolicy, max_upload_bytes: int, max_body_bytes: int = MAX_API_BODY_BYTES):
        self.app, self.hosts = app, hosts
        self.max_upload_bytes, self.max_body_bytes = max_upload_bytes, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self.hosts.accepts(host):
            return await _refuse(scope, send, 400, "Bad Request: this server does not answer to that Host name.")
        if scope["type"] == "websocket" or scope["method"] not in SAFE_METHODS:
            source = headers.get("origin") or headers.get("referer")
            if source is not None and not same_origin(source, host):
                return await _refuse(scope, send, 403, "Forbidden: cross-site request (Origin is not this server).")
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        upload = scope.get("path", "").rstrip("/").endswith(UPLOAD_PATH)
        limit = self.max_upload_bytes + UPLOAD_FRAMING_BYTES if upload else self.max_body_bytes
        too_large = f"Payload Too Large: the request body exceeds the maximum allowed size ({limit} bytes)."
        length = headers.get("content-length")
        if length is not None and not re.fullmatch(r"[0-9]{1,20}", length):
            return await _refuse(scope, send, 400, "Bad Request: invalid Content-Length.")
        if length is not None and int(length) > limit:
            return await _refuse(scope, send, 413, too_large)
        state = {"received": 0, "exceeded": False, "started": False}

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["exceeded"] = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message):
            if state["exceeded"]:  # the route caught our exception and answers something else: answer 413
                if not state["started"]:
                    state["started"] = True
                    await _plain(send, 413, too_large)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        if state["exceeded"] and not state["started"]:
            state["started"] = True
            await _plain(send, 413, too_large)


async def _refuse(scope, send, status: int, text: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})  # before accept: the handshake gets a 403
    else:
        await _plain(send, status, text)


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def validation_error_without_input(request, exc):
    """FastAPI's 422 answer, without the ``input`` it would echo (a megabyte body comes back)."""
    from starlette.responses import JSONResponse

    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:200], "type": e.get("type")}
              for e in exc.errors()[:20]]
    return JSONResponse({"detail": detail}, status_code=422)


async def signed_in_user(request) -> tuple[bool, str | None]:
    """(sign-in required, the signed-in user) of a request to gradio's app: the same lookup as
    gradio's ``/gradio_api/user`` route (routes.py ``get_current_user``): the auth dependency
    if one is set, else the ``access-token-<cookie id>`` cookie (or its ``-unsecure-`` twin
    for plain http) in the app's tokens."""
    import inspect

    app = request.app
    dependency = getattr(app, "auth_dependency", None)
    required = getattr(app, "auth", None) is not None or dependency is not None
    if dependency is not None:
        user = dependency(request)
        user = await user if inspect.isawaitable(user) else user
        return required, user
    token = request.cookies.get(f"access-token-{app.cookie_id}") or \
        request.cookies.get(f"access-token-unsecure-{app.cookie_id}")
    return required, app.tokens.get(token) if token else None


async def export_endpoint(request):
    """``GET /export/<session id>/<file>``: the run's export, to its owner only."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, PlainTextResponse

    from ..errors import WorkbenchError
    from ..exports import export_file

    required, user = await signed_in_user(request)
    if required and user is None:
        return PlainTextResponse("Not signed in.", status_code=401)
    session_id, name = request.path_params["session_id"], request.path_params["name"]
    try:
        path = await run_in_threadpool(export_file, session_id, name, user)
    except WorkbenchError:
        return PlainTextResponse("No such export (it may have expired: export it again).", status_code=404)
    return FileResponse(path, media_type="application/zip", filename=name, content_disposition_type="attachment",
                        headers={"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"})


EXPORT_ROUTE = "/export/{session_id}/{name}"


def export_url(session_id: str, name: str) -> str:
    """The page-relative link of an export (the page is served at the app's root)."""
    return f"export/{session_id}/{name}"


def use_private_gradio_temp() -> Path | None:
    """Give gradio a temporary folder of this process alone (mode 0700, removed at exit), unless
    the operator chose one with ``GRADIO_TEMP_DIR``. Must run before gradio is imported (it reads
    the variable at import and when building the page). Also removes the folders of earlier
    servers of this user that are gone. Returns the folder made, or None."""
    from ..reservations import pid_alive

    if os.environ.get("GRADIO_TEMP_DIR"):
        return None
    root = Path(tempfile.gettempdir())
    for stale in root.glob(f"{TEMP_PREFIX}*"):
        try:
            pid = int(stale.name[len(TEMP_PREFIX):].split("-", 1)[0])
            info = stale.lstat()
        except (ValueError, OSError):
            continue
        if stale.is_symlink() or info.st_uid != os.getuid() or pid_alive(pid):
            continue
        shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(folder / "examples"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


@dataclass(frozen=True)
class ServeOptions:
    """What ``python app.py`` was asked for, checked (see app.py for the options' help)."""

    host: str = "127.0.0.1"
    port: int | None = None
    auth: tuple[tuple[str, str], ...] = ()
    share: bool = False
    max_upload_bytes: int = 2**30
    allowed_hosts: tuple[str, ...] = ()
    blocked_paths: tuple[str, ...] = ()
    allowed_paths: tuple[str, ...] = ()


def _cleanup_periodically(interval: float, stop: threading.Event) -> None:
    from ..exports import cleanup_exports

    while not stop.wait(interval):
        try:
            cleanup_exports()
        except Exception:  # noqa: BLE001 -- a cleanup round that fails is retried at the next one
            pass


def serve(blocks, options: ServeOptions) -> None:
    """Launch ``blocks`` (queued already) with the guard and the export route; blocks until
    the server stops (Ctrl-C or SIGTERM)."""
    import signal

    from fastapi.exceptions import RequestValidationError
    from starlette.middleware import Middleware
    from starlette.routing import Route

    from ..exports import cleanup_exports, max_age_seconds

    max_age = max_age_seconds()
    cleanup_exports(max_age)
    stop = threading.Event()
    threading.Thread(target=_cleanup_periodically, args=(min(max(max_age / 4, 60.0), 3600.0), stop),
                     name="export-cleanup", daemon=True).start()
    if getattr(blocks, "delete_cache", None) is None:  # the uploads gradio keeps: hourly, after the same age
        blocks.delete_cache = (3600, int(max_age))

    def terminate(_signum, _frame):  # SIGTERM closes the server like Ctrl-C, so the temp folder is removed
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)
    guard = Middleware(RequestGuard, hosts=HostPolicy.for_bind(options.host, options.allowed_hosts, options.share),
                       max_upload_bytes=options.max_upload_bytes)
    try:  # Ctrl+C or SIGTERM while launching or serving: one line, no traceback
        # quiet: gradio's own lines ("set `share=True` in `launch()`") name its API, not our
        # flags; the one line a person needs is printed below, once the server answers
        _app, local_url, share_url = blocks.launch(
            quiet=True, prevent_thread_lock=True,
            server_name=options.host, server_port=options.port, auth=list(options.auth) or None, share=options.share,
            max_file_size=options.max_upload_bytes, blocked_paths=list(options.blocked_paths),
            allowed_paths=list(options.allowed_paths),
            # Node in front (SSR), static-file worker processes and the MCP server would each
            # answer on their own, past the guard: off, whatever the environment says
            ssr_mode=False, num_workers=0, mcp_server=False,
            app_kwargs={"middleware": [guard],  # innermost of gradio's: it runs before every route
                        "routes": [Route(EXPORT_ROUTE, export_endpoint, methods=["GET", "HEAD"])],
                        "exception_handlers": {RequestValidationError: validation_error_without_input}})
        print(f"PEFT Workbench is running at {local_url} (Ctrl+C to stop)"
              + (f"; public link {share_url} (sign-in required)" if share_url else ""), flush=True)
        while blocks.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("PEFT Workbench stopped.", flush=True)
    finally:
        blocks.close(verbose=False)
        stop.set()
