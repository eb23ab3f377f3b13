"""``python -m workbench train ...`` and ``python -m workbench sessions ...``."""

from __future__ import annotations

import argparse
import json
import time

from ..errors import WorkbenchError


def add_commands(sub, add_run_flags, parse_run) -> None:
    p = sub.add_parser("train", help="start training in a background worker (sessions/<id>/)")
    add_run_flags(p, "cpu")
    p.add_argument("--data", required=True, help="dataset file (see `data inspect`)")
    p.add_argument("--format", default=None)
    p.add_argument("--map", default=None, help="column mapping, e.g. prompt=q,response=a")
    p.add_argument("--cutoff", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--save-steps", type=int, default=0)
    p.add_argument("--wait", action="store_true", help="follow the run and print its log events")
    p.set_defaults(func=lambda args: cmd_train(args, parse_run))
    s = sub.add_parser("sessions", help="list runs, show one, cancel or delete it")
    s.add_argument("action", choices=["list", "show", "cancel", "delete"])
    s.add_argument("session_id", nargs="?")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sessions)


def cmd_train(args: argparse.Namespace, parse_run) -> int:
    from ..data import parse_mapping
    from .events import FINAL, read_events
    from .job import Schedule
    from .launcher import make_job, start

    spec, method, knobs, settings = parse_run(args)
    job = make_job(spec.name, method.name, args.data, knobs=knobs, settings=settings.as_dict(),
                   schedule=Schedule(epochs=args.epochs, max_steps=args.max_steps, learning_rate=args.learning_rate,
                                     save_steps=args.save_steps),
                   format=args.format, mapping=parse_mapping(args.map), cutoff=args.cutoff,
                   val_fraction=args.val_fraction)
    session_id, proc = start(job)
    print(f"session {session_id} started (pid {proc.pid})")
    if not args.wait:
        return 0
    from ..sessions import session_path

    offset, status = 0, "queued"
    while True:
        events, offset = read_events(session_path(session_id) / "events.jsonl", offset)
        for e in events:
            if e["kind"] == "status":
                status = e["status"]
                print(f"[{status}] " + json.dumps({k: v for k, v in e.items() if k not in ("kind", "time", "status")}))
            elif e["kind"] == "log":
                print(f"step {e['step']}/{e['max_steps']} loss {e['loss']} eval {e['eval_loss']} "
                      f"tok/s {e['tokens_per_second']} eta {e['eta_seconds']}s")
        if status in FINAL and proc.poll() is not None:
            return 0 if status == "completed" else 1
        time.sleep(0.5)


def cmd_sessions(args: argparse.Namespace) -> int:
    from ..sessions import delete_session, info, list_sessions
    from .launcher import cancel

    if args.action == "list":
        rows = [s.as_dict() for s in list_sessions()]
        if args.json:
            print(json.dumps(rows, indent=2))
        for r in rows if not args.json else []:
            print(f"{r['id']}  {r['status']:<11} {r['method']:<8} {r['model']}  step {r['step']}  loss {r['last_loss']}")
        return 0
    if not args.session_id:
        raise WorkbenchError(f"sessions {args.action}: give a session id")
    if args.action == "show":
        print(json.dumps(info(args.session_id).as_dict(), indent=2))
    elif args.action == "cancel":
        print(cancel(args.session_id))
    else:
        delete_session(args.session_id)
    return 0
