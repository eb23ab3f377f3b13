"""Start the PEFT Workbench in the browser: ``python app.py [--host H] [--port P]``.

Arguments are checked here (exit code 2 with a message); the page is built by
``workbench.ui.app.build_app`` and served by ``workbench.ui.serving.serve`` (the Host, Origin
and body-size guard, the private export route, a private gradio temp folder).

What it prints: one line with the URL once the page answers, the default model's one-time
conversion notice on a first start, and real errors. Library output meant for developers
(gradio's "set `share=True` in `launch()`", progress bars, deprecation notices of one library
about another) is left out: it names APIs, not our flags."""

import argparse
import os
import socket
import sys
import warnings

# gradio reports usage to its servers unless told not to: the workbench is offline by default
# and sends nothing anywhere (an operator may still set the variable to True)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from workbench.ui.serving import is_loopback, split_host


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PEFT Workbench web UI")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default: loopback only). On loopback the server answers only to "
                             "the Host names 127.0.0.1, localhost and [::1]; any other address requires --auth and "
                             "answers to that address, the loopback names and each --allowed-host (0.0.0.0 or :: "
                             "to any IP address). Requests naming another host are refused")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a further Host name the server answers to, e.g. the name a reverse proxy forwards "
                             "(repeatable; a name that is not loopback requires --auth). Requests naming any other "
                             "host are refused, which defeats DNS rebinding")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD",
                        help="a sign-in (repeatable, one per user); required to bind a non-loopback host. Each "
                             "user sees only their own runs")
    parser.add_argument("--sessions-dir", default=None, help="where training runs are kept (default: ./sessions)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    parser.add_argument("--model-root", action="append", default=[], metavar="DIR",
                        help="a folder whose model folders the browser may name (repeatable; default: the working "
                             "directory and the workbench cache)")
    parser.add_argument("--max-upload-mb", type=float, default=1024,
                        help="largest file an upload may be, enforced by the server before the body is read "
                             "(default 1024); any other request body is limited to 4 MiB")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting at once; beyond it a request is answered 'queue is full' (default 64)")
    parser.add_argument("--export-max-age-hours", type=float, default=24,
                        help="how long an adapter or merged-model export is kept for download (default 24); "
                             "exports live in the run's folder and are served only to the run's owner")
    return parser


def _check(args) -> tuple[list[tuple[str, str]], str | None]:
    """(the sign-ins, an error message or None)."""
    loopback = is_loopback(args.host)
    if (not loopback or args.share) and not args.auth:
        where = "a public share link" if args.share else args.host
        return [], f"refusing to serve on {where} without --auth user:password"
    if any(":" not in a or not all(a.split(":", 1)) for a in args.auth):
        return [], "--auth must be user:password"
    auth = [tuple(a.split(":", 1)) for a in args.auth]
    for user, password in auth:
        if user != user.strip() or password != password.strip():
            return [], (f"--auth {user.strip()!r}: a user name or password must not begin or end with a space "
                        "(the sign-in form strips the name, so that user could never sign in)")
    users = [user for user, _ in auth]
    if len(set(users)) != len(users):
        twice = sorted({u for u in users if users.count(u) > 1})
        return [], f"--auth user {', '.join(map(repr, twice))} is given more than once; give each user once"
    for name in args.allowed_host:
        parts = split_host(name)
        if parts is None or parts[1] is not None:
            return [], f"--allowed-host {name!r} is not a host name (a name or an address, without a port)"
        if not is_loopback(parts[0]) and not args.auth:
            return [], f"refusing to answer to --allowed-host {name} without --auth user:password"
    if args.max_upload_mb <= 0 or args.max_queue <= 0 or args.export_max_age_hours <= 0:
        return [], "--max-upload-mb, --max-queue and --export-max-age-hours must be positive"
    return auth, None


def _port_taken(host: str, port: int) -> bool:
    """Is something listening on ``host:port`` already? Asked before the slow start, so that
    the answer is one line at once, not a traceback after the model is prepared."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError:
        return False  # an unknown host: the server says so itself
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError:
            return True
    return False


def _quiet_libraries() -> None:
    """Silence, by name, library output that is not for the person starting the app; real
    warnings and errors still print."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights: 100%|###|" per chat model load
    # peft calls a transformers property that transformers deprecates: nothing for our user to do
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    auth, error = _check(args)
    if not error and _port_taken(args.host, args.port):
        error = f"port {args.port} on {args.host} is in use (another workbench?): stop it or pick another with --port"
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _quiet_libraries()
    if args.sessions_dir:
        os.environ["WORKBENCH_SESSIONS"] = os.path.abspath(args.sessions_dir)  # read by the store and the workers
    if args.model_root:
        os.environ["WORKBENCH_MODEL_ROOTS"] = os.pathsep.join(os.path.abspath(r) for r in args.model_root)
    os.environ["WORKBENCH_EXPORT_MAX_AGE_HOURS"] = str(args.export_max_age_hours)
    from workbench.ui.serving import ServeOptions, serve, use_private_gradio_temp

    use_private_gradio_temp()  # before gradio is imported: it reads GRADIO_TEMP_DIR then
    from workbench.paths import DEMO_DIR, cache_dir
    from workbench.sessions import sessions_dir
    from workbench.training.queue import start_dispatcher

    start_dispatcher()  # queued runs start when their device is free, those from before a restart too
    from workbench.ui.app import build_app, warm_up

    warm_up()
    # generation and training starts are serialised anyway; a bounded queue keeps the page responsive.
    # Nothing of ours is served as a file but the bundled CC0 demo dataset: the sessions store (and
    # the exports in it) and the cache are blocked outright.
    serve(build_app().queue(default_concurrency_limit=4, max_size=args.max_queue), ServeOptions(
        host=args.host, port=args.port, auth=tuple(auth), share=args.share,
        max_upload_bytes=int(args.max_upload_mb * 2**20), allowed_hosts=tuple(args.allowed_host),
        blocked_paths=(str(sessions_dir()), str(cache_dir())), allowed_paths=(str(DEMO_DIR),)))
    return 0


_is_loopback = is_loopback  # the name tests/security/test_sec_serving.py checks


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # Ctrl+C while the model is prepared, before the server runs
        print("PEFT Workbench stopped before it was ready.", file=sys.stderr)
        raise SystemExit(130)
