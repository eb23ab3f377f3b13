"""Training speed: the workbench worker (telemetry on) against a plain Trainer + peft script.

The same model (tiny), data, method (LoRA) and settings, trained

- ``plain``: by ``bench/baseline_plain.py``, a minimal standalone ``transformers.Trainer`` +
  ``peft`` script, as its own process;
- ``workbench``: by the real worker (``python -m workbench.training.worker job.json``, started
  by the launcher), with its events, 4 Hz memory sampler and tensor accounting on;
- ``workbench padding_free`` / ``workbench group_by_length``: the worker with the faster
  batching options (``Schedule.batching``): padding-free rows (transformers'
  ``DataCollatorWithFlattening``; the same loss, no pad tokens computed) and length-grouped
  batches (transformers' ``LengthGroupedSampler``; less padding, another batch order).

Runs are interleaved (the order rotates each repetition) in one invocation. Each side's
speed is its own Trainer's ``train_runtime`` (the training loop only: both processes start,
import, load and tokenize differently, so start-up is reported apart, as wall time). Tokens
are the real (non-pad) tokens of one epoch, identical for every variant. Target: workbench /
plain >= 1.0 within noise (telemetry overhead < 2%). Writes bench/results/throughput.*.

    python bench/throughput.py [--repeat 3] [--rows 240] [--batch-size 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _meta import HERE, RESULTS  # noqa: E402  (the repo on sys.path, offline: bench/_meta.py)

VARIANTS = ("plain", "workbench", "workbench padding_free", "workbench group_by_length")
TARGET = 1.0
WORDS = ("memory adapter rank gradient token batch layer weight model train learn small large quick slow "
         "planner sequence optimizer checkpoint activation step loss value").split()


def write_data(path: Path, rows: int, seed: int = 0) -> None:
    """Question/answer pairs of very different lengths (so batches carry padding)."""
    rng = random.Random(seed)
    lines = []
    for i in range(rows):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20)))
        a = " ".join(rng.choice(WORDS) for _ in range(rng.choice((rng.randint(2, 10), rng.randint(15, 60)))))
        lines.append(json.dumps({"instruction": f"Question {i}: {q}?", "output": f"{a}."}))
    path.write_text("\n".join(lines))


def tokenize(data: Path, out: Path) -> tuple[int, int, dict]:
    """The worker's own rendering and cutoff, written as token ids for the plain script."""
    from workbench.data import load_tokenizer, training_data

    report, train, _ = training_data(data, load_tokenizer("tiny"))
    with out.open("w") as fh:
        for row in train:
            fh.write(json.dumps({"input_ids": row["input_ids"], "labels": row["labels"]}) + "\n")
    return len(train), sum(len(r) for r in train["input_ids"]), report.token_lengths


def run_plain(model_dir: Path, tokens_file: Path, args) -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(HERE / "baseline_plain.py"), "--model", str(model_dir), "--data",
                          str(tokens_file), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                          "--lr", str(args.lr), "--threads", str(args.threads), "--device", args.device],
                         capture_output=True, text=True,
                         env=os.environ.copy())
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"baseline_plain.py failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"train_runtime": result["train_runtime"], "train_loss": result["train_loss"], "steps": result["steps"],
            "wall": wall, "threads": result.get("torch_threads")}


def run_worker(data: Path, batching: str, args) -> dict:
    from workbench.sessions import session_path
    from workbench.training.events import read_events
    from workbench.training.job import Schedule
    from workbench.training.launcher import make_job, prepare, spawn

    job = make_job("tiny", "lora", str(data),
                   settings={"device": args.device, "dtype": "float32", "batch_size": args.batch_size},
                   schedule=Schedule(epochs=args.epochs, learning_rate=args.lr, batching=batching))
    start = time.perf_counter()
    sid = prepare(job)
    rc = spawn(sid).wait()
    wall = time.perf_counter() - start
    events = read_events(session_path(sid) / "events.jsonl")[0]
    status = [e for e in events if e["kind"] == "status"][-1]
    summary = next((e for e in events if e["kind"] == "summary"), None)
    if rc != 0 or status["status"] != "completed" or summary is None:
        log = (session_path(sid) / "worker.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"worker {batching} ended {status}:\n{log}")
    rates = [e["tokens_per_second"] for e in events if e["kind"] == "log" and e.get("tokens_per_second")]
    loading = next((e for e in events if e.get("status") == "loading"), {})
    return {"train_runtime": float(summary["train_runtime"]), "train_loss": float(summary["train_loss"]),
            "steps": summary["step"], "wall": wall, "ui_tokens_per_second_median": statistics.median(rates),
            "threads": loading.get("cpu_threads")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list (plain is always run)")
    parser.add_argument("--no-write", action="store_true", help="print only; keep the committed results")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both sides train")
    parser.add_argument("--out", default="", help="write throughput.json to this folder only (bench/gpu_check.py); "
                                                  "the committed results are left alone")
    parser.add_argument("--threads", type=int, default=0,
                        help="compute threads per training process, the same for every side (0: what the worker "
                             "uses by default, every core but one)")
    args = parser.parse_args()
    # One explicit count for both sides: the worker's own rule (WORKBENCH_WORKER_THREADS, else every core but one,
    # workbench/training/worker.py _cpu_threads) and baseline_plain.py's --threads (torch.set_num_threads).
    args.threads = args.threads if args.threads > 0 else max(1, (os.cpu_count() or 1) - 1)
    os.environ["WORKBENCH_WORKER_THREADS"] = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    variants = ("plain",) + tuple(v for v in args.variants.split(",") if v in VARIANTS and v != "plain")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ["WORKBENCH_CACHE"] = str(tmp / "cache")
        os.environ["WORKBENCH_SESSIONS"] = str(tmp / "sessions")
        from workbench.tiny import ensure_tiny

        model_dir = ensure_tiny()
        data, tokens_file = tmp / "qa.jsonl", tmp / "tokens.jsonl"
        write_data(data, args.rows)
        examples, tokens_per_epoch, lengths = tokenize(data, tokens_file)
        tokens = tokens_per_epoch * args.epochs
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for rep in range(args.repeat):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for variant in order:
                result = (run_plain(model_dir, tokens_file, args) if variant == "plain"
                          else run_worker(data, variant.split()[1] if " " in variant else "pad", args))
                result["tokens_per_second"] = tokens / result["train_runtime"]
                result["repetition"] = rep
                runs[variant].append(result)
                print(f"rep {rep + 1} {variant:<26} {result['tokens_per_second']:>9.0f} tok/s  loop "
                      f"{result['train_runtime']:.2f} s  wall {result['wall']:.1f} s  loss {result['train_loss']:.4f}",
                      file=sys.stderr, flush=True)
    plain = [r["tokens_per_second"] for r in runs["plain"]]
    rows = []
    for variant in variants:
        tps = [r["tokens_per_second"] for r in runs[variant]]
        pairwise = [t / p for t, p in zip(tps, plain)]
        rows.append({"variant": variant, "tokens_per_second": tps, "median_tokens_per_second": statistics.median(tps),
                     "ratio_to_plain": {"median": statistics.median(pairwise), "min": min(pairwise),
                                        "max": max(pairwise), "pairwise": pairwise},
                     "train_loss": [r["train_loss"] for r in runs[variant]],
                     "wall_s": [r["wall"] for r in runs[variant]], "steps": runs[variant][0]["steps"]})
    by = {r["variant"]: r for r in rows}
    nothing = {"ratio_to_plain": {"median": float("nan"), "min": float("nan"), "max": float("nan")}}
    telemetry = by.get("workbench", nothing)["ratio_to_plain"]
    # noise floor: the spread of the plain runs themselves
    noise = (max(plain) - min(plain)) / statistics.median(plain)
    overhead = 1 - telemetry["median"]
    verdict = {"ratio_at_least_1": telemetry["median"] >= TARGET, "overhead_below_2pct": overhead < 0.02,
               "plain_spread": noise}
    summary = (f"tiny LoRA, {examples} examples x {args.epochs} epoch ({tokens:,} real tokens, batch "
               f"{args.batch_size}), {args.repeat} interleaved repetitions: workbench/plain tokens/s ratio median "
               f"{telemetry['median']:.3f} (min {telemetry['min']:.3f}, max {telemetry['max']:.3f}): ratio >= "
               f"{TARGET} {'met' if verdict['ratio_at_least_1'] else 'not met'}, telemetry overhead "
               f"{overhead * 100:+.1f}% (< 2%: {'met' if verdict['overhead_below_2pct'] else 'NOT met'}); the plain "
               f"runs themselves spread {noise * 100:.1f}%. Faster paths: padding_free "
               f"{by.get('workbench padding_free', nothing)['ratio_to_plain']['median']:.3f}x plain, group_by_length "
               f"{by.get('workbench group_by_length', nothing)['ratio_to_plain']['median']:.3f}x plain.")
    print(f"\n{'variant':<26} {'tokens/s (median)':>18} {'ratio median':>13} {'min':>7} {'max':>7} {'loss':>8}")
    for r in rows:
        q = r["ratio_to_plain"]
        print(f"{r['variant']:<26} {r['median_tokens_per_second']:>18.0f} {q['median']:>13.3f} {q['min']:>7.3f} "
              f"{q['max']:>7.3f} {statistics.median(r['train_loss']):>8.4f}")
    print(summary)
    if args.no_write:
        return 0
    from _meta import markdown_header, run_metadata

    meta = run_metadata(args.device)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "throughput.json").write_text(json.dumps({"meta": meta, "device": args.device, "variants": rows,
                                                         "runs": runs, "summary": summary}, indent=1))
        return 0
    meta["seconds"] = round(time.perf_counter() - started, 1)
    threads_seen = sorted({r.get("threads") for rs in runs.values() for r in rs}, key=str)
    setup = {"threads_per_process": args.threads, "threads_seen": threads_seen, "model": "tiny",
             "method": "lora (r=8, alpha 16, dropout 0.05, all-linear)", "dtype": "float32",
             "batch_size": args.batch_size, "epochs": args.epochs, "learning_rate": args.lr, "examples": examples,
             "real_tokens": tokens, "token_lengths": {k: v for k, v in lengths.items() if k != "histogram"},
             "optimizer": "torch AdamW, no weight decay, linear schedule, a log every step"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps(
        {"meta": meta, "setup": setup, "variants": rows, "runs": runs, "verdict": verdict, "summary": summary},
        indent=1))
    lines = markdown_header("Training throughput: workbench worker vs plain Trainer + peft", meta) + [
             "CPU only.", "", summary, "",
             "Tokens/s = real (non-pad) tokens of the epoch / the Trainer's own `train_runtime` in each process. "
             "Ratios are per repetition against the plain run of the same repetition. Compute threads per "
             f"training process: {setup['threads_per_process']}, passed explicitly to both sides "
             f"(WORKBENCH_WORKER_THREADS for the worker, --threads for baseline_plain.py); reported by the "
             f"processes: {threads_seen}.",
             "",
             "| variant | tokens/s per repetition | median | ratio to plain: median | min | max | train loss | "
             "wall s (whole process) |", "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        q = r["ratio_to_plain"]
        lines.append(f"| {r['variant']} | {', '.join(f'{t:.0f}' for t in r['tokens_per_second'])} | "
                     f"{r['median_tokens_per_second']:.0f} | {q['median']:.3f} | {q['min']:.3f} | {q['max']:.3f} | "
                     f"{', '.join(f'{x:.4f}' for x in r['train_loss'])} | "
                     f"{', '.join(f'{w:.1f}' for w in r['wall_s'])} |")
    (RESULTS / "throughput.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
