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
    launched = "LOCAL_RANK" in os.environ  # a rank started by accelerate launch
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    main_rank = rank == 0
    events = EventWriter(session / "events.jsonl")
    if not launched:
        (session / "worker.pid").write_text(str(os.getpid()))  # the process group cancel ends
    sampler = turn = None
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        from .checkpoints import complete_checkpoints
        from .distributed import is_distributed
        from .job import TrainJob
        from .telemetry import MemorySampler
        from .turns import wait_for_turn

        job = TrainJob.load(job_path)
        settings = job.training_settings
        if is_distributed(settings) and not launched:
            return _supervise(job, session, events, resume)
        if not launched:
            turn = wait_for_turn(session, settings.device)  # stays "queued" until then
            if turn.gpus:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, turn.gpus))
            threads = _cpu_threads() if settings.device == "cpu" else None
            events.status("loading", pid=os.getpid(), resume=resume, cpu_threads=threads)
        elif settings.device == "cuda":
            import torch

            torch.cuda.set_device(local_rank)  # before the sampler touches CUDA: one context per GPU
        device = "cuda" if settings.device == "cuda" else "cpu"
        sampler = MemorySampler(events, device, rank=rank if launched else None, local_rank=local_rank).start()
        trainer, cancel = setup(job, session, events, sampler, main_rank)
        signal.signal(signal.SIGTERM, lambda *_: cancel.request())  # graceful stop on SIGTERM
        checkpoint = complete_checkpoints(session)[-1] if resume and complete_checkpoints(session) else None
        if resume and main_rank:
            events.emit("resume", checkpoint=str(checkpoint) if checkpoint else None)
        _cap_memory()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if cancel.requested:
            if main_rank:
                events.status("cancelled", reason="cancelled by the user", step=trainer.state.global_step)
            return 0
        if main_rank:
            events.status("saving")
        final = _save_final(trainer, job, session, main_rank, settings.strategy not in ("single", "ddp"))
        if main_rank:
            events.status("completed", adapter=str(final), step=trainer.state.global_step)
        return 0
    except BaseException as exc:  # every failure ends as an event; the UI never sees a traceback
        if main_rank:
            _fail(exc, events, session, sampler, job_path)
        else:
            traceback.print_exc()  # the supervisor reports a run whose rank died
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if sampler is not None:
            sampler.stop()
        events.close()
        if turn is not None:
            turn.close()


def _cpu_threads() -> int:
    """Compute threads of a CPU run: ``$WORKBENCH_WORKER_THREADS``, else every core but one.
    The spare core keeps the web server answering; and with every core busy, torch's
    OpenMP threads wait on each other whenever the server takes one (measured here: 2 threads
    on 2 cores ran 100x slower while 20 browser tabs polled; bench/concurrency.py)."""
    import torch

    configured = os.environ.get("WORKBENCH_WORKER_THREADS", "")
    threads = int(configured) if configured.isdigit() and int(configured) > 0 else max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(threads)
    return threads


def _supervise(job, session: Path, events: EventWriter, resume: bool) -> int:
    """A multi-process run: wait for the CPU or for ``gpus`` free GPUs, write the launch files,
    run ``accelerate launch`` as a child (argument list) on the granted GPUs, and report a
    run whose ranks died without saying why. SIGTERM becomes a cooperative cancel."""
    import subprocess

    from ..errors import SettingsError
    from ..sessions import last_status
    from .distributed import launch_command, write_launch_files
    from .events import FINAL
    from .turns import wait_for_turn

    settings = job.training_settings
    if settings.nodes > 1:
        raise SettingsError(f"a {settings.nodes}-node run is started by hand on every node with the generated config "
                            f"({session / 'launch_command.txt'}); the workbench starts runs on this machine only")
    turn = wait_for_turn(session, settings.device, count=settings.gpus if settings.device == "cuda" else 1)
    try:
        env = {**os.environ}
        if turn.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, turn.gpus))
        write_launch_files(session, settings, _layer_class(job.model))  # a fresh rendezvous port
        events.status("loading", pid=os.getpid(), resume=resume, world_size=settings.world_size, gpus=turn.gpus)
        child = subprocess.Popen(launch_command(session, resume), env=env, stdin=subprocess.DEVNULL)
        signal.signal(signal.SIGTERM, lambda *_: (session / "cancel").touch())
        code = child.wait()
    finally:
        turn.close()
    if last_status(session) not in FINAL:
        events.status("failed", reason="error", error=f"a training process exited with code {code}",
                      log_tail=_log_tail(session, []))
    return code


def _layer_class(model: str) -> str | None:
    """The decoder block class FSDP wraps (``_no_split_modules`` of the architecture)."""
    try:
        from ..specs import _meta_model, load_model_spec

        classes = getattr(_meta_model(load_model_spec(model).config), "_no_split_modules", None) or []
        return classes[0] if classes else None
    except Exception:  # only a default for the generated config; accelerate can infer it
        return None


def _save_final(trainer, job, session: Path, main_rank: bool, sharded: bool) -> Path | None:
    """Write ``final/`` completely, then publish it. Single/DDP: the main process saves. FSDP
    and DeepSpeed: every rank takes part in ``trainer.save_model`` (it gathers the sharded
    weights), then the main process adds the metadata and publishes."""
    import shutil

    from .checkpoints import save_atomically
    from .faults import before_final_save

    final = None
    if not sharded:
        if main_rank:
            final = save_atomically(session / "final", lambda tmp: _save(trainer, job, tmp))
    else:
        from .artifacts import save_artifacts

        gathered = session / ".final.gathered"
        if main_rank:
            shutil.rmtree(gathered, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        before_final_save()
        trainer.save_model(str(gathered))
        if main_rank:
            def move_in(tmp: Path) -> None:
                for f in gathered.iterdir():
                    shutil.move(str(f), tmp / f.name)
                save_artifacts(trainer, job, tmp, weights_written=True)

            final = save_atomically(session / "final", move_in)
            shutil.rmtree(gathered, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return final


def setup(job, session: Path, events: EventWriter, sampler, main_rank: bool = True):
    """Tokenizer, model, data and the Trainer, as the job says. In a multi-process run every
    rank builds the same; only the main rank writes events other than memory samples."""
    import torch
    from transformers import Trainer, TrainingArguments

    from ..data import load_tokenizer, training_data
    from ..loading import load_for_training, weights_dir
    from ..methods import get_method
    from ..optimizers import build_optimizer
    from ..specs import load_model_spec
    from .callbacks import CancelCallback, CheckpointPublisher, EventCallback, TokenCounter
    from .collate import FlatCollator, PadCollator
    from .distributed import TRAINER_OPTIM
    from .faults import FaultCallback, at_setup
    from .telemetry import TensorAccountCallback

    spec = load_model_spec(job.model)
    settings = job.training_settings
    tokenizer = load_tokenizer(str(weights_dir(spec)) if spec.source != "builtin" else job.model)
    report, train, val = training_data(job.data.path, tokenizer, job.data.format, job.data.mapping, job.data.cutoff,
                                       job.data.train_on_prompt, job.data.val_fraction, job.data.seed)
    if main_rank:
        events.emit("data", rows=report.rows, train=len(train), validation=len(val) if val else 0,
                    cutoff=report.cutoff, format=report.format, dropped=report.dropped["count"])
        _plan_for_data(job, spec, min(report.cutoff, report.token_lengths["max"]), session, events)
    torch.manual_seed(job.schedule.seed)  # right before the adapters are initialised: nothing above may move it
    model = load_for_training(spec, get_method(job.method), job.knobs, settings)
    at_setup()
    # FSDP and DeepSpeed wrap the model first: the Trainer builds the optimizer afterwards
    sharded = settings.strategy not in ("single", "ddp")
    optimizer = None if sharded else build_optimizer(model.parameters(), settings.optimizer,
                                                     lr=job.schedule.learning_rate)
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
        ddp_find_unused_parameters=False if settings.strategy == "ddp" else None,
        **({"optim": TRAINER_OPTIM[settings.optimizer]} if sharded else {}),
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
        callbacks=([EventCallback(events, counter)] if main_rank else []) + [cancel, FaultCallback()]
        + ([CheckpointPublisher(session / "checkpoints", s.keep_checkpoints)] if main_rank else [])
        + [TensorAccountCallback(sampler, model, optimizer)],
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
    events.status("failed", reason="error", error=f"{type(exc).__name__}: {str(exc)[:500]}",
                  log_tail=_log_tail(session, [repr(exc)]),
                  peak_bytes=peak)


def _log_tail(session: Path, missing: list[str]) -> list[str]:
    """The last lines of the run's ``worker.log``, or ``missing`` when there is no log."""
    log = session / "worker.log"
    return log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if log.exists() else missing


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
