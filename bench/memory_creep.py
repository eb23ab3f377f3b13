"""Worker memory creep: does the training worker's resident set grow with the step count?

Reported: tiny LoRA on a ~2,400-row alpaca file of very different example lengths grew from
0.4 GiB RSS to 7.1 GiB over ~1,000 steps (planned peak 0.66 GiB). This trains tiny LoRA
through the real worker (the launcher's ``make_job``/``prepare``/``spawn``) on a generated
2,000-row alpaca file (lengths 20 to ~900 tokens, truncated at ``--seq-len``), batch 4, for
``--steps`` optimizer steps, and reads the worker's own samples from ``events.jsonl``:
``memory`` events (``rss``, ``time``) against ``log`` events (``step``, ``time``). RSS at a
step = the last sample taken at or before that step's log line.

Variants (each a fresh worker; ``--variants a,b``), to tell the candidate causes apart:

- ``as_shipped``: the worker as the launcher starts it (it trims the heap every 10 steps);
- ``glibc_default``: every allocator variable unset and the launcher's defaults off (the report);
- ``arena_max_2`` / ``mmap_threshold`` / ``trim_threshold``: one glibc knob each;
- ``malloc_trim``: ``malloc_trim(0)`` every ``--trim-every`` seconds from a thread;
- ``bucket64``: pad widths rounded up to a multiple of 64 (at most the sequence length);
- ``fixed_width``: every batch padded to the sequence length (one shape for the whole run);
- ``python_heap``: as glibc_default, and the worker also logs Python's object count and
  traced Python allocations (tracemalloc) every 50 steps, for a Python-level leak.

The measurement-only variants (trim thread, pad patch, heap log) are injected into the
worker by a ``sitecustomize.py`` on ``PYTHONPATH`` written here; the worker code is unchanged.
Target: RSS(step 600) <= 1.5 x RSS(step 20). Writes bench/results/memory_creep.{json,md}.

    python bench/memory_creep.py [--steps 600] [--variants as_shipped,glibc_default] [--rows 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

from _meta import HERE, RESULTS  # noqa: E402  (the repo on sys.path, offline: bench/_meta.py)

TARGET = 1.5
GIB = 1024 ** 3
ALLOCATOR_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
WORDS = ("memory adapter rank gradient token batch layer weight model train learn small large quick slow "
         "planner sequence optimizer checkpoint activation step loss value").split()

#: name -> (environment for the worker, what it tests)
VARIANTS: dict[str, tuple[dict[str, str | None], str]] = {
    "as_shipped": ({}, "the worker as the launcher starts it (malloc_trim every 10 steps, workbench/training/allocator.py)"),
    "glibc_default": ({k: None for k in ALLOCATOR_VARIABLES}, "glibc's defaults: no allocator variable (the report)"),
    "arena_max_2": ({"MALLOC_ARENA_MAX": "2"}, "glibc: at most 2 malloc arenas"),
    "mmap_threshold": ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "glibc: blocks >= 64 KiB always mmap'd"),
    "trim_threshold": ({"MALLOC_TRIM_THRESHOLD_": "131072"}, "glibc: fixed 128 KiB trim threshold"),
    "malloc_trim": ({"MEMCREEP_TRIM_EVERY": "2"}, "malloc_trim(0) every 2 s from a thread"),
    "bucket64": ({"MEMCREEP_PAD_MULTIPLE": "64"}, "pad widths rounded up to a multiple of 64"),
    "fixed_width": ({"MEMCREEP_PAD_MULTIPLE": "100000"}, "every batch padded to the sequence length"),
    "python_heap": ({"MEMCREEP_HEAP_EVERY": "50"}, "Python object count / tracemalloc every 50 steps"),
}

#: Measurement-only instrumentation of the worker process (imported at interpreter start).
PROBE = r'''
import os, threading
_every = float(os.environ.get("MEMCREEP_TRIM_EVERY", "0") or 0)
if _every > 0:
    import ctypes, time
    _libc = ctypes.CDLL("libc.so.6")
    def _trim_loop():
        while True:
            time.sleep(_every)
            _libc.malloc_trim(0)
    threading.Thread(target=_trim_loop, daemon=True).start()
_multiple = int(os.environ.get("MEMCREEP_PAD_MULTIPLE", "0") or 0)
_heap = int(os.environ.get("MEMCREEP_HEAP_EVERY", "0") or 0)
if _multiple or _heap:
    import workbench.training.collate as _collate
    _original = _collate.PadCollator.__call__
    _limit = int(os.environ["MEMCREEP_LIMIT"])
    _calls = [0]
    if _heap:
        import tracemalloc
        tracemalloc.start()
    def _call(self, features):
        batch = _original(self, features)
        if _multiple:  # widen the batch with pad positions (mask 0, label -100), as bucketed padding would
            import torch.nn.functional as F
            longest = batch["input_ids"].shape[1]
            extra = min(_limit, -(-longest // _multiple) * _multiple) - longest
            if extra > 0:
                batch = {"input_ids": F.pad(batch["input_ids"], (0, extra), value=self.pad_id),
                         "labels": F.pad(batch["labels"], (0, extra), value=-100),
                         "attention_mask": F.pad(batch["attention_mask"], (0, extra), value=0)}
        _calls[0] += 1
        if _heap and _calls[0] % _heap == 0:
            import gc, json, time
            current, peak = tracemalloc.get_traced_memory()
            with open(os.environ["MEMCREEP_HEAP_LOG"], "a") as fh:
                fh.write(json.dumps({"batch": _calls[0], "time": time.time(), "objects": len(gc.get_objects()),
                                     "traced": current}) + "\n")
        return batch
    _collate.PadCollator.__call__ = _call
'''


def write_data(path: Path, rows: int, seed: int = 0, max_words: int = 400) -> None:
    """Alpaca rows (instruction, input, output) whose lengths spread from ~40 tokens to about
    2 x ``max_words`` tokens (the tiny tokenizer makes ~1.9 tokens of a word): the word counts
    are log-uniform, so short and long examples meet in the same batches."""
    import math

    rng = random.Random(seed)
    lines = []
    for i in range(rows):
        words = int(round(10 ** rng.uniform(0.9, math.log10(max_words))))
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        context = " ".join(rng.choice(WORDS) for _ in range(words // 3)) if rng.random() < 0.5 else ""
        a = " ".join(rng.choice(WORDS) for _ in range(max(1, words - len(context.split()))))
        lines.append(json.dumps({"instruction": f"Question {i}: {q}?", "input": context, "output": f"{a}."}))
    path.write_text("\n".join(lines) + "\n")


def rss_at(events: list[dict], step: int) -> int | None:
    """The last RSS sample taken at or before the log line of ``step``."""
    log = next((e for e in events if e["kind"] == "log" and e.get("step") == step), None)
    if log is None:
        return None
    samples = [e for e in events if e["kind"] == "memory" and e.get("rss") and e["time"] <= log["time"]]
    return samples[-1]["rss"] if samples else None


def _allocator_defaults() -> dict:
    """The launcher's allocator defaults for the worker (a mutable table; empty before they existed)."""
    try:
        from workbench.training.allocator import WORKER_ALLOCATOR_DEFAULTS
    except ImportError:
        return {}
    return WORKER_ALLOCATOR_DEFAULTS


def run_variant(name: str, data: Path, tmp: Path, args) -> dict:
    from workbench.sessions import session_path
    from workbench.training.events import read_events
    from workbench.training.job import DataSpec, Schedule
    from workbench.training.launcher import make_job, prepare, spawn

    changes, _ = VARIANTS[name]
    saved = dict(os.environ)
    heap_log = tmp / f"heap-{name}.jsonl"
    try:
        for key, value in changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if any(k.startswith("MEMCREEP_") for k in changes):
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp / "probe"), saved.get("PYTHONPATH")]))
            os.environ["MEMCREEP_LIMIT"], os.environ["MEMCREEP_HEAP_LOG"] = str(args.seq_len), str(heap_log)
        truncation = {"cutoff": args.seq_len} if "cutoff" in {f.name for f in fields(DataSpec)} else {}
        job = make_job("tiny", "lora", str(data), **truncation,
                       settings={"device": "cpu", "dtype": "float32", "batch_size": args.batch_size,
                                 "seq_len": args.seq_len},
                       schedule=Schedule(max_steps=args.steps, learning_rate=args.lr))
        sid = prepare(job)
        start = time.perf_counter()
        defaults = _allocator_defaults()
        kept = dict(defaults)
        if name == "glibc_default":  # the launcher's allocator defaults off for this run only
            defaults.clear()
        try:
            rc = spawn(sid).wait()
        finally:
            defaults.update(kept)
        wall = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)
    folder = session_path(sid)
    events = read_events(folder / "events.jsonl")[0]
    status = [e for e in events if e["kind"] == "status"][-1]
    if rc != 0 or status["status"] != "completed":
        raise RuntimeError(f"{name} ended {status}:\n{(folder / 'worker.log').read_text(errors='replace')[-3000:]}")
    plan = next((e for e in events if e["kind"] == "plan"), {})
    checkpoints = sorted({1, 5, 10, 20, 40, 60, 200, 400, args.steps} | set(range(50, args.steps + 1, 50)))
    by_step = {s: rss_at(events, s) for s in checkpoints if s <= args.steps}
    first, last = by_step.get(20), by_step.get(args.steps)
    rss = [e["rss"] for e in events if e["kind"] == "memory" and e.get("rss")]
    running = next(e["time"] for e in events if e.get("status") == "running")
    before = [e["rss"] for e in events if e["kind"] == "memory" and e.get("rss") and e["time"] <= running]
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "events.jsonl", Path(args.keep) / f"{name}.events.jsonl")
    heap = [json.loads(x) for x in heap_log.read_text().splitlines()] if heap_log.exists() else []
    return {"variant": name, "what": VARIANTS[name][1], "environment": {k: v for k, v in changes.items()},
            "rss_by_step": by_step, "rss_20": first, "rss_last": last,
            "ratio": (last / first) if first and last else None, "rss_max": max(rss), "rss_start": rss[0],
            "rss_train_begin": before[-1] if before else None,
            "planned_peak_bytes": plan.get("peak_bytes"), "wall_s": round(wall, 1), "heap": heap}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-words", type=int, default=400, help="longest answer, in words (~1.9 tokens each)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--variants", default="as_shipped,glibc_default", help=f"comma list of: {', '.join(VARIANTS)}")
    parser.add_argument("--keep", help="copy each run's events.jsonl into this folder")
    parser.add_argument("--no-write", action="store_true", help="print only; keep the committed results")
    args = parser.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ["WORKBENCH_SESSIONS"] = str(tmp / "sessions")
        (tmp / "probe").mkdir()
        (tmp / "probe" / "sitecustomize.py").write_text(PROBE)
        from workbench.data import load_tokenizer
        from workbench.data.report import training_data
        from workbench.tiny import ensure_tiny

        ensure_tiny()
        data = tmp / "alpaca_variable.jsonl"
        write_data(data, args.rows, max_words=args.max_words)
        report, _, _ = training_data(data, load_tokenizer("tiny"))
        lengths = {k: v for k, v in report.token_lengths.items() if k != "histogram"}
        print(f"data: {report.rows} rows, token lengths {lengths}", file=sys.stderr, flush=True)
        for name in names:
            row = run_variant(name, data, tmp, args)
            rows.append(row)
            print(f"{name:<15} RSS step 20 {row['rss_20'] / GIB:.2f} GiB, step {args.steps} "
                  f"{row['rss_last'] / GIB:.2f} GiB, ratio {row['ratio']:.2f}, max {row['rss_max'] / GIB:.2f} GiB, "
                  f"{row['wall_s']:.0f} s", file=sys.stderr, flush=True)
    print(f"\n{'variant':<15} {'RSS@20 GiB':>10} {'RSS@' + str(args.steps) + ' GiB':>11} {'ratio':>6} "
          f"{'max GiB':>8} {'planned GiB':>11}")
    for r in rows:
        print(f"{r['variant']:<15} {r['rss_20'] / GIB:>10.3f} {r['rss_last'] / GIB:>11.3f} {r['ratio']:>6.2f} "
              f"{r['rss_max'] / GIB:>8.3f} {(r['planned_peak_bytes'] or 0) / GIB:>11.3f}")
    if args.no_write:
        return 0
    return write_results(rows, args, lengths, time.perf_counter() - started)


def write_results(rows: list[dict], args, lengths: dict, seconds: float) -> int:
    from _meta import markdown_header, run_metadata

    meta = {**run_metadata("cpu"), "seconds": round(seconds, 1)}
    shipped = next((r for r in rows if r["variant"] == "as_shipped"), rows[0])
    met = shipped["ratio"] <= TARGET
    summary = (f"tiny LoRA, batch {args.batch_size}, sequence length {args.seq_len}, {args.steps} steps on "
               f"{args.rows} alpaca rows of {lengths.get('min')}..{lengths.get('max')} tokens: worker RSS "
               f"{shipped['rss_20'] / GIB:.2f} GiB at step 20, {shipped['rss_last'] / GIB:.2f} GiB at step "
               f"{args.steps} ({shipped['variant']}): ratio {shipped['ratio']:.2f}, target <= {TARGET}: "
               f"{'met' if met else 'NOT met'}.")
    setup = {"model": "tiny", "method": "lora", "dtype": "float32", "batch_size": args.batch_size,
             "seq_len": args.seq_len, "steps": args.steps, "rows": args.rows, "token_lengths": lengths,
             "rss_at_step": "last memory sample at or before the step's log event"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory_creep.json").write_text(json.dumps(
        {"meta": meta, "setup": setup, "variants": rows, "target_ratio": TARGET, "met": met, "summary": summary},
        indent=1))
    steps = sorted({int(s) for r in rows for s in r["rss_by_step"]})
    lines = markdown_header("Worker memory creep (RSS against step)", meta) + [
        summary, "", "RSS = the worker's own `memory` samples (psutil RSS) in events.jsonl, the last one at or "
        "before each step's `log` event. GiB = 2^30 bytes.", "",
        "| variant | what | " + " | ".join(f"step {s}" for s in steps) + " | ratio last/20 | max | wall s |",
        "|---|---|" + "---:|" * (len(steps) + 3)]
    for r in rows:
        cells = [f"{r['rss_by_step'][s] / GIB:.2f}" if r["rss_by_step"].get(s) else "" for s in steps]
        lines.append(f"| {r['variant']} | {r['what']} | " + " | ".join(cells)
                     + f" | {r['ratio']:.2f} | {r['rss_max'] / GIB:.2f} | {r['wall_s']:.0f} |")
    (RESULTS / "memory_creep.md").write_text("\n".join(lines) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
