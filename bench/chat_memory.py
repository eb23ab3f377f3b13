"""Chat view memory and speed: the base model alone versus base + 3 LoRA adapters attached.

Three tiny LoRA adapters are trained first by the real worker (a few steps each). Then, in
fresh processes, interleaved, ``workbench.chat.ChatEngine`` loads ``tiny`` with 0 or 3
adapters attached, the way the chat tab does, and answers prompts. Per process:

- tensor bytes of the loaded model (parameters + buffers, deduplicated by storage);
- resident set after imports, after loading and answering, and its peak (Linux ``VmHWM``);
- time to first token and tokens/s of greedy generation (a fixed number of new tokens) for
  the base (adapters disabled) and, with adapters, for one adapter; plus the time to the first
  streamed text piece through ``ChatEngine.stream`` (what the chat view shows).

Target: memory with 3 adapters <= 1.05 x the base alone. Writes bench/results/chat_memory.*.

    python bench/chat_memory.py [--repeat 2] [--tokens 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _meta import HERE, RESULTS  # noqa: E402  (the repo on sys.path, offline: bench/_meta.py)

TARGET = 1.05
PROMPTS = ("Say the colour of the sky.", "What does an adapter change in a model?", "Name three fruits.")


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


# -- child: train three adapters -------------------------------------------------------------

def train_adapters() -> list[str]:
    from workbench.sessions import session_path
    from workbench.training.checkpoints import newest_complete
    from workbench.training.job import Schedule
    from workbench.training.launcher import make_job, prepare
    from workbench.training.worker import main

    data = Path(os.environ["WORKBENCH_SESSIONS"]).parent / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": p, "output": f"Answer {i}: blue, small, apple."})
                              for i, p in enumerate(PROMPTS * 8)))
    found = []
    for lr, seed in ((5e-3, 1), (1e-3, 2), (2e-4, 3)):
        sid = prepare(make_job("tiny", "lora", str(data),
                               schedule=Schedule(max_steps=8, learning_rate=lr, seed=seed)))
        if main([str(session_path(sid) / "job.json")]) != 0:
            raise RuntimeError(f"training an adapter failed: {session_path(sid)}")
        found.append(str(newest_complete(session_path(sid))))
    return found


# -- child: measure one chat view ------------------------------------------------------------

def _tensor_bytes(model) -> int:
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def _timed_generation(engine, who: str, prompt: str, tokens: int) -> dict:
    """Greedy generation of exactly ``tokens`` new tokens on the engine's model, switching
    adapters the way ``ChatEngine.stream`` does; times every new token."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.prompt_seen = False

        def put(self, value) -> None:
            if not self.prompt_seen:  # generate() first hands over the prompt
                self.prompt_seen = True
                return
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    model, tok = engine._base(), engine._tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    clock = Clock()
    kwargs = dict(**ids, streamer=clock, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                  pad_token_id=tok.pad_token_id)
    start = time.perf_counter()
    with torch.no_grad():
        if who == "base" and hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                model.generate(**kwargs)
        else:
            if who != "base":
                model.set_adapter(who)
            model.generate(**kwargs)
    n = len(clock.times)
    return {"ttft_s": clock.times[0] - start, "tokens": n,
            "tokens_per_second": (n - 1) / (clock.times[-1] - clock.times[0]) if n > 1 else None}


def measure(adapters: list[str], tokens: int) -> dict:
    from pathlib import Path as P

    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on
    import peft  # noqa: F401  (imported on both sides: the app process has it loaded either way)
    import torch  # noqa: F401

    from workbench.chat import BASE, ChatEngine, Sampling

    rss_imports = _kib("VmRSS")
    engine = ChatEngine("tiny")
    engine._base()
    for i, folder in enumerate(adapters):
        engine.add_adapter(f"a{i + 1}", P(folder))
    who = ["base"] + (["a1"] if adapters else [])
    for w in who:  # warm-up: first forward pass, first adapter switch
        _timed_generation(engine, w, PROMPTS[0], 4)
    out = {"adapters": len(adapters), "tensor_bytes": _tensor_bytes(engine._model), "rss_after_imports": rss_imports}
    timed = {w: [] for w in who}
    first_piece = {w: [] for w in who}
    for _ in range(2):  # rounds; base and adapter alternate within a round
        for p in PROMPTS:
            for w in who:
                timed[w].append(_timed_generation(engine, w, p, tokens))
                start = time.perf_counter()
                stream = engine.stream(p, BASE if w == "base" else w, Sampling(max_new_tokens=tokens, temperature=0.0))
                next(stream, None)
                first_piece[w].append(time.perf_counter() - start)
                for _ in stream:
                    pass
    for w in who:
        out[w if w == "base" else "adapter"] = {
            "ttft_s": statistics.median(r["ttft_s"] for r in timed[w]),
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in timed[w]),
            "first_streamed_text_s": statistics.median(first_piece[w]), "tokens": timed[w][0]["tokens"]}
    out["rss"] = _kib("VmRSS")
    out["rss_peak"] = _kib("VmHWM")
    return out


# -- parent ----------------------------------------------------------------------------------

def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        raise RuntimeError(f"chat_memory.py {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _planner_extrapolation() -> list[dict]:
    """What 3 default LoRA adapters add to real models, by the planner (not measured here)."""
    from workbench.memory import TrainingSettings, plan
    from workbench.methods import get_method
    from workbench.specs import load_model_spec

    rows = []
    for model in ("meta-llama/Llama-2-7b-hf", "Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B"):
        p = plan(load_model_spec(model), get_method("lora"), {}, TrainingSettings(dtype="bfloat16"))
        w, a = p.component("weights"), p.component("trainable_weights")
        rows.append({"model": model, "weights_bytes": w, "adapter_bytes": a, "ratio_3_adapters": (w + 3 * a) / w})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per timed answer")
    parser.add_argument("--threads", type=int, default=1,
                        help="compute threads of each chat process, the same on both sides (0: torch's default)")
    parser.add_argument("--train-adapters", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_adapters:
        print(json.dumps(train_adapters()))
        return 0
    if args.measure is not None:
        print(json.dumps(measure([a for a in args.measure.split(",") if a], args.tokens)))
        return 0

    started = time.perf_counter()
    if args.threads > 0:  # inherited by the child processes; torch reads it at start-up
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as d:
        os.environ["WORKBENCH_CACHE"] = str(Path(d) / "cache")
        os.environ["WORKBENCH_SESSIONS"] = str(Path(d) / "sessions")
        adapters = _child("--train-adapters")
        runs = {0: [], 3: []}
        for rep in range(args.repeat):
            for n in ((0, 3) if rep % 2 == 0 else (3, 0)):
                result = _child("--measure", ",".join(adapters[:n]), "--tokens", str(args.tokens))
                runs[n].append(result)
                print(f"rep {rep + 1}, {n} adapters: tensors {result['tensor_bytes'] / 1e6:.2f} MB, RSS "
                      f"{result['rss'] / 1e6:.1f} MB (peak {result['rss_peak'] / 1e6:.1f}), base TTFT "
                      f"{result['base']['ttft_s'] * 1000:.1f} ms, {result['base']['tokens_per_second']:.1f} tok/s",
                      file=sys.stderr, flush=True)
        from _meta import markdown_header, run_metadata

        meta = run_metadata("cpu")

    def med(n, key, sub=None):
        vals = [(r[key] if sub is None else r[key][sub]) for r in runs[n]]
        return statistics.median(vals)

    base_t, ad_t = med(0, "tensor_bytes"), med(3, "tensor_bytes")
    base_rss, ad_rss = med(0, "rss"), med(3, "rss")
    growth0 = statistics.median(r["rss"] - r["rss_after_imports"] for r in runs[0])
    growth3 = statistics.median(r["rss"] - r["rss_after_imports"] for r in runs[3])
    speed = {
        "base_alone": {k: med(0, "base", k) for k in ("ttft_s", "tokens_per_second", "first_streamed_text_s")},
        "base_with_3_adapters_disabled": {k: med(3, "base", k) for k in ("ttft_s", "tokens_per_second",
                                                                         "first_streamed_text_s")},
        "adapter": {k: med(3, "adapter", k) for k in ("ttft_s", "tokens_per_second", "first_streamed_text_s")},
    }
    ratios = {"tensor_bytes": ad_t / base_t, "rss": ad_rss / base_rss, "rss_growth_over_imports": growth3 / growth0,
              "rss_peak": med(3, "rss_peak") / med(0, "rss_peak")}
    extrapolation = _planner_extrapolation()
    verdict_process = "met" if ratios["rss"] <= TARGET else "NOT met"
    verdict_tensors = "met" if ratios["tensor_bytes"] <= TARGET else "NOT met"
    summary = (f"tiny, 3 LoRA adapters (r=8, all-linear): process memory (RSS) {ratios['rss']:.3f}x the base alone "
               f"(target <= {TARGET}: {verdict_process}); model tensors {ratios['tensor_bytes']:.3f}x "
               f"({verdict_tensors}: "
               f"on tiny each adapter is {(ad_t - base_t) / 3 / base_t * 100:.1f}% of the base's bytes; by the planner "
               f"a 7B base with the same 3 adapters is {extrapolation[0]['ratio_3_adapters']:.3f}x). "
               f"Time to first token "
               f"{speed['base_alone']['ttft_s'] * 1000:.1f} ms base alone, {speed['adapter']['ttft_s'] * 1000:.1f} ms "
               f"with an adapter; {speed['base_alone']['tokens_per_second']:.0f} vs "
               f"{speed['adapter']['tokens_per_second']:.0f} tokens/s.")
    print(summary)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chat_memory.json").write_text(json.dumps(
        {"meta": meta, "threads": args.threads or "torch default", "runs": runs, "ratios": ratios, "speed": speed,
         "planner_extrapolation": extrapolation,
         "tokens_per_answer": args.tokens, "summary": summary}, indent=1))
    mb = lambda x: f"{x / 1e6:.2f}"  # noqa: E731
    lines = markdown_header("Chat view: base alone vs base + 3 adapters", meta) + [
             f"CPU only. {args.repeat} fresh "
             f"processes per side, interleaved; {args.threads or 'default'} compute thread(s) each; timings are "
             f"medians of 6 answers per process and of the processes.", "", summary, "",
             "| | base alone | base + 3 adapters | ratio |", "|---|---:|---:|---:|",
             f"| model tensors (MB) | {mb(base_t)} | {mb(ad_t)} | {ratios['tensor_bytes']:.3f} |",
             f"| process RSS after answering (MB) | {mb(base_rss)} | {mb(ad_rss)} | {ratios['rss']:.3f} |",
             f"| RSS growth over imports (MB) | {mb(growth0)} | {mb(growth3)} | "
             f"{ratios['rss_growth_over_imports']:.3f} |",
             f"| peak RSS (MB) | {mb(med(0, 'rss_peak'))} | {mb(med(3, 'rss_peak'))} | {ratios['rss_peak']:.3f} |", "",
             f"| generation ({args.tokens} new tokens, greedy) | time to first token (ms) | tokens/s | first streamed "
             "text (ms) |", "|---|---:|---:|---:|"]
    for name, s in speed.items():
        lines.append(f"| {name.replace('_', ' ')} | {s['ttft_s'] * 1000:.1f} | {s['tokens_per_second']:.1f} | "
                     f"{s['first_streamed_text_s'] * 1000:.1f} |")
    lines += ["", "By the planner (not measured): 3 default LoRA adapters (r=8, all-linear, fp32) on real bases "
              "(bf16 weights):", "", "| model | weights (GB) | one adapter (MB) | base + 3 adapters |",
              "|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['weights_bytes'] / 1e9:.2f} | {r['adapter_bytes'] / 1e6:.1f} | "
              f"{r['ratio_3_adapters']:.3f}x |" for r in extrapolation]
    (RESULTS / "chat_memory.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
