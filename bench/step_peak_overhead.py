"""What the live step peak costs: training steps of the worker's recipe with and without
``StepPeakCallback``, interleaved in one process.

Each trial trains the same run (the worker's ``build_trainer``: padded batches with an
attention mask, ``-100`` labels, clipping, the probe's longest-first order) for ``--steps``
optimizer steps on a fresh copy of the same model, with the callback at the default sampling
(``WORKBENCH_STEP_PEAK_EVERY`` unset: step 2, the probe's, then every ``STEP_PEAK_EVERY``-th), with it on every
step (``every=1``, the tracker's own cost, over a fifth of the steps), or without it. The order of the variants rotates every
repetition. Two quantities:

- *within a run* (robust on a shared machine): every optimizer step is timed (from
  ``on_step_begin`` before the callback to ``on_step_end`` after it); the overhead is the extra
  time of the sampled steps over the median unsampled step of the same run, as a share of the
  run's step time;
- *between runs*: the Trainer's ``train_runtime`` per step with / without the callback, pairwise
  per repetition (noisy when other jobs share the CPU).

    python bench/step_peak_overhead.py [--steps 100] [--repeats 5] [--model tiny] [--method lora]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile

from _meta import RESULTS  # noqa: E402  (the repo on sys.path, offline: bench/_meta.py)

TARGET_PCT = 3.0


class StepTimes:
    """Two callbacks around all the others: ``first`` stamps ``on_step_begin``, ``last``
    ``on_step_end``; ``seconds`` holds each optimizer step's duration."""

    def __init__(self) -> None:
        import time

        from transformers import TrainerCallback

        self.seconds, self._start, clock = [], 0.0, time.perf_counter
        outer = self

        class First(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                outer._start = clock()

        class Last(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                outer.seconds.append(clock() - outer._start)

        self.first, self.last = First(), Last()


def within_run_overhead(seconds: list[float], sampled: set[int]) -> float:
    """Extra time of the sampled steps (1-based numbers) over the median other step, as a % of all."""
    plain = statistics.median(t for i, t in enumerate(seconds, 1) if i not in sampled)
    extra = sum(t - plain for i, t in enumerate(seconds, 1) if i in sampled)
    return extra / sum(seconds) * 100


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
    times = StepTimes()
    with tempfile.TemporaryDirectory(prefix="step-peak-") as out, contextlib.redirect_stdout(io.StringIO()):
        trainer = trainer_for(spec, method, method.resolve({}), settings, model, steps, seed, out,
                              [times.first, *callbacks, times.last])
        result = trainer.train()
    runtime = result.metrics["train_runtime"]
    row = {"variant": variant, "seconds_per_step": runtime / steps, "train_runtime": runtime,
           "loss": result.training_loss, "step_seconds_median": statistics.median(times.seconds)}
    if variant == "default":
        sampled = {r["step"] for r in callbacks[0].records}
        row["within_run_overhead_pct"] = within_run_overhead(times.seconds, sampled)
        row["sampled_steps_list"] = sorted(sampled)
        plain = statistics.median(t for i, t in enumerate(times.seconds, 1) if i not in sampled)
        row["tracked_over_plain_step"] = statistics.median(times.seconds[i - 1] for i in sampled) / plain
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
    within = [r["within_run_overhead_pct"] for r in rows if r["variant"] == "default"]
    summary["within_run_overhead_default_pct_median"] = statistics.median(within)
    summary["within_run_overhead_default_pct"] = within
    summary["tracked_over_plain_step_within_run"] = statistics.median(
        r["tracked_over_plain_step"] for r in rows if r["variant"] == "default")
    summary["target_met"] = summary["within_run_overhead_default_pct_median"] < TARGET_PCT
    ratio = summary["ms_per_step_median"]["every step"] / summary["ms_per_step_median"]["off"]
    summary["tracked_step_cost_ratio"] = ratio
    summary["steady_overhead_pct_at_default"] = (ratio - 1) / summary["default_every"] * 100
    line = (f"step peak at the default sampling (every {summary['default_every']}, {args.steps} steps: steps "
            f"{rows[[r['variant'] for r in rows].index('default')]['sampled_steps_list']} tracked): within-run overhead "
            f"median {summary['within_run_overhead_default_pct_median']:.2f}% of step time ("
            + ", ".join(f"{x:.2f}" for x in within) + f"; a tracked step {summary['tracked_over_plain_step_within_run']:.2f}x "
            f"the median other step); between runs (noisy) {summary['overhead_default_pct_median']:+.1f}% (pairs "
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
