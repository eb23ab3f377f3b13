"""Command line: ``python -m workbench methods|plan|measure``.

Flags are generated from the method knobs and the training settings, so the CLI, the UI
and the registry never drift apart. Errors a user can cause print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .devices import default_device
from .errors import WorkbenchError
from .memory import plan
from .memory.settings import ATTENTIONS, DEVICES, DTYPE_BYTES, OFFLOADS, OPTIMIZERS, QUANTS, SETTING_HELP, STRATEGIES
from .methods import METHODS, get_method


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="SmolLM2-135M-Instruct (offline default), tiny, a bundled name, "
                                                   "a local folder or a hub id")
    p.add_argument("--method", required=True, help="one of: " + ", ".join(METHODS))
    p.add_argument("--json", action="store_true", help="print JSON")
    knobs = {}
    for method in METHODS.values():
        for knob in method.knobs:
            knobs.setdefault(knob.name, knob)
    group = p.add_argument_group("method knobs (see `methods`)")
    for knob in knobs.values():
        group.add_argument(knob.flag, dest=f"knob_{knob.name}", default=None, help=knob.help)
    s = p.add_argument_group("training settings")
    s.add_argument("--precision", default=None, metavar="MODE",
                   help=SETTING_HELP["precision"] + "; common spellings (float32, bfloat16, mixed-bf16, ...) work")
    s.add_argument("--dtype", choices=list(DTYPE_BYTES), default=None, help=SETTING_HELP["dtype"])
    s.add_argument("--quant", choices=list(QUANTS), default=None, help=SETTING_HELP["quant"])
    s.add_argument("--batch-size", default="4", help=SETTING_HELP["batch_size"])
    s.add_argument("--seq-len", default="512",
                   help=SETTING_HELP["seq_len"] + "; or p95:FILE / max:FILE to take it from a dataset")
    s.add_argument("--grad-accum", default="1", help=SETTING_HELP["grad_accum"])
    s.add_argument("--gradient-checkpointing", action="store_true", help=SETTING_HELP["gradient_checkpointing"])
    s.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adamw", help=SETTING_HELP["optimizer"])
    s.add_argument("--device", choices=list(DEVICES), default=None,
                   help=SETTING_HELP["device"] + "; default cuda when this machine has a GPU, else cpu")
    s.add_argument("--attention", choices=list(ATTENTIONS), default="sdpa", help=SETTING_HELP["attention"])


def add_distributed_flags(p: argparse.ArgumentParser) -> None:
    """``--gpus``, ``--nodes``, ``--strategy``, ``--offload`` (read by ``_parse_run``; commands
    without them get one process)."""
    s = p.add_argument_group("several GPUs")
    s.add_argument("--gpus", default="1", help=SETTING_HELP["gpus"])
    s.add_argument("--nodes", default="1", help=SETTING_HELP["nodes"])
    s.add_argument("--strategy", choices=list(STRATEGIES), default=None,
                   help=SETTING_HELP["strategy"] + "; default single, or ddp with more than one GPU")
    s.add_argument("--offload", choices=list(OFFLOADS), default="none", help=SETTING_HELP["offload"])


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise WorkbenchError(f"--{name.replace('_', '-')}: expected a whole number, got {value!r}") from None


def _seq_len(value: str, model: str) -> int:
    """A number, or ``p95:FILE`` / ``max:FILE``: the dataset's token length, measured with the
    model's own tokenizer when it has one here, else with the tiny tokenizer (said on stderr)."""
    stat, sep, path = value.partition(":")
    if not sep:
        return _int("seq_len", value)
    if stat not in ("p95", "max") or not path:
        raise WorkbenchError(f"--seq-len: expected a number, p95:FILE or max:FILE; got {value!r}")
    from .data import inspect, load_tokenizer
    from .errors import UnknownModelError

    try:
        tokenizer = load_tokenizer(model)
    except UnknownModelError:
        print(f"note: no tokenizer for {model} here; counting tokens with the tiny tokenizer", file=sys.stderr)
        tokenizer = load_tokenizer("tiny")
    return inspect(path, tokenizer=tokenizer, preview=0).token_lengths[stat]


def run_from_args(args: argparse.Namespace, data: dict | None = None, schedule: dict | None = None):
    """The RunSpec of the command line, by the same :func:`workbench.runspec.build_run` as the
    browser and the API."""
    from .runspec import build_run

    given = {k.removeprefix("knob_"): v for k, v in vars(args).items() if k.startswith("knob_") and v is not None}
    settings = {"dtype": args.dtype, "precision": args.precision, "quant": args.quant, "batch_size": args.batch_size,
                "seq_len": _seq_len(args.seq_len, args.model), "grad_accum": args.grad_accum,
                "gradient_checkpointing": args.gradient_checkpointing, "optimizer": args.optimizer,
                "device": args.device or default_device(), "attention": args.attention,
                "gpus": getattr(args, "gpus", "1"), "nodes": getattr(args, "nodes", "1"),
                "strategy": getattr(args, "strategy", None), "offload": getattr(args, "offload", "none")}
    return build_run(args.model, args.method, given, settings, data=data, schedule=schedule, style="cli")


def _parse_run(args: argparse.Namespace):
    from .specs import load_model_spec

    run = run_from_args(args)
    return load_model_spec(run.model), get_method(run.method), run.knobs, run.settings


def _print_plan(d: dict[str, Any]) -> None:
    print(f"model   {d['model_label']}")
    print(f"method  {d['method']}  knobs {json.dumps(d['knobs'])}")
    print(f"params  {d['total_params']:,} total, {d['trainable_params']:,} trainable ({d['trainable_percent']:.4f}%)")
    if d.get("per_gpu"):
        s = d["settings"]
        nodes = f" on {s['nodes']} nodes" if s["nodes"] > 1 else ""
        offload = f", offload {s['offload']}" if s["offload"] != "none" else ""
        print(f"memory  per GPU ({d['world_size']} GPUs{nodes}, {s['strategy']}{offload})")
    print()
    width = max(len(c["name"]) for c in d["components"])
    for c in d["components"]:
        print(f"  {c['name']:<{width}}  {_human(c['bytes']):>11}   {c['formula']}")
    if d.get("activations_note"):
        print(f"  {'':<{width}}  {'':>11}   ! activations approximate: {d['activations_note']}")
    print()
    print(f"  {'peak':<{width}}  {_human(d['peak_bytes']):>11}   "
          + "persistent + max(backward, end_of_backward, step): " + ", ".join(f"{t['name']} {_human(t['bytes'])}" for t in d["peak_terms"]))
    print(f"  {'model state':<{width}}  {_human(d['model_state_bytes']):>11}   weights + trainable_weights + gradients + "
          f"optimizer = {d['model_state_bytes_per_param']:.2f} B per parameter ({d['settings']['precision']})")
    print(f"  {'inference':<{width}}  {_human(d['inference_bytes']):>11}   {d['inference_formula']}")
    print(f"  peak / inference = {d['peak_over_inference']:.2f}x"
          + ("  (inference on one GPU)" if d.get("per_gpu") else ""))
    if d.get("attention"):
        print(f"  attention: {d['attention']}")
    if d.get("host_bytes"):
        print(f"  {'host':<{width}}  {_human(d['host_bytes']):>11}   {d['host_formula']}")


def cmd_methods(args: argparse.Namespace) -> int:
    data = [m.describe() for m in METHODS.values()]
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for m in data:
        print(f"{m['name']:<10} {m['summary']}")
        for k in m["knobs"]:
            print(f"    {k['flag']:<24} default {k['default']!r:<14} {k['help']}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    spec, method, knobs, settings = _parse_run(args)
    result = plan(spec, method, knobs, settings).as_dict()
    print(json.dumps(result, indent=2)) if args.json else _print_plan(result)
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    """Components on one forward/backward of the widest padded micro-batch; the peak inside the
    worker's own Trainer step (``StepPeakCallback`` on every step), compared with the plan at
    the width of the step that peaked (see :mod:`workbench.measure`)."""
    import contextlib
    from dataclasses import replace

    from .measure import measure

    spec, method, knobs, settings = _parse_run(args)
    planned = plan(spec, method, knobs, settings)
    # the Trainer prints its logs and libraries imported on the way (deepspeed's logger, when
    # installed) print to stdout: keep it for the results
    with contextlib.redirect_stdout(sys.stderr):
        measured = measure(spec, method, knobs, settings, steps=max(2, args.steps))
    width = measured.device_peak.get("peak_width", settings.seq_len)
    planned_peak = plan(spec, method, knobs, replace(settings, seq_len=width)).peak_bytes
    result = measured.as_dict()
    result["planned"] = {t.name: t.bytes for t in planned.components}
    result["planned_peak_bytes"] = planned_peak
    result["planned_peak_seq_len"] = width
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from .training.cli import loss_text

    print(f"model {spec.label}  method {method.name}  losses {', '.join(loss_text(x) for x in measured.losses)}")
    print(f"  {'component':<18} {'planned bytes':>14} {'measured bytes':>14}  diff")
    for name, value in measured.components.items():
        p = result["planned"][name]
        diff = "exact" if p == value else f"{(p - value) / max(value, 1) * 100:+.2f}%"
        print(f"  {name:<18} {p:>14,} {value:>14,}  {diff}")
    measured_peak = measured.device_peak.get("peak_tensor_bytes") or measured.device_peak.get("max_memory_allocated")
    if measured_peak:
        diff = (planned_peak - measured_peak) / measured_peak * 100
        print(f"  {'step peak':<18} {planned_peak:>14,} {measured_peak:>14,}  {diff:+.2f}%  "
              f"(the worker's Trainer, step {measured.device_peak.get('peak_step')}, planned at its widest "
              f"micro-batch: {width} tokens)")
    for k, v in measured.device_peak.items():
        if k.endswith("_bytes") and isinstance(v, int):
            print(f"  {k:<18} {v:>14,} B  ({v / 2**30:.3f} GiB)")
        else:
            print(f"  {k:<18} {v:>14,}" if isinstance(v, int) else f"  {k:<18} {v}")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from .data import inspect, parse_mapping
    from .specs import default_model

    report = inspect(args.file, model=args.model or default_model(), format=args.format, mapping=parse_mapping(args.map),
                     cutoff=args.cutoff, train_on_prompt=args.train_on_prompt, val_fraction=args.val_fraction,
                     seed=args.seed, preview=args.preview, max_bytes=args.max_bytes).as_dict()
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    t = report["token_lengths"]
    print(f"file      {report['file']} ({report['file_type']}: {report['note']})")
    print(f"format    {report['format']} [{report['confidence']}] -- {report['why']}")
    print(f"columns   {', '.join(report['columns'])}")
    print(f"rows      {report['rows']:,} examples from {report['source_rows']:,} rows; "
          f"dropped {report['dropped']['count']:,}; exact duplicates {report['duplicates']:,}")
    for d in report["dropped"]["first"]:
        print(f"          dropped row {d['row']}: {d['reason']}")
    print(f"tokens    min {t['min']}  p50 {t['p50']}  p95 {t['p95']}  max {t['max']}  (total {t['total']:,}; "
          f"{report['loss_tokens_fraction']:.1%} carry loss)")
    print(f"cutoff    {report['cutoff']}: {report['truncated_fraction']:.2%} of examples truncated "
          f"({report['truncated_tokens_fraction']:.2%} of tokens); suggested {report['suggested_cutoff']}")
    s = report["split"]
    print(f"split     train {s['train']:,} / validation {s['validation']:,} (seed {s['seed']})")
    print(f"template  {report['template']}; loss on {'every token' if report['train_on_prompt'] else 'answers only'} "
          "(marked ⟦...⟧ below)")
    for p in report["preview"]:
        print(f"--- row {p['row']}: {p['tokens']} tokens, {p['loss_tokens']} with loss")
        print(p["marked"])
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import TABLE_HEADERS, evaluate_runs, table_rows

    if args.limit is not None and args.limit < 1:
        raise WorkbenchError(f"--limit: must be at least 1, got {args.limit}")
    report = evaluate_runs(args.runs, args.data, args.limit)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"{report['model']} on {report['prompts']} prompts of {report['data']}; {report['decoding']}")
    rows = [TABLE_HEADERS] + [["-" if x is None else str(x) for x in row] for row in table_rows(report["results"])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADERS))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    for r in report["results"]:
        for sample in r["samples"][:2]:
            print(f"\n[{r['contender']}] row {sample['row']}: {sample['answer']!r}\n  reference: {sample['reference']!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description="PEFT Workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("methods", help="list the fine-tuning methods and their knobs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("plan", help="predicted memory of training, per component (per GPU with --gpus)")
    _add_run_flags(p)
    add_distributed_flags(p)
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("data", help="datasets: inspect a file as the model will see it")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    d = data_sub.add_parser("inspect", help="detect the format, render, tokenize and report")
    d.add_argument("file")
    d.add_argument("--model", default=None, help="whose tokenizer and chat template to use (default: "
                                                 "SmolLM2-135M-Instruct where installed, else tiny)")
    d.add_argument("--format", default=None, help="override the detected format")
    d.add_argument("--map", default=None, help="column mapping, e.g. prompt=question,response=answer,system=sys")
    d.add_argument("--cutoff", type=int, default=None, help="truncation length in tokens (default: suggested)")
    d.add_argument("--train-on-prompt", action="store_true", help="put loss on every token, not only answers")
    d.add_argument("--val-fraction", type=float, default=0.0, help="share of examples held out for validation")
    d.add_argument("--seed", type=int, default=42, help="seed of the train/validation split")
    d.add_argument("--preview", type=int, default=3, help="how many examples to show")
    d.add_argument("--max-bytes", type=int, default=None, help="size limit (default 1 GiB)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_data_inspect)
    from .training.cli import add_commands

    add_commands(sub, _add_run_flags, run_from_args)
    p = sub.add_parser("eval", help="score the base model and the runs' adapters on held-out prompts")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids (sessions/<id>), all on one base model")
    p.add_argument("--data", default=None, help="held-out file (default: <dataset>_heldout beside the run's "
                                                "file, else the run's validation split)")
    p.add_argument("--limit", type=int, default=None, help="at most N prompts (default all, at most 500)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("measure", help="run real training steps on CPU and measure the same components")
    _add_run_flags(p)
    p.add_argument("--steps", type=int, default=2)
    p.set_defaults(func=cmd_measure)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
