"""The training worker: ``python -m workbench.training.worker sessions/<id>/job.json [--resume]``.

A recipe, top to bottom: wait for the device -> set-up (tokenizer, model with the method's
quantization and peft wrap, dataset) -> train with ``transformers.Trainer`` -> save ->
clean up. Everything it does goes to ``events.jsonl``; the web server only reads that file.
It never imports gradio.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import traceback
from pathlib import Path

from .events import EventWriter

LOG_TAIL_LINES = 20


def main(argv: list[str]) -> int:
    job_path = Path(argv[0]).resolve()
    resume = "--resume" in argv[1:]
    session = job_path.parent
    events = EventWriter(session / "events.jsonl")
    (session / "worker.pid").write_text(str(os.getpid()))
    sampler = lock = None
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        from .checkpoints import complete_checkpoints, save_atomically
        from .job import TrainJob
        from .telemetry import MemorySampler
        from .turns import wait_for_turn

        job = TrainJob.load(job_path)
        settings = job.training_settings
        lock = wait_for_turn(session, settings.device)  # stays "queued" until then
        events.status("loading", pid=os.getpid(), resume=resume)
        sampler = MemorySampler(events, "cuda" if settings.device == "cuda" else "cpu").start()
        trainer, cancel = setup(job, session, events, sampler)
        signal.signal(signal.SIGTERM, lambda *_: cancel.request())  # graceful stop on SIGTERM
        checkpoint = complete_checkpoints(session)[-1] if resume and complete_checkpoints(session) else None
        if resume:
            events.emit("resume", checkpoint=str(checkpoint) if checkpoint else None)
        _cap_memory()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if cancel.requested:
            events.status("cancelled", reason="cancelled by the user", step=trainer.state.global_step)
            return 0
        events.status("saving")
        final = save_atomically(session / "final", lambda tmp: _save(trainer, job, tmp))
        events.status("completed", adapter=str(final), step=trainer.state.global_step)
        return 0
    except BaseException as exc:  # every failure ends as an event; the UI never sees a traceback
        _fail(exc, events, session, sampler, job_path)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if sampler is not None:
            sampler.stop()
        events.close()
        if lock is not None:
            lock.close()


def setup(job, session: Path, events: EventWriter, sampler):
    """Tokenizer, model, data and the Trainer, as the job says."""
    import torch
    from transformers import Trainer, TrainingArguments

    from ..data import load_tokenizer, training_data
    from ..loading import load_for_training, weights_dir
    from ..methods import get_method
    from ..optimizers import build_optimizer
    from ..specs import load_model_spec
    from .callbacks import CancelCallback, CheckpointPublisher, EventCallback, TokenCounter
    from .collate import FlatCollator, PadCollator
    from .faults import FaultCallback, at_setup
    from .telemetry import TensorAccountCallback

    spec = load_model_spec(job.model)
    settings = job.training_settings
    torch.manual_seed(job.schedule.seed)
    tokenizer = load_tokenizer(str(weights_dir(spec)) if spec.source != "builtin" else job.model)
    report, train, val = training_data(job.data.path, tokenizer, job.data.format, job.data.mapping, job.data.cutoff,
                                       job.data.train_on_prompt, job.data.val_fraction, job.data.seed)
    events.emit("data", rows=report.rows, train=len(train), validation=len(val) if val else 0, cutoff=report.cutoff,
                format=report.format, dropped=report.dropped["count"])
    _plan_for_data(job, spec, min(report.cutoff, report.token_lengths["max"]), session, events)
    model = load_for_training(spec, get_method(job.method), job.knobs, settings)
    at_setup()
    optimizer = build_optimizer(model.parameters(), settings.optimizer, lr=job.schedule.learning_rate)
    s = job.schedule
    args = TrainingArguments(
        output_dir=str(session / ".staging"), per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=s.epochs, max_steps=s.max_steps, learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler, warmup_steps=s.warmup_ratio, logging_steps=s.logging_steps,
        save_strategy="steps" if s.save_steps else "no", save_steps=s.save_steps or 500,
        eval_strategy=("steps" if s.eval_steps else "epoch") if val else "no",
        eval_steps=s.eval_steps or None, seed=s.seed, use_cpu=settings.device == "cpu", report_to=[],
        disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if s.batching == "group_by_length" else "random",
    )
    counter = TokenCounter()
    cancel = CancelCallback(session / "cancel")
    if s.batching == "padding_free":
        method = get_method(job.method)
        if method.extra_tokens(job.knobs) or method.extra_kv_positions(job.knobs):
            from ..errors import SettingsError

            raise SettingsError(f"batching=padding_free cannot be used with {job.method}: its virtual tokens "
                                "are added per row, and a flattened batch is one row; use pad or group_by_length")
        collator = FlatCollator(counter)
    else:
        collator = PadCollator(tokenizer.pad_token_id or 0, counter)
    trainer = Trainer(
        model=model, args=args, train_dataset=train, eval_dataset=val, processing_class=tokenizer,
        data_collator=collator, optimizers=(optimizer, None),
        callbacks=[EventCallback(events, counter), cancel, FaultCallback(),
                   CheckpointPublisher(session / "checkpoints", s.keep_checkpoints),
                   TensorAccountCallback(sampler, model, optimizer)],
    )
    return trainer, cancel


def _plan_for_data(job, spec, longest: int, session: Path, events: EventWriter) -> None:
    """``plan_effective.json``: the plan again with the sequence length the data really has
    (batches are padded to their longest example, at most the cutoff), beside the plan made
    before the run from the settings."""
    import json
    from dataclasses import replace

    from ..memory import plan
    from ..methods import get_method

    effective = plan(spec, get_method(job.method), job.knobs, replace(job.training_settings, seq_len=longest))
    (session / "plan_effective.json").write_text(json.dumps(effective.as_dict(), indent=2))
    events.emit("plan", seq_len=longest, peak_bytes=effective.peak_bytes)


def _save(trainer, job, folder: Path) -> None:
    """peft methods: the adapter (``adapter_config.json`` + ``adapter_model.safetensors``);
    full: the whole model; freeze/BitFit: only the trained tensors. Always safetensors, the
    tokenizer, and ``workbench_meta.json`` (what, from which data, how far, a logits probe)."""
    from .artifacts import save_artifacts
    from .faults import before_final_save

    before_final_save()
    save_artifacts(trainer, job, folder)


def _cap_memory() -> None:
    """``WORKBENCH_WORKER_MAX_MEMORY`` (bytes): the most address space training may add on
    top of what set-up used -- an operator's guard for shared machines (host OOM becomes a
    clean ``oom`` failure instead of the kernel's OOM killer)."""
    extra = os.environ.get("WORKBENCH_WORKER_MAX_MEMORY", "")
    if extra.isdigit():
        import resource

        import psutil

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (psutil.Process().memory_info().vms + int(extra), hard))


def _uncap_memory() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in text or \
        "can't allocate memory" in text


def _fail(exc: BaseException, events: EventWriter, session: Path, sampler, job_path: Path) -> None:
    _uncap_memory()  # reporting must not fail for the same reason as training
    traceback.print_exc()
    sys.stderr.flush()
    if isinstance(exc, KeyboardInterrupt):
        events.status("cancelled", reason="interrupted by a signal")
        return
    peak = sampler.peak if sampler is not None else None
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        from .checkpoints import newest_complete

        kept = newest_complete(session)
        events.status("failed", reason="disk_full", peak_bytes=peak,
                      message="no space left on device while saving; free space and resume"
                              + (f" (the complete checkpoint {kept.name} is still usable)" if kept else ""))
        return
    if _is_oom(exc):
        events.status("failed", reason="oom", peak_bytes=peak, message=str(exc)[:500],
                      suggestions=_suggestions(job_path))
        return
    log = session / "worker.log"
    tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if log.exists() else [repr(exc)]
    events.status("failed", reason="error", error=f"{type(exc).__name__}: {str(exc)[:500]}", log_tail=tail,
                  peak_bytes=peak)


def _suggestions(job_path: Path) -> list[str]:
    try:
        from ..specs import load_model_spec
        from .advice import oom_suggestions
        from .job import TrainJob

        job = TrainJob.load(job_path)
        return oom_suggestions(load_model_spec(job.model), job.method, job.knobs, job.training_settings)
    except Exception as exc:  # advice must never hide the failure itself
        return [f"(no suggestions: {type(exc).__name__})"]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
