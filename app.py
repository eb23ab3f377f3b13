"""Start the PEFT Workbench in the browser: ``python app.py [--host H] [--port P]``."""

import argparse
import ipaddress
import os
import sys

from workbench.ui.app import build_app, warm_up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="PEFT Workbench web UI")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD",
                        help="a sign-in (repeatable, one per user); required to bind a non-loopback host. Each "
                             "user sees only their own runs")
    parser.add_argument("--sessions-dir", default=None, help="where training runs are kept (default: ./sessions)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    parser.add_argument("--model-root", action="append", default=[], metavar="DIR",
                        help="a folder whose model folders the browser may name (repeatable; default: the working "
                             "directory and the workbench cache)")
    parser.add_argument("--max-upload-mb", type=float, default=1024,
                        help="largest file an upload may be, enforced by the server (default 1024)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting at once; beyond it a request is answered 'queue is full' (default 64)")
    args = parser.parse_args(argv)
    if args.sessions_dir:
        os.environ["WORKBENCH_SESSIONS"] = os.path.abspath(args.sessions_dir)  # read by the store and the workers
    if args.model_root:
        os.environ["WORKBENCH_MODEL_ROOTS"] = os.pathsep.join(os.path.abspath(r) for r in args.model_root)
    loopback = args.host == "localhost" or _is_loopback(args.host)
    if (not loopback or args.share) and not args.auth:
        where = "a public share link" if args.share else args.host
        print(f"error: refusing to serve on {where} without --auth user:password", file=sys.stderr)
        return 2
    if any(":" not in a or not all(a.split(":", 1)) for a in args.auth):
        print("error: --auth must be user:password", file=sys.stderr)
        return 2
    auth = [tuple(a.split(":", 1)) for a in args.auth] or None
    if args.max_upload_mb <= 0 or args.max_queue <= 0:
        print("error: --max-upload-mb and --max-queue must be positive", file=sys.stderr)
        return 2
    warm_up()
    from workbench.paths import DEMO_DIR, cache_dir
    from workbench.sessions import sessions_dir

    # generation and training starts are serialised anyway; a bounded queue keeps the page responsive.
    # Nothing of ours is served as a file but the bundled CC0 demo dataset: the sessions store and the
    # cache are blocked outright.
    build_app().queue(default_concurrency_limit=4, max_size=args.max_queue).launch(
        server_name=args.host, server_port=args.port, auth=auth, share=args.share,
        max_file_size=int(args.max_upload_mb * 2**20), blocked_paths=[str(sessions_dir()), str(cache_dir())],
        allowed_paths=[str(DEMO_DIR)])
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
