"""Plain functions behind the UI (no gradio here): inputs in, markdown/figures/rows out.
Errors a user can cause come back as a message, never as a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..charts import GIB, compare_bar, length_histogram
from ..compare import compare_methods, what_fits
from ..errors import WorkbenchError
from ..memory import TrainingSettings
from ..memory.activations import is_llama_like
from ..specs import load_model_spec


APPROXIMATE_ACTIVATIONS = ("⚠ **Activations approximate** for this architecture: a textbook formula (Korthikanti et "
                           "al. 2022), not the op-by-op count measured for Llama, Mistral, Qwen2/3, Phi-3/4 and Gemma 2/3 "
                           "blocks; weights, gradients, optimizer and logits are exact.  \n")


def approximate_activations(plan: dict) -> str:
    """The plan's "activations approximate" line ("" when they follow a measured walk)."""
    if plan.get("activations_exact", plan["activations_exact_architecture"]):
        return ""
    if not plan["activations_exact_architecture"]:
        return APPROXIMATE_ACTIVATIONS
    return (f"⚠ **Activations approximate**: {plan['activations_note']}; weights, gradients, optimizer and logits "
            "are exact.  \n")


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
    a card of :data:`workbench.gpus.CARDS` by name, or a number of GiB. A fit is the peak as
    nvidia-smi would show it (:func:`workbench.gpus.on_device`) <= the card's total bytes."""
    from ..gpus import RUNTIME_NOTE, gpu_card

    try:
        spec = model_spec(model)
        settings = settings_from(dtype, "auto", batch_size, seq_len, 1, gradient_checkpointing, optimizer, "cuda")
        card = gpu_card(gpu)
        rows = compare_methods(spec, settings)
        fits = what_fits(spec, card.peak_limit_bytes, settings)
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
    if not is_llama_like(spec):
        lesson += "\n\n" + APPROXIMATE_ACTIVATIONS.strip()
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


def sessions_rows(user: str | None = None) -> list[list[Any]]:
    from ..sessions import list_sessions

    return [[s.id, s.state, s.method, s.model, s.dataset, s.step, None if s.last_loss is None else round(s.last_loss, 4),
             None if not s.predicted_peak_bytes else round(s.predicted_peak_bytes / GIB, 3),
             None if not s.measured_peak_bytes else round(s.measured_peak_bytes / GIB, 3),
             s.measured_peak_source if s.measured_peak_bytes else None,
             None if s.plan_error_percent is None else f"{s.plan_error_percent:+.1f}%"]
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


def teach_view(model: str, dtype: str, batch_size: float, seq_len: float, gradient_checkpointing: bool,
               optimizer: str):
    """(summary, chart, per-method lines) of the teacher's view: every method's training peak over inference,
    against the quoted bands, with what dominates each (planned for a GPU, like Compare)."""
    from ..charts import teach_bar
    from ..teach import teach, teach_markdown

    try:
        spec = model_spec(model)
        settings = settings_from(dtype, "auto", batch_size, seq_len, 1, gradient_checkpointing, optimizer, "cuda")
        t = teach(spec, settings)
    except (WorkbenchError, ValueError) as exc:
        return f"**Cannot explain:** {exc}", None, ""
    text, details = teach_markdown(t)
    if not is_llama_like(spec):
        text += "\n\n" + APPROXIMATE_ACTIVATIONS.strip()
    return text, teach_bar(t), details
