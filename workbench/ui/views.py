"""Plain functions behind the UI (no gradio here): inputs in, markdown/figures/rows out.
Errors a user can cause come back as a message, never as a traceback."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..charts import GIB, compare_bar, length_histogram, live_memory, training_curves
from ..compare import compare_methods, what_fits
from ..errors import WorkbenchError
from ..memory import TrainingSettings
from ..specs import load_model_spec

MAX_POINTS = 1500
LIVE_VIEW_SECONDS = 1.0  # how long a live run's view may be served again while its files are unchanged


def settings_from(dtype: str, quant: str, batch_size: float, seq_len: float, grad_accum: float,
                  gradient_checkpointing: bool, optimizer: str, device: str) -> TrainingSettings:
    """Settings from the form, through the one run builder (every message names its field)."""
    from ..runspec import build_run

    return build_run("tiny", "lora", None, _settings_dict(dtype, quant, batch_size, seq_len, grad_accum,
                                                         gradient_checkpointing, optimizer, device)).settings


def _settings_dict(dtype, quant, batch_size, seq_len, grad_accum, gradient_checkpointing, optimizer, device,
                   **extra) -> dict[str, Any]:
    return {"dtype": dtype, "quant": quant, "batch_size": batch_size, "seq_len": seq_len, "grad_accum": grad_accum,
            "gradient_checkpointing": gradient_checkpointing, "optimizer": optimizer, "device": device, **extra}


def run_from_inputs(model: str, method: str, dtype: str, quant: str, batch_size: float, seq_len: float,
                    grad_accum: float, gradient_checkpointing: bool, optimizer: str, device: str,
                    knob_values, knob_names, data: dict[str, Any] | None = None, schedule: dict[str, Any] | None = None,
                    **distributed):
    """The RunSpec of what the page shows: the same :func:`workbench.runspec.build_run` the
    API and the CLI use. ``knob_values`` follow ``knob_names``; only the method's own knobs
    are kept (the page holds one widget per knob name across all methods)."""
    from ..methods import get_method
    from ..runspec import build_run

    own = {k.name for k in get_method(method).knobs}
    knobs = {n: v for n, v in zip(knob_names, knob_values) if n in own and v is not None}
    settings = _settings_dict(dtype, quant, batch_size, seq_len, grad_accum, gradient_checkpointing, optimizer, device,
                              **{k: v for k, v in distributed.items() if v not in (None, "")})
    return build_run(model, method, knobs, settings, data=data, schedule=schedule, untrusted_model_name=True)


def compare_view(model: str, dtype: str, batch_size: float, seq_len: float, gradient_checkpointing: bool,
                 optimizer: str, gpu_gb: float):
    """(summary, chart, method table, what-fits table) for one model and settings."""
    try:
        spec = model_spec(model)
        settings = settings_from(dtype, "auto", batch_size, seq_len, 1, gradient_checkpointing, optimizer, "cuda")
        rows = compare_methods(spec, settings)
        fits = what_fits(spec, int(float(gpu_gb) * 1e9), settings)
    except (WorkbenchError, ValueError) as exc:
        return f"**Cannot compare:** {exc}", None, [], []
    table = [[r["method"], f"{r['trainable_params']:,}", f"{r['trainable_percent']:.3f}",
              round(r["peak_bytes"] / GIB, 2), f"{r['peak_over_inference']:.2f}x",
              round(r["adapter_file_bytes"] / 2**20, 1)] if "error" not in r else [r["method"], "-", "-", "-", "-", r["error"]]
             for r in rows]
    fit_rows = [[f["method"], f["quant"], f["batch_size"], "on" if f["gradient_checkpointing"] else "off",
                 round(f["peak_bytes"] / 1e9, 2), f["relative_speed"], f["reason"]] for f in fits]
    ok = [r for r in rows if "error" not in r]
    full = next((r for r in ok if r["method"] == "full"), None)
    lora = next((r for r in ok if r["method"] == "lora"), None)
    lesson = ""
    if full and lora:
        def split(r):
            c = r["components"]
            states = (c["gradients"] + c["optimizer"]) / GIB
            return f"weights {c['weights'] / GIB:.2f} GiB, gradients + optimizer {states:.2f} GiB, " \
                   f"activations + logits {(c['activations'] + c['logits']) / GIB:.2f} GiB"
        lesson = (f"Full fine-tuning needs **{full['peak_over_inference']:.1f}x** the memory of inference ({split(full)}); "
                  f"LoRA **{lora['peak_over_inference']:.1f}x** ({split(lora)}). LoRA keeps gradients and optimizer "
                  "states only for its adapters; what remains is the activations, which grow with batch x sequence.")
    summary = f"### Every method on {spec.label}\n{lesson}\n\n" + (
        f"**{len(fits)} methods fit {gpu_gb:g} GB** (fastest configuration of each, by FLOPs per token)."
        if fits else f"**Nothing fits {gpu_gb:g} GB** at these settings: try a shorter sequence or a smaller model.")
    return summary, compare_bar(rows, f"Predicted memory per method ({spec.label})"), table, fit_rows


def report_view(report: dict[str, Any]) -> tuple[str, str, Any, list[list[Any]]]:
    """(summary markdown, preview html, histogram, dropped rows) of a dataset report."""
    t = report["token_lengths"]
    summary = (
        f"**{report['file']}** -- {report['note']}  \n"
        f"Format **{report['format']}** ({report['confidence']}): {report['why']}  \n"
        f"**{report['rows']:,}** examples from {report['source_rows']:,} rows; {report['dropped']['count']} dropped; "
        f"{report['duplicates']} exact duplicates.  \n"
        f"Tokens: min {t['min']}, median {t['p50']}, p95 {t['p95']}, max {t['max']}; "
        f"{report['loss_tokens_fraction']:.0%} of tokens carry loss.  \n"
        f"Cutoff {report['cutoff']}: {report['truncated_fraction']:.1%} of examples truncated; suggested "
        f"{report['suggested_cutoff']}. Split: {report['split']['train']} train / {report['split']['validation']} validation."
    )
    html = "".join(_preview_html(p) for p in report["preview"])
    dropped = [[d["row"], d["reason"]] for d in report["dropped"]["first"]]
    return summary, html, length_histogram(report), dropped


def _preview_html(p: dict[str, Any]) -> str:
    import html

    spans = "".join(
        f'<span style="background:#c6f6c6" title="carries loss">{html.escape(s["text"])}</span>' if s["loss"]
        else f'<span style="color:#666">{html.escape(s["text"])}</span>' for s in p["segments"])
    return (f'<div style="margin:6px 0"><b>row {p["row"]}</b>: {p["tokens"]} tokens, {p["loss_tokens"]} with loss'
            f'<pre style="white-space:pre-wrap;border:1px solid #ddd;padding:6px">{spans}</pre></div>')


def run_view(session_id: str | None, user: str | None = None):
    """(status markdown, progress, memory chart, curves) of a run, from its files; only
    ``user``'s runs when the server has sign-in."""
    from ..sessions import check_access, info

    if not session_id:
        return "No run yet.", 0.0, None, None
    try:
        folder = check_access(session_id, user)
        key = (session_id, *_stamp(folder / "events.jsonl"), *_stamp(folder / "plan_effective.json"))
        with _VIEW_LOCK:  # nothing new since the last poll: many tabs poll the same run, the worker keeps the CPU
            hit = _VIEWS.get(key)
            if hit and hit[1] > time.monotonic():
                return hit[0]
        s = info(session_id)  # also notices a vanished worker (interrupted)
    except WorkbenchError as exc:
        return f"**{exc}**", 0.0, None, None
    view = _run_view(session_id, folder, s)
    settled = s.state in ("completed", "failed", "cancelled", "interrupted")
    with _VIEW_LOCK:  # a finished run's view holds until its files change; a live one for a second
        _VIEWS[(session_id, *_stamp(folder / "events.jsonl"), *_stamp(folder / "plan_effective.json"))] = (
            view, float("inf") if settled else time.monotonic() + LIVE_VIEW_SECONDS)
        while len(_VIEWS) > 64:
            _VIEWS.popitem(last=False)
    return view


_VIEWS: OrderedDict = OrderedDict()
_VIEW_LOCK = threading.Lock()


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _run_view(session_id: str, folder: Path, s):
    from ..sessions import predicted_plan
    from ..training.events import read_events

    events, _ = read_events(folder / "events.jsonl")
    memory = [e for e in events if e["kind"] == "memory"]
    if len(memory) > MAX_POINTS:
        memory = memory[:: len(memory) // MAX_POINTS + 1] + memory[-1:]
    steps = [e for e in events if e["kind"] == "step_memory"]
    logs = [e for e in events if e["kind"] == "log"]
    plan = predicted_plan(folder)
    last = next((e for e in reversed(events) if e["kind"] == "status"), {})
    lines = [f"### Run {s.id}: **{s.state}**", f"{s.method} on {s.model}, data {s.dataset}"]
    recorded = next((e for e in reversed(events) if e["kind"] == "plan"), None)
    if recorded:
        same = "the same plan as shown before the start ✓" if recorded.get("matches_shown") else \
            f"**another plan than the one shown**: {recorded.get('mismatch', '')}"
        lines.append(f"Plan `{recorded['fingerprint']}` recorded by the worker: {same}")
        if recorded.get("reason"):
            lines.append(f"Predicted for the batches this data forms: {recorded['effective_peak_bytes'] / GIB:.3f} GiB "
                         f"(shown plan {recorded['peak_bytes'] / GIB:.3f} GiB at sequence length {recorded['seq_len']}), "
                         f"because {recorded['reason']}")
    probe = next((e for e in events if e["kind"] in ("probe", "step_check")), None)
    if probe:
        what = (f"Probe (step {probe['step']}, the longest examples)" if probe["kind"] == "probe"
                else f"Step {probe['step']}")
        limit = f"; limit {probe['limit_bytes'] / GIB:.2f} GiB {'✓ fits' if probe['fits'] else '✗ over'}" \
            if probe.get("limit_bytes") else ""
        lines.append(f"{what}: measured {probe['measured_bytes'] / GIB:.3f} GiB of {probe['quantity']} vs predicted "
                     f"{probe['predicted_bytes'] / GIB:.3f} GiB ({probe['error_percent']:+.1f}%){limit}")
    if logs:
        e = logs[-1]
        lines.append(f"step {e['step']}/{e['max_steps']}, epoch {e['epoch']:.2f}, ETA {e['eta_seconds']} s")
    if s.predicted_peak_bytes and s.measured_peak_bytes:
        lines.append(f"Predicted peak {s.predicted_peak_bytes / GIB:.3f} GiB; measured step peak "
                     f"{s.measured_peak_bytes / GIB:.3f} GiB ({s.measured_peak_source}): prediction error "
                     f"**{s.prediction_error_percent:+.1f}%**")
    if last.get("status") == "failed":
        lines.append(f"**Failed ({last.get('reason')})**: {last.get('message') or last.get('error', '')}")
        lines += [f"- {x}" for x in last.get("suggestions", [])]
        if last.get("log_tail"):
            lines.append("```\n" + "\n".join(last["log_tail"][-8:]) + "\n```")
    if s.final_adapter:
        lines.append(f"adapter: `{s.final_adapter}`")
    progress = (logs[-1]["step"] / logs[-1]["max_steps"]) if logs and logs[-1]["max_steps"] else 0.0
    return "  \n".join(lines), progress, live_memory(memory, plan, steps), training_curves(logs)


def sessions_rows(user: str | None = None) -> list[list[Any]]:
    from ..sessions import list_sessions

    return [[s.id, s.state, s.method, s.model, s.dataset, s.step, None if s.last_loss is None else round(s.last_loss, 4),
             None if not s.predicted_peak_bytes else round(s.predicted_peak_bytes / GIB, 3),
             None if not s.measured_peak_bytes else round(s.measured_peak_bytes / GIB, 3),
             None if s.prediction_error_percent is None else f"{s.prediction_error_percent:+.1f}%"]
            for s in list_sessions(user)]


def user_of(request: Any) -> str | None:
    """The signed-in user of a gradio request (``None`` when the server has no ``--auth``)."""
    return getattr(request, "username", None) if request is not None else None


def model_spec(name: str):
    """The spec of a model named in the browser: the name is checked first (no URLs, no
    folders outside the model roots; see :mod:`workbench.safety`)."""
    from ..safety import check_model_name

    return load_model_spec(check_model_name(name))


def latest_active_run(user: str | None) -> str | None:
    """The newest run of ``user`` that is still queued or training: a reloaded page
    reattaches to it."""
    from ..sessions import list_sessions
    from ..training.events import FINAL

    return next((s.id for s in list_sessions(user) if s.state not in FINAL), None)


def safe_upload_name(path: str | None) -> str:
    return Path(path).name if path else ""
