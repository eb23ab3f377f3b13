"""``python -m workbench train ...`` and ``python -m workbench sessions ...``.

``train`` queues the run like the page does (:func:`workbench.training.launcher.start`) and,
unless ``--detach``, follows it; while it follows it dispatches the queue itself, so a run
queued behind another starts when that one ends even with no server running.

Output for people (``--json`` prints the records as they are): losses with 4 decimals,
memory in GiB (binary), times in ISO 8601 UTC, and a value that was not measured left out
rather than printed as ``None``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from ..errors import WorkbenchError


def add_commands(sub, add_run_flags, run_from_args) -> None:
    p = sub.add_parser("train", help="train in a background worker (sessions/<id>/); follows it unless --detach")
    add_run_flags(p)
    p.add_argument("--data", required=True, help="dataset file (see `data inspect`)")
    p.add_argument("--format", default=None)
    p.add_argument("--map", default=None, help="column mapping, e.g. prompt=q,response=a")
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--save-steps", type=int, default=0)
    p.add_argument("--keep-checkpoints", type=int, default=3)
    p.add_argument("--sessions-dir", default=None, help="where runs are kept (default: ./sessions)")
    p.add_argument("--detach", action="store_true",
                   help="queue the run and return at once (it starts when its device is free and a server, a worker "
                        "that ends or a `sessions follow` dispatches the queue)")
    p.add_argument("--no-probe", action="store_true",
                   help="do not lead with the longest examples (the probe step that checks the plan first)")
    p.set_defaults(func=lambda args: cmd_train(args, run_from_args))
    s = sub.add_parser("sessions", help="list runs, show, cancel, resume, delete or export one")
    s.add_argument("action", choices=["list", "show", "follow", "cancel", "resume", "delete", "export"])
    s.add_argument("session_id", nargs="?")
    s.add_argument("--sessions-dir", default=None)
    s.add_argument("--zip", default=None, help="export: write the adapter folder as this zip file")
    s.add_argument("--merged", default=None, help="export: write a merged standalone model to this folder")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sessions)


def _use_sessions_dir(path: str | None) -> None:
    if path:
        os.environ["WORKBENCH_SESSIONS"] = str(Path(path).resolve())  # inherited by the worker


def cmd_train(args: argparse.Namespace, run_from_args) -> int:
    from ..data import parse_mapping
    from .launcher import start

    _use_sessions_dir(args.sessions_dir)
    run = run_from_args(args, data={"path": args.data, "format": args.format, "mapping": parse_mapping(args.map),
                                    "val_fraction": args.val_fraction},
                        schedule={"epochs": args.epochs, "max_steps": args.max_steps, "learning_rate": args.learning_rate,
                                  "save_steps": args.save_steps, "keep_checkpoints": args.keep_checkpoints,
                                  "probe": not args.no_probe})
    session_id, proc = start(run)
    if not args.json:
        print(f"session {session_id} " + (f"started (pid {proc.pid})" if proc else _queue_line(session_id)))
    state = "queued" if args.detach else follow(session_id, proc, quiet=args.json)
    if args.json:
        print(json.dumps({"id": session_id, "state": state}))
    return 0 if state in ("queued", "completed") else 1


def _queue_line(session_id: str) -> str:
    from ..sessions import session_path, waiting
    from .queue import describe

    return describe(session_id) or ("queued" if waiting(session_path(session_id)) else "started")


def follow(session_id: str, proc=None, quiet: bool = False) -> str:
    """Print the run's progress until it ends; returns the final state. Without ``proc``
    (reattaching to a run started elsewhere) liveness comes from the session's pid. While
    the run waits for its turn, this dispatches the queue (it may be the only dispatcher)."""
    from ..sessions import refresh, session_path, waiting
    from .events import FINAL, read_events
    from .queue import dispatch

    folder = session_path(session_id)
    offset, state = 0, "queued"
    while True:
        if proc is None and waiting(folder):
            proc = dispatch(block=False).get(session_id)
        events, offset = read_events(folder / "events.jsonl", offset)
        for e in events:
            if e["kind"] == "status":
                state = e["status"]
                if not quiet:
                    print(status_line(e))
            elif e["kind"] == "log" and not quiet:
                print(step_line(e))
        if (proc is None or proc.poll() is not None) and not events:
            state = refresh(session_id)
            if state in FINAL:
                return state
        time.sleep(0.5)


GIB = 2**30


def loss_text(value: float | None) -> str:
    """A loss for people: 4 decimals (``8.3902``); ``nan`` says what it means."""
    if value is None:
        return "not measured"
    if math.isnan(value):
        return "nan (no token carried loss, or training diverged)"
    return f"{value:.4f}"


def gib_text(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.3f} GiB"


def percent_text(value: float) -> str:
    return f"{round(value, 1) + 0.0:+.1f}%"  # + 0.0: never "-0.0%"


def iso_time(seconds: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC: ``2026-12-01T19:53:08Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def step_line(e: dict) -> str:
    """One training log event: step, loss, eval loss, throughput, ETA -- each only when measured."""
    parts = [f"step {e['step']}/{e['max_steps']}"]
    if e.get("loss") is not None:
        parts.append(f"loss {loss_text(e['loss'])}")
    if e.get("eval_loss") is not None:
        parts.append(f"eval loss {loss_text(e['eval_loss'])}")
    if e.get("tokens_per_second") is not None:
        parts.append(f"{e['tokens_per_second']:,.0f} tokens/s")
    if e.get("eta_seconds") is not None:
        parts.append(f"ETA {e['eta_seconds']:.1f} s")
    return "  ".join(parts)


def _field(key: str, value) -> str:
    if key.endswith("_bytes"):
        return f"{key[:-6].replace('_', ' ')} {gib_text(value)}"
    if key.endswith("_percent"):
        return f"{key[:-8].replace('_', ' ')} {percent_text(value)}"
    if key.endswith("quantity"):
        return f"measured as {value}"
    if isinstance(value, bool):
        value = "yes" if value else "no"
    elif isinstance(value, (list, tuple)):
        value = "; ".join(map(str, value))
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"{key.replace('_', ' ')} {value}"


def status_line(e: dict) -> str:
    """``[state] detail, detail``: a status event with memory in GiB and nothing unmeasured."""
    detail = [_field(k, v) for k, v in e.items()
              if k not in ("kind", "time", "status", "log_tail") and v is not None and v != [] and v != ""]
    return f"[{e['status']}] " + ", ".join(detail) if detail else f"[{e['status']}]"


def session_lines(data: dict) -> list[str]:
    """``sessions show`` for people: ISO times, GiB with the exact bytes, 4-decimal loss;
    a field with no value yet is left out."""
    lines = []
    for key, value in data.items():
        if value is None:
            continue
        if key in ("created", "finished"):
            value = iso_time(value)
        elif key.endswith("_bytes"):
            value = f"{gib_text(value)} ({value:,} B)"
        elif key.endswith("_percent"):
            value = percent_text(value)
        elif key == "last_loss":
            value = loss_text(value)
        elif isinstance(value, list):
            value = ", ".join(value) if value else "none"
        lines.append(f"{key}: {value}")
    return lines


def cmd_sessions(args: argparse.Namespace) -> int:
    from ..sessions import delete_session, info, list_sessions, session_path
    from .artifacts import export_merged, export_zip
    from .checkpoints import final_adapter
    from .launcher import cancel, resume

    _use_sessions_dir(args.sessions_dir)
    if args.action == "list":
        rows = [s.as_dict() for s in list_sessions()]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for r in rows:
            step = "" if r["step"] is None else f"step {r['step']}" + (f"/{r['max_steps']}" if r["max_steps"] else "")
            loss = "" if r["last_loss"] is None else f"loss {loss_text(r['last_loss'])}"
            print(f"{r['id']}  {r['state']:<11} {r['method']:<9} {r['model']:<28} {r['dataset']:<20} "
                  f"{iso_time(r['created'])}  {step:<12} {loss}".rstrip())
        return 0
    if not args.session_id:
        raise WorkbenchError(f"sessions {args.action}: give a session id")
    sid = args.session_id
    if args.action == "show":
        data = info(sid).as_dict()
        print(json.dumps(data, indent=2) if args.json else "\n".join(session_lines(data)))
    elif args.action == "follow":
        state = follow(sid, quiet=args.json)
        print(json.dumps({"id": sid, "state": state}) if args.json else state)
    elif args.action == "cancel":
        state = cancel(sid)
        print(json.dumps({"id": sid, "state": state}) if args.json else state)
    elif args.action == "resume":
        proc = resume(sid)
        if not args.json and proc is None:
            print(f"session {sid} {_queue_line(sid)}")
        state = follow(sid, proc, quiet=args.json)
        print(json.dumps({"id": sid, "state": state}) if args.json else state)
    elif args.action == "delete":
        delete_session(sid)
        print(json.dumps({"id": sid, "deleted": True}) if args.json else f"deleted {sid}")
    else:
        final = final_adapter(session_path(sid))
        if final is None:
            raise WorkbenchError(f"session {sid} has no complete final result to export")
        if not (args.zip or args.merged):
            raise WorkbenchError("sessions export: give --zip FILE and/or --merged DIR")
        out = {}
        if args.zip:
            out["zip"] = str(export_zip(final, Path(args.zip)))
        if args.merged:
            out["merged"] = str(export_merged(final, Path(args.merged)))
        print(json.dumps(out))
    return 0
