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
    are kept (the page holds one widget per knob name across all methods). A knob of None
    is not given (the method's default, for API callers); an empty field (``""``) is an
    error naming the knob, as is every number out of its range: the message comes from
    :func:`workbench.runspec.build_run`, so the page, the API and the CLI say the same."""
    from ..methods import get_method
    from ..runspec import build_run

    own = {k.name for k in get_method(method).knobs}
    knobs = {n: v for n, v in zip(knob_names, knob_values) if n in own and v is not None}
    settings = _settings_dict(dtype, quant, batch_size, seq_len, grad_accum, gradient_checkpointing, optimizer, device,
                              **{k: v for k, v in distributed.items() if v not in (None, "")})
    return build_run(model, method, knobs, settings, data=data, schedule=schedule, untrusted_model_name=True)


def compare_view(model: str, dtype: str, batch_size: float, seq_len: float, gradient_checkpointing: bool,
                 optimizer: str, gpu: str | float):
    """(summary, chart, method table, what-fits table) for one model and settings; ``gpu``:
    a card of :data:`workbench.gpus.CARDS` by name, or a number of GiB. A fit is peak bytes
    <= the card's total bytes (nvidia-smi's memory.total)."""
    from ..gpus import RUNTIME_NOTE, gpu_card

    try:
        spec = model_spec(model)
        settings = settings_from(dtype, "auto", batch_size, seq_len, 1, gradient_checkpointing, optimizer, "cuda")
        card = gpu_card(gpu)
        rows = compare_methods(spec, settings)
        fits = what_fits(spec, card.total_bytes, settings)
    except (WorkbenchError, ValueError) as exc:
        return f"**Cannot compare:** {exc}", None, [], []
    table = [[r["method"], f"{r['trainable_params']:,}", f"{r['trainable_percent']:.3f}",
              round(r["peak_bytes"] / GIB, 2), "✓ fits" if card.fits(r["peak_bytes"]) else "✗ too big",
              f"{r['peak_over_inference']:.2f}x", round(r["adapter_file_bytes"] / 2**20, 1)]
             if "error" not in r else [r["method"], "-", "-", "-", "-", "-", r["error"]] for r in rows]
    fit_rows = [[f["method"], f["quant"], f["batch_size"], "on" if f["gradient_checkpointing"] else "off",
                 round(f["peak_bytes"] / GIB, 2), f["relative_speed"], f["reason"]] for f in fits]
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
        f"**{len(fits)} methods fit one {card.label}** (fastest configuration of each, by FLOPs per token). "
        if fits else f"**Nothing fits one {card.label}** at these settings: try a shorter sequence or a smaller "
        "model. ") + RUNTIME_NOTE
    return summary, compare_bar(rows, f"Predicted memory per method ({spec.label})"), table, fit_rows


def report_view(report: dict[str, Any], cutoff_is_sequence_length: bool = True) -> tuple[str, str, Any, list[list[Any]]]:
    """(summary markdown, preview html, histogram, dropped rows) of a dataset report. Its
    cutoff is the run's sequence length -- or, with ``cutoff_is_sequence_length`` False (the
    field holds no valid length), the suggested cutoff standing in, and said so."""
    from ..data.report import COVERAGE, ROUND_CUTOFFS

    t = report["token_lengths"]
    cut, suggested = report["cutoff"], report["suggested_cutoff"]
    in_force = (f"**Sequence length {cut}** (the run's cutoff, Model & method tab)" if cutoff_is_sequence_length
                else f"**Counted at the suggested cutoff {cut}**")
    rule = (f"the smallest of {', '.join(map(str, ROUND_CUTOFFS[:4]))}, ... tokens that keeps {COVERAGE:.0%} of the "
            f"examples whole and {COVERAGE:.0%} of the tokens")
    summary = (
        f"**{report['file']}** -- {report['note']}  \n"
        f"Format **{report['format']}** ({report['confidence']}): {report['why']}  \n"
        f"**{report['rows']:,}** examples from {report['source_rows']:,} rows; {report['dropped']['count']} dropped; "
        f"{report['duplicates']} exact duplicates.  \n"
        f"Tokens: min {t['min']}, median {t['p50']}, p95 {t['p95']}, max {t['max']}; "
        f"{report['loss_tokens_fraction']:.0%} of tokens carry loss.  \n"
        f"{in_force}: {report['truncated_fraction']:.1%} of examples truncated "
        f"({report['truncated_tokens_fraction']:.1%} of tokens). Suggested cutoff for this dataset: **{suggested}** "
        f"({rule}).  \n"
        f"Split: {report['split']['train']} train / {report['split']['validation']} validation."
    )
    html = PREVIEW_LEGEND + "".join(_preview_html(p) for p in report["preview"])
    dropped = [[d["row"], d["reason"]] for d in report["dropped"]["first"]]
    return summary, html, length_histogram(
        report, "sequence length" if cutoff_is_sequence_length else "suggested cutoff"), dropped


LOSS_STYLE = "background:#c6f6c6;text-decoration:underline;text-decoration-thickness:2px"  # not colour alone
PREVIEW_LEGEND = (f'<p style="margin:4px 0">What the model sees: <span style="{LOSS_STYLE}">green, underlined '
                  'text</span> carries loss (the model learns to write it); <span style="color:#666">grey text'
                  '</span> is context without loss.</p>')


def _preview_html(p: dict[str, Any]) -> str:
    import html

    spans = "".join(
        f'<span style="{LOSS_STYLE}" title="carries loss">{html.escape(s["text"])}</span>' if s["loss"]
        else f'<span style="color:#666">{html.escape(s["text"])}</span>' for s in p["segments"])
    return (f'<div style="margin:6px 0"><b>row {p["row"]}</b>: {p["tokens"]} tokens, {p["loss_tokens"]} with loss'
            f'<pre style="white-space:pre-wrap;border:1px solid #ddd;padding:6px">{spans}</pre></div>')


def run_view(session_id: str | None, user: str | None = None):
    """(status markdown, progress line, memory chart, curves) of a run, from its files; only
    ``user``'s runs when the server has sign-in."""
    return run_view_and_state(session_id, user)[0]


def run_view_and_state(session_id: str | None, user: str | None = None):
    """(the four parts of :func:`run_view`, the run's state or None when there is no run of
    ``user`` by that id): the Train tab enables Cancel only while its run is active."""
    from ..sessions import check_access, info

    if not session_id:
        return ("No run yet.", "", None, None), None
    try:
        folder = check_access(session_id, user)
        key = (session_id, *_stamp(folder / "events.jsonl"), *_stamp(folder / "plan_effective.json"))
        with _VIEW_LOCK:  # nothing new since the last poll: many tabs poll the same run, the worker keeps the CPU
            hit = _VIEWS.get(key)
            if hit and hit[1] > time.monotonic():
                return hit[0]
        s = info(session_id)  # also notices a vanished worker (interrupted)
    except WorkbenchError as exc:
        return (f"**{exc}**", "", None, None), None
    view = (_run_view(session_id, folder, s), s.state)
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
            lines.append(f"Predicted peak for the batches this data forms: {recorded['effective_peak_bytes'] / GIB:.3f} GiB "
                         f"(shown plan {recorded['peak_bytes'] / GIB:.3f} GiB at sequence length {recorded['seq_len']}), "
                         f"because {recorded['reason']}")
    probe = next((e for e in events if e["kind"] in ("probe", "step_check")), None)
    if probe:
        what = (f"Probe (step {probe['step']}, the longest examples)" if probe["kind"] == "probe"
                else f"Step {probe['step']}")
        limit = f"; memory limit {probe['limit_bytes'] / GIB:.2f} GiB {'✓ fits' if probe['fits'] else '✗ over'}" \
            if probe.get("limit_bytes") else ""
        lines.append(f"{what}: measured {probe['measured_bytes'] / GIB:.3f} GiB of {probe['quantity']} vs predicted "
                     f"peak {probe['predicted_bytes'] / GIB:.3f} GiB ({probe['error_percent']:+.1f}%){limit}")
    if s.predicted_peak_bytes and s.measured_peak_bytes:
        lines.append(f"Predicted peak {s.predicted_peak_bytes / GIB:.3f} GiB; measured step peak "
                     f"{s.measured_peak_bytes / GIB:.3f} GiB ({s.measured_peak_source}): prediction error "
                     f"**{s.prediction_error_percent:+.1f}%**")
    if s.state in ("failed", "interrupted"):
        lines.append(failure_paragraph(s.state, last) + log_tail_details(folder))
    elif s.state == "cancelled" and last.get("reason"):
        lines.append(f"Cancelled: {last['reason']}.")
    if s.final_adapter:
        lines.append(f"adapter: `{s.final_adapter}`")
    return "  \n".join(lines), progress_line(session_id, s.state, events), live_memory(memory, plan, steps), training_curves(logs)


def sessions_rows(user: str | None = None) -> list[list[Any]]:
    from ..sessions import list_sessions

    return [[s.id, s.state, s.method, s.model, s.dataset, s.step, None if s.last_loss is None else round(s.last_loss, 4),
             None if not s.predicted_peak_bytes else round(s.predicted_peak_bytes / GIB, 3),
             None if not s.measured_peak_bytes else round(s.measured_peak_bytes / GIB, 3),
             s.measured_peak_source if s.measured_peak_bytes else None,
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


def human_duration(seconds: float) -> str:
    """A duration as people say it: "45 s", "1 min 12 s", "2 h 3 min" (under a second: "under 1 s")."""
    seconds = max(0, int(round(float(seconds))))
    if seconds < 1:
        return "under 1 s"
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min" if rest // 60 else f"{hours} h"


def progress_line(session_id: str, state: str, events: list[dict[str, Any]]) -> str:
    """One line of where a run is: "step 27 / 60 · epoch 0.45 · 1 min 12 s left" while it
    trains; its place in the queue while it waits (no time estimate then); "done in 3 min 4 s"
    when it completed; where it stopped, without any estimate, when it failed or was cancelled."""
    logs = [e for e in events if e.get("kind") == "log"]
    statuses = [e for e in events if e.get("kind") == "status"]
    last = logs[-1] if logs else None
    where = ""
    if last:
        epoch = f" · epoch {last['epoch']:.2f}" if last.get("epoch") is not None else ""
        where = f"step {last['step']} / {last['max_steps']}{epoch}"
    if state == "queued":
        from ..training.queue import describe

        try:
            line = describe(session_id)
        except (WorkbenchError, OSError):
            line = None
        return (line or "queued: waiting for its turn") + "; no time estimate until it starts"
    if state == "loading":
        return "loading the model and the data" + (f" (resuming after {where})" if where else "")
    if state == "running":
        if not last:
            return "training started; the time left is known after the first step"
        eta = last.get("eta_seconds")
        return where + (f" · {human_duration(eta)} left" if eta is not None else "")
    if state == "saving":
        return (where + " · " if where else "") + "saving the adapter"
    if state == "completed":
        begun = next((e["time"] for e in statuses if e.get("status") not in ("queued",)), None)
        took = f"done in {human_duration(statuses[-1]['time'] - begun)}" if begun is not None else "done"
        return took + (f" · {last['step']} / {last['max_steps']} steps" if last else "")
    return f"{state} at {where}" if where else f"{state} before the first step"


#: what a failure's error means, by the kind of error the worker reported (its first word)
_ERROR_KINDS = {
    "DataFileError": ("the dataset could not be used", "check the file on the Data tab (its format and column "
                      "mapping), fix or replace it, and start again"),
    "TemplateError": ("the examples could not be put into the model's chat format", "pick another format on the "
                      "Data tab, or map the columns yourself, and start again"),
    "SettingsError": ("a setting of the run cannot be used", "change it on the Model & method or Train tab and "
                      "start again"),
    "UnknownModelError": ("the model could not be found", "pick a bundled model on the Model & method tab"),
    "ConfigError": ("the model could not be read", "pick a bundled model on the Model & method tab"),
}


def failure_paragraph(state: str, last: dict[str, Any]) -> str:
    """One paragraph a non-engineer can act on: what happened and what to try, from the run's
    final status event (its ``reason``, ``message``/``error`` and ``suggestions``). The
    worker's log is not part of it (see :func:`log_tail_details`)."""
    import re

    reason = last.get("reason") or "error"
    told = str(last.get("message") or last.get("error") or "").strip()
    if state == "interrupted":
        return (f"**Interrupted**: the training process stopped before it finished ({reason}). Its steps up to the "
                "newest complete checkpoint are kept: pick the run on the Runs tab and press **Resume**, or start "
                "it again here.")
    if reason == "oom":
        tips = last.get("suggestions") or []
        head = ("**Failed (oom)**: the run ran out of memory -- training needed more memory than it had"
                + (f" ({told})" if told else "") + ".")
        if not tips:
            return head + (" What to try: a smaller batch size or sequence length, gradient checkpointing on, or a "
                           "method that trains fewer weights (Model & method tab); the plan there shows what fits.")
        return head + " What to try -- each of these is planned to fit the memory this run had:  \n" + \
            "  \n".join(f"- {tip}" for tip in tips)
    if reason == "disk_full":
        return (f"**Failed (disk full)**: the server's disk is full, so the run could not be saved"
                + (f" ({told})" if told else "") + ". What to try: delete runs you no longer need on the Runs "
                "tab, then resume this one there.")
    kind, _, text = told.partition(": ")
    if not re.fullmatch(r"[A-Za-z_]\w*", kind or "-"):
        kind, text = "", told
    if kind in _ERROR_KINDS:
        what, tip = _ERROR_KINDS[kind]
        return f"**Failed ({reason})**: {what}: {text}. What to try: {tip}."
    if "exited with code" in told or "could not be started" in told:
        return (f"**Failed ({reason})**: the training process ended unexpectedly ({told}). What to try: start the "
                "run again; if it fails the same way, give the details below to whoever runs this server.")
    return (f"**Failed ({reason})**: the training stopped with an error"
            + (f": {text or told}" if told else "") + ". What to try: start it again; if it fails the same way, "
            "check the dataset (Data tab) and the settings, or give the details below to whoever runs this server.")


LOG_TAIL_LINES = 30
LOG_TAIL_BYTES = 16 * 2**10


def log_tail_details(folder: Path) -> str:
    """The end of the run's ``worker.log`` as a collapsed HTML "Details (log tail)" block,
    escaped, for whoever wants to look closer. Tracebacks are left out (their exception line
    stays) and absolute paths are cut to their last part, like every failure message: the
    whole log stays in the run's folder on the server. Empty when there is no log."""
    import html

    from ..training.worker import _PATH

    try:
        with open(folder / "worker.log", "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - LOG_TAIL_BYTES))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    kept, in_traceback = [], False
    for line in text.splitlines()[1:] if len(text) >= LOG_TAIL_BYTES else text.splitlines():
        line = line.rsplit("\r", 1)[-1].rstrip()  # a progress bar redrawn in place: its last state
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
            continue
        if in_traceback and (line.startswith((" ", "\t")) or not line):
            continue
        in_traceback = False
        if line and not line.startswith(("During handling of the above exception", "The above exception was")):
            kept.append(_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", line))
    if not kept:
        return ""
    return ("\n\n<details><summary>Details (log tail)</summary><pre>" + html.escape("\n".join(kept[-LOG_TAIL_LINES:]))
            + "</pre></details>\n")
