"""Does the worker's telemetry slow training? The same Trainer run on the tiny model with
and without the workbench's callbacks as the worker uses them (events, the live step peak at
its default sampling, cancel, checkpoint publisher, heap trim) and the 4 Hz memory sampler,
interleaved, in one process. Target: overhead <= 2% (median time ratio). Writes bench/results/worker_overhead.*.

    python bench/worker_overhead.py [--steps 60] [--repeat 3]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 1.02


def run(with_telemetry: bool, steps: int, data_path: Path, tmp: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process, all threads) of ``trainer.train()``."""
    import torch
    from transformers import Trainer, TrainingArguments

    from workbench.data import load_tokenizer, training_data
    from workbench.loading import load_for_training
    from workbench.memory import TrainingSettings
    from workbench.methods import get_method
    from workbench.optimizers import build_optimizer
    from workbench.specs import load_model_spec
    from workbench.training.callbacks import CancelCallback, CheckpointPublisher, EventCallback, TokenCounter
    from workbench.training.collate import PadCollator
    from workbench.training.events import EventWriter
    from workbench.training.allocator import TrimCallback
    from workbench.training.telemetry import MemorySampler, StepPeakCallback

    torch.manual_seed(0)
    tok = load_tokenizer("tiny")
    _, train, _ = training_data(data_path, tok)
    settings = TrainingSettings(device="cpu", dtype="float32", batch_size=4)
    spec = load_model_spec("tiny")
    model = load_for_training(spec, get_method("lora"), {}, settings)
    optimizer = build_optimizer(model.parameters(), "adamw", lr=1e-3)
    args = TrainingArguments(output_dir=str(tmp / "out"), per_device_train_batch_size=4, max_steps=steps,
                             logging_steps=1, save_strategy="no", use_cpu=True, report_to=[], disable_tqdm=True,
                             remove_unused_columns=False, seed=0)
    counter = TokenCounter()
    callbacks, sampler, events = [], None, None
    if with_telemetry:
        events = EventWriter(tmp / f"events-{time.time_ns()}.jsonl")
        sampler = MemorySampler(events, "cpu")
        callbacks = [EventCallback(events, counter), CancelCallback(tmp / "cancel"),
                     CheckpointPublisher(tmp / "checkpoints", 3),
                     StepPeakCallback(events, model, "cpu"), TrimCallback()]
        sampler.start()
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=PadCollator(tok.pad_token_id, counter),
                      optimizers=(optimizer, None), callbacks=callbacks)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if sampler:
        sampler.stop()
        events.close()
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = tmp / "qa.jsonl"
        data.write_text("\n".join(json.dumps({"instruction": f"Question number {i} about memory?",
                                              "output": f"Answer {i}: adapters need little memory."})
                                  for i in range(256)))
        run(False, 5, data, tmp)  # warm-up: imports, tokenizer and tiny model cache
        base_runs, telem_runs = [], []
        for _ in range(args.repeat):
            base_runs.append(run(False, args.steps, data, tmp))
            telem_runs.append(run(True, args.steps, data, tmp))
    base, telem = [b[0] for b in base_runs], [t[0] for t in telem_runs]
    base_cpu, telem_cpu = [b[1] for b in base_runs], [t[1] for t in telem_runs]
    ratio = statistics.median(telem) / statistics.median(base)
    cpu_ratio = statistics.median(telem_cpu) / statistics.median(base_cpu)
    pairwise = [t / b for t, b in zip(telem, base)]
    summary = (f"{args.steps} steps x {args.repeat}: wall median {statistics.median(base):.2f} s -> "
               f"{statistics.median(telem):.2f} s with telemetry, ratio {ratio:.4f} (pairwise "
               f"{', '.join(f'{r:.3f}' for r in pairwise)}); CPU time (all threads) ratio {cpu_ratio:.4f}; "
               f"target <= {TARGET}: {'met' if max(ratio, cpu_ratio) <= TARGET else 'NOT met'}")
    print(summary)
    from _meta import markdown_header, run_metadata

    meta = run_metadata("cpu")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "worker_overhead.json").write_text(json.dumps(
        {"meta": meta, "baseline_s": base, "telemetry_s": telem, "baseline_cpu_s": base_cpu,
         "telemetry_cpu_s": telem_cpu, "ratio": ratio, "cpu_ratio": cpu_ratio, "summary": summary}, indent=1))
    (RESULTS / "worker_overhead.md").write_text(
        "\n".join(markdown_header("Worker telemetry overhead", meta)) + f"\nCPU only, tiny model, LoRA.\n\n{summary}\n\n| run | baseline wall (s) | telemetry wall (s) | baseline CPU (s) | "
        f"telemetry CPU (s) |\n|---|---:|---:|---:|---:|\n"
        + "\n".join(f"| {i + 1} | {b:.3f} | {t:.3f} | {bc:.3f} | {tc:.3f} |"
                     for i, (b, t, bc, tc) in enumerate(zip(base, telem, base_cpu, telem_cpu))) + "\n")
    return 0 if max(ratio, cpu_ratio) <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
