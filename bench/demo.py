"""The demo, timed: SmolLM2-135M-Instruct + LoRA on the bundled order-extraction data, from
Start to an evaluated adapter; and the chat speed of the default model.

1. **Start -> evaluated adapter**: the launcher starts the worker exactly as the Train tab's
   Start does (``prepare`` + ``spawn``: preflight, a separate process, the probe), with the
   demo's settings (batch 8, sequence length 128, ``--steps`` optimizer steps, learning
   rate 1e-3, LoRA defaults); when it has completed, ``workbench.evaluation.evaluate_runs``
   scores the base and the adapter on the held-out prompts (greedy, batched). Wall time of
   each part, the time per optimizer step (median over the untracked steps, from the
   worker's ``log`` events; tracked steps -- the probe and step 1 -- reported apart) and per
   generated token in the evaluation. Goal: <= 5 minutes in all; the adapter's parse rate and
   field accuracy clearly above the base's (reported whatever they are).
2. **Chat speed**: ``ChatEngine.stream`` on the base model, one prompt at a time as the chat
   view streams it: time to the first streamed piece and tokens/s after it (median of
   ``--chat-repeats`` prompts, 64 new tokens each). Goal: first token < 1 s, >= 10 tokens/s.

Writes bench/results/demo.{json,md}.

    python bench/demo.py [--steps 12] [--limit 30] [--chat-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _meta import HERE, RESULTS  # noqa: E402  (the repo on sys.path, offline: bench/_meta.py)

BUDGET_S = 300
CHAT_PROMPTS = ("What is the capital of France?", "Give me two tips for writing a clear email.",
                "Explain in one sentence what a rainbow is.", "Name three vegetables that grow underground.")


def train_and_evaluate(steps: int, limit: int) -> dict:
    from workbench.evaluation import evaluate_runs
    from workbench.paths import DEMO_DATASET
    from workbench.runspec import Schedule
    from workbench.sessions import last_status, session_path
    from workbench.smollm2 import SMOLLM2_NAME, ensure_smollm2
    from workbench.training.events import read_events
    from workbench.training.launcher import make_job, prepare, spawn

    ensure_smollm2()  # the one-time conversion is not part of a Start (it happens once per machine)
    started = time.perf_counter()
    from workbench.paths import DEMO_SETTINGS  # the page's demo preset

    job = make_job(SMOLLM2_NAME, "lora", str(DEMO_DATASET),
                   settings={"device": "cpu", "batch_size": DEMO_SETTINGS["batch"], "seq_len": DEMO_SETTINGS["seq"]},
                   schedule=Schedule(max_steps=steps, learning_rate=DEMO_SETTINGS["learning_rate"]))
    sid = prepare(job)
    proc = spawn(sid)
    code = proc.wait(timeout=3600)
    trained = time.perf_counter()
    events, _ = read_events(session_path(sid) / "events.jsonl")
    if code != 0 or last_status(session_path(sid)) != "completed":
        raise SystemExit(f"the run did not complete (exit {code}): {events[-1]}")
    logs = [e for e in events if e["kind"] == "log" and e.get("loss") is not None]
    tracked = {e["step"]: e["seconds"] for e in events if e["kind"] == "step_memory"}
    step_times = {b["step"]: b["time"] - a["time"] for a, b in zip(logs, logs[1:])}
    untracked = [t for s, t in step_times.items() if s not in tracked]
    status = {e["status"]: e["time"] for e in events if e["kind"] == "status"}
    report = evaluate_runs([sid], limit=limit)
    evaluated = time.perf_counter()
    by = {r["contender"]: r for r in report["results"]}
    return {"run": sid, "steps": steps, "settings": job.run.settings.as_dict(), "data": "assets/demo/orders.jsonl",
            "train_wall_s": round(trained - started, 1), "eval_wall_s": round(evaluated - trained, 1),
            "total_wall_s": round(evaluated - started, 1),
            "loading_s": round(status.get("running", 0) - status.get("loading", 0), 1),
            "step_s_median_untracked": round(statistics.median(untracked), 2) if untracked else None,
            "tracked_steps_s": tracked, "final_loss": logs[-1]["loss"] if logs else None,
            "probe": next((e for e in events if e["kind"] == "probe"), None),
            "evaluation": report, "base": by["base"], "adapter": by[sid]}


def chat_speed(repeats: int) -> dict:
    import torch

    from workbench.chat import BASE, ChatEngine, Sampling
    from workbench.smollm2 import SMOLLM2_NAME

    threads = int(os.environ.get("WORKBENCH_CHAT_THREADS", "0")) or os.cpu_count()
    torch.set_num_threads(threads)
    engine = ChatEngine(SMOLLM2_NAME)
    t = time.perf_counter()
    engine.tokenizer  # loads the model
    load_s = time.perf_counter() - t
    tok = engine.tokenizer
    engine.answer("Hello", BASE, Sampling(max_new_tokens=4, temperature=0.0))  # warm-up
    rows = []
    for prompt in (CHAT_PROMPTS * repeats)[:max(repeats, 1)]:
        t0 = time.perf_counter()
        first, pieces = None, []
        for piece in engine.stream(prompt, BASE, Sampling(max_new_tokens=64, temperature=0.0)):
            if first is None and piece:
                first = time.perf_counter() - t0
            pieces.append(piece)
        total = time.perf_counter() - t0
        tokens = len(tok("".join(pieces), add_special_tokens=False)["input_ids"])
        rows.append({"prompt": prompt, "first_token_s": round(first, 3), "tokens": tokens,
                     "tokens_per_s_after_first": round((tokens - 1) / (total - first), 2) if tokens > 1 else None,
                     "answer": "".join(pieces)[:200]})
    return {"threads": threads, "load_s": round(load_s, 2), "prompts": rows,
            "first_token_s_median": statistics.median(r["first_token_s"] for r in rows),
            "tokens_per_s_median": statistics.median(r["tokens_per_s_after_first"] for r in rows
                                                     if r["tokens_per_s_after_first"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the page's demo preset, 12)")
    parser.add_argument("--limit", type=int, default=30, help="held-out prompts to score (60: all)")
    parser.add_argument("--chat-repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from workbench.smollm2 import INSTALL_HINT, available

    if not available():
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["WORKBENCH_SESSIONS"] = str(Path(tmp) / "sessions")
        from workbench.paths import DEMO_SETTINGS

        demo = train_and_evaluate(args.steps or DEMO_SETTINGS["max_steps"], args.limit)
    chat = chat_speed(args.chat_repeats)
    from _meta import markdown_header, run_metadata

    meta = run_metadata("cpu")
    base, adapter = demo["base"], demo["adapter"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = markdown_header("Demo: SmolLM2-135M-Instruct + LoRA on order extraction, and chat speed", meta) + [
        f"Start -> evaluated adapter: **{demo['total_wall_s']:.0f} s** (training {demo['train_wall_s']:.0f} s for "
        f"{demo['steps']} steps of batch 8, evaluation {demo['eval_wall_s']:.0f} s on "
        f"{demo['evaluation']['prompts']} held-out prompts); goal <= {BUDGET_S} s: "
        f"{'met' if demo['total_wall_s'] <= BUDGET_S else 'not met'}.", "",
        f"Worker: {demo['settings']['dtype']}, set-up {demo['loading_s']} s, median untracked step "
        f"{demo['step_s_median_untracked']} s, tracked step (the probe) {demo['tracked_steps_s']} s; "
        f"final loss {demo['final_loss']:.4f}; probe measured {demo['probe']['measured_bytes'] / 2**30:.3f} GiB vs "
        f"predicted {demo['probe']['predicted_bytes'] / 2**30:.3f} GiB (plan error {demo['probe']['plan_error_percent']:+.2f}%).", "",
        "| model | exact match | JSON parse rate | field accuracy | per field | tokens/s (batched greedy) |",
        "|---|---:|---:|---:|---|---:|"]
    for r in (base, adapter):
        fields = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["field_accuracy"].items())
        lines.append(f"| {'base' if r is base else 'LoRA adapter'} | {pct(r['exact_match'])} | {pct(r['parse_rate'])} | "
                     f"{pct(r['mean_field_accuracy'])} | {fields} | {r['tokens_per_second']:.1f} |")
    lines += ["", f"Sample answers (row {base['samples'][0]['row']}): base `{base['samples'][0]['answer'][:150]}`; "
                  f"adapter `{adapter['samples'][0]['answer'][:150]}`; reference `{base['samples'][0]['reference']}`.", "",
              f"Chat on the base model ({chat['threads']} threads, model load {chat['load_s']} s): first streamed token "
              f"{chat['first_token_s_median']:.2f} s (goal < 1 s), then {chat['tokens_per_s_median']:.1f} tokens/s "
              f"(goal >= 10), median of {len(chat['prompts'])} prompts, 64 new tokens, greedy.", ""]
    print("\n".join(lines))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "demo.json").write_text(json.dumps({"meta": meta, "demo": demo, "chat": chat}, indent=2,
                                                      ensure_ascii=False, default=str))
        (RESULTS / "demo.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
