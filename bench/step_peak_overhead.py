"""What the live step peak costs: training steps of the worker's recipe with and without
``StepPeakCallback``, interleaved in one process.

Each trial trains the same run (the worker's ``build_trainer``: padded batches with an
attention mask, ``-100`` labels, clipping, the probe's longest-first order) for ``--steps``
optimizer steps on a fresh copy of the same model, with the callback at the default sampling
(``WORKBENCH_STEP_PEAK_EVERY`` unset: step 1, then every ``STEP_PEAK_EVERY``-th), with it on every
step (``every=1``, the tracker's own cost, over a fifth of the steps), or without it. The order of the variants rotates every
repetition. The quantity is the Trainer's own ``train_runtime`` per optimizer step; the
overhead is the median over repetitions of (with / without - 1), each pair from the same
repetition.

    python bench/step_peak_overhead.py [--steps 100] [--repeats 5] [--model tiny] [--method lora]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_PCT = 3.0


def trial(spec, method, settings, steps: int, variant: str, seed: int = 0) -> dict:
    import torch

    from workbench.loading import load_for_training
    from workbench.measure import trainer_for
    from workbench.training.telemetry import StepPeakCallback, step_peak_every

    torch.manual_seed(seed)
    model = load_for_training(spec, method, method.resolve({}), settings)
    callbacks = []
    if variant != "off":
        every = 1 if variant == "every step" else None  # None: the worker's default sampling
        callbacks.append(StepPeakCallback(None, model, "cpu", every=every))
    with tempfile.TemporaryDirectory(prefix="step-peak-") as out, contextlib.redirect_stdout(io.StringIO()):
        trainer = trainer_for(spec, method, method.resolve({}), settings, model, steps, seed, out, callbacks)
        result = trainer.train()
    runtime = result.metrics["train_runtime"]
    row = {"variant": variant, "seconds_per_step": runtime / steps, "train_runtime": runtime,
           "loss": result.training_loss}
    if callbacks:
        cb = callbacks[0]
        row.update(sampled_steps=len(cb.records), every=cb.every if variant != "off" else None,
                   default_every=step_peak_every(), sampled_step_seconds=[r["seconds"] for r in cb.records][:8],
                   peak_bytes=cb.peak_bytes)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from workbench.memory import TrainingSettings
    from workbench.methods import get_method
    from workbench.specs import load_model_spec
    from workbench.training.telemetry import step_peak_every

    spec, method = load_model_spec(args.model), get_method(args.method)
    settings = TrainingSettings(dtype="float32", batch_size=args.batch_size, seq_len=args.seq_len, device="cpu")
    variants = ["off", "default", "every step"]
    trial(spec, method, settings, 5, "off")  # warm-up: imports, allocator, thread pools
    rows = []
    for rep in range(args.repeats):
        order = variants[rep % 3:] + variants[:rep % 3]
        for v in order:
            n = args.steps if v != "every step" else max(10, args.steps // 5)
            rows.append({"repeat": rep, **trial(spec, method, settings, n, v)})
            print(f"rep {rep} {v:<10} {rows[-1]['seconds_per_step'] * 1000:8.2f} ms/step", file=sys.stderr, flush=True)

    def per(v):
        return {r["repeat"]: r["seconds_per_step"] for r in rows if r["variant"] == v}

    off, default, every = per("off"), per("default"), per("every step")
    pair_default = [(default[k] / off[k] - 1) * 100 for k in off]
    pair_every = [(every[k] / off[k] - 1) * 100 for k in off]
    summary = {
        "run": f"{args.model} {args.method} b{args.batch_size}x{args.seq_len} float32 adamw, {args.steps} optimizer "
               f"steps per trial, {args.repeats} interleaved repetitions",
        "default_every": step_peak_every(),
        "ms_per_step_median": {v: statistics.median(per(v).values()) * 1000 for v in variants},
        "overhead_default_pct_median": statistics.median(pair_default), "overhead_default_pct_pairs": pair_default,
        "overhead_every_step_pct_median": statistics.median(pair_every), "overhead_every_step_pct_pairs": pair_every,
        "target_pct": TARGET_PCT,
    }
    summary["target_met"] = summary["overhead_default_pct_median"] < TARGET_PCT
    ratio = summary["ms_per_step_median"]["every step"] / summary["ms_per_step_median"]["off"]
    summary["tracked_step_cost_ratio"] = ratio
    summary["steady_overhead_pct_at_default"] = (ratio - 1) / summary["default_every"] * 100
    line = (f"step peak at the default sampling (every {summary['default_every']}): overhead median "
            f"{summary['overhead_default_pct_median']:+.2f}% of step time (pairs "
            + ", ".join(f"{x:+.1f}" for x in pair_default) + f"); every step: {summary['overhead_every_step_pct_median']:+.1f}%"
            f" (a tracked step costs {ratio:.2f}x, so a long run pays (r - 1) / {summary['default_every']} = "
            f"{summary['steady_overhead_pct_at_default']:.2f}%)"
            f"; {summary['ms_per_step_median']['off']:.1f} ms/step without; target < {TARGET_PCT}%: "
            + ("met" if summary["target_met"] else "NOT met"))
    print(line)
    if args.no_write:
        return 0
    try:
        from _meta import markdown_header, run_metadata

        meta = run_metadata("cpu")
        header = markdown_header("Step-peak overhead", meta)
    except ImportError:
        meta, header = {}, ["# Step-peak overhead", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "step_peak_overhead.json").write_text(json.dumps({"meta": meta, "summary": summary, "trials": rows},
                                                                indent=1))
    md = header + [summary["run"] + ".", "", line + ".", "",
                   "| variant | ms/step per repetition | median |", "|---|---|---:|"]
    for v in variants:
        vals = per(v)
        md.append(f"| {v} | " + ", ".join(f"{vals[k] * 1000:.1f}" for k in sorted(vals))
                  + f" | {statistics.median(vals.values()) * 1000:.1f} |")
    (RESULTS / "step_peak_overhead.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
