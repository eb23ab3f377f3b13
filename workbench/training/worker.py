"""The training worker: ``python -m workbench.training.worker sessions/<id>/job.json [--resume]``.

A recipe, top to bottom: cap its memory (first line) -> take the device -> set-up
(tokenizer, model with the method's quantization and peft wrap, dataset) -> train with
``transformers.Trainer`` -> save -> clean up -> start the next queued run
(:mod:`workbench.training.queue`). Everything it does goes to ``events.jsonl``; the web
server only reads that file. It never imports gradio. A failure is one sentence in its
status event, without paths; the traceback stays in ``worker.log``.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from .events import EventWriter
from .probe import address_space_limit, cap_before_imports, restore_address_space, uncap_memory
from .probe import cap_memory as _cap_memory  # a module name tests replace

if TYPE_CHECKING:
    from .probe import Setup


def main(argv: list[str]) -> int:
    job_path = Path(argv[0]).resolve()
    resume = "--resume" in argv[1:]
    session = job_path.parent
    launched = "LOCAL_RANK" in os.environ  # a rank started by accelerate launch
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    main_rank = rank == 0
    address_space = address_space_limit()  # restored on the way out (main may run in-process)
    early = cap_before_imports(job_path)  # the first thing: nothing below runs uncapped
    events = EventWriter(session / "events.jsonl")
    if not launched:
        (session / "worker.pid").write_text(str(os.getpid()))  # the process group cancel ends
    sampler = turn = run = cap = None
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if isinstance(early, Exception):
            raise early
        if not launched and (session / "cancel").exists():  # cancelled between its start and now
            events.status("cancelled", reason="cancelled by the user before it started")
            return 0
        from ..devices import worker_gpu_env
        from ..methods import get_method
        from .checkpoints import complete_checkpoints
        from .distributed import is_distributed
        from .job import TrainJob
        from .telemetry import MemorySampler
        from .turns import wait_for_turn

        job = TrainJob.load(job_path)
        settings = job.training_settings
        if is_distributed(settings) and not launched:
            return _supervise(job, session, events, resume)
        cap = _cap_memory(settings.device, quantized=job.training_settings.quant not in (None, "none")
                          or bool(get_method(job.method).quantization))  # before set-up: loading counts too
        if not launched:
            turn = wait_for_turn(session, settings.device, need_bytes=_predicted_peak(job),
                                 on_wait=lambda why: events.status("queued", waiting_for=_waiting_line(why)))
            if turn.gpus:  # before anything touches CUDA: cuda:0 is the GPU granted
                os.environ.update(worker_gpu_env(turn.gpus))
            threads = _cpu_threads() if settings.device == "cpu" else None
            events.status("loading", pid=os.getpid(), resume=resume, cpu_threads=threads)
        elif settings.device == "cuda":
            import torch

            torch.cuda.set_device(local_rank)  # before the sampler touches CUDA: one context per GPU
        device = "cuda" if settings.device == "cuda" else "cpu"
        sampler = MemorySampler(events, device, rank=rank if launched else None, local_rank=local_rank).start()
        run = setup(job, session, events, main_rank, cap, rank if launched else None)
        trainer, cancel = run.trainer, run.cancel
        signal.signal(signal.SIGTERM, lambda *_: cancel.request())  # graceful stop on SIGTERM
        checkpoint = complete_checkpoints(session)[-1] if resume and complete_checkpoints(session) else None
        if resume and main_rank:
            events.emit("resume", checkpoint=str(checkpoint) if checkpoint else None)
        sampler.training()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if cancel.requested:
            if main_rank:
                events.status("cancelled", reason="cancelled by the user", step=trainer.state.global_step)
            return 0
        if main_rank:
            events.status("saving")
        final = _save_final(trainer, job, session, main_rank, settings.strategy not in ("single", "ddp"))
        if main_rank:
            events.status("completed", adapter=str(final), step=trainer.state.global_step, **run.accuracy())
        return 0
    except BaseException as exc:  # every failure ends as an event; the UI never sees a traceback
        if main_rank:
            _fail(exc, events, session, run, job_path, cap)
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
        restore_address_space(address_space)


def _predicted_peak(job, per_device: bool = True) -> int | None:
    """The run's predicted peak per device (what it claims when it takes its turn; a
    multi-process CPU run: every process's, ``per_device=False``); None when it cannot be
    planned here (the worker then fails with the planner's message)."""
    from ..runspec import plan_run

    try:
        peak = plan_run(job.run).peak_bytes
    except Exception:  # a plan that cannot be made here never stops the run: it claims nothing
        return None
    return peak if per_device else peak * job.training_settings.gpus


def _waiting_line(why: str) -> str:
    return (f"the chat model's memory is in the way ({why}); the run starts when it is released (Release the "
            "model on the Chat tab, or after the chat worker's idle time)")


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

    from ..devices import worker_gpu_env
    from ..errors import SettingsError
    from ..sessions import last_status
    from .distributed import launch_command, write_launch_files
    from .events import FINAL
    from .turns import wait_for_turn

    settings = job.training_settings
    if settings.nodes > 1:
        raise SettingsError(f"a {settings.nodes}-node run is started by hand on every node with the generated config "
                            "(launch_command.txt in the run's folder); the workbench starts runs on this machine only")
    turn = wait_for_turn(session, settings.device, count=settings.gpus if settings.device == "cuda" else 1,
                         need_bytes=_predicted_peak(job, per_device=settings.device == "cuda"),
                         on_wait=lambda why: events.status("queued", waiting_for=_waiting_line(why)))
    try:
        env = {**os.environ, **(worker_gpu_env(turn.gpus) if turn.gpus else {})}
        write_launch_files(session, settings, _layer_class(job.model))  # a fresh rendezvous port
        events.status("loading", pid=os.getpid(), resume=resume, world_size=settings.world_size, gpus=turn.gpus)
        child = subprocess.Popen(launch_command(session, resume), env=env, stdin=subprocess.DEVNULL)
        signal.signal(signal.SIGTERM, lambda *_: (session / "cancel").touch())
        code = child.wait()
    finally:
        turn.close()
    if last_status(session) not in FINAL:
        events.status("failed", reason="error", error=f"a training process exited with code {code}; "
                                                      "worker.log has the details")
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


def setup(job, session: Path, events: EventWriter, main_rank: bool = True, cap: int | None = None,
          rank: int | None = None) -> Setup:
    """Tokenizer, data, model and the Trainer, exactly as the job's run says. In a
    multi-process run every rank builds the same; only the main rank writes events other
    than memory samples."""
    import torch

    from ..data import load_tokenizer, training_data
    from ..errors import SettingsError
    from ..loading import load_for_training, weights_dir
    from ..methods import get_method
    from ..specs import load_model_spec
    from .allocator import TrimCallback
    from .callbacks import CancelCallback, CheckpointPublisher, EventCallback, TokenCounter
    from .faults import FaultCallback, at_setup
    from .probe import ProbeCheck, Setup, gpu_limit, record_plans
    from .recipe import build_trainer, probe_step_of, probes
    from .telemetry import StepPeakCallback

    run = job.run
    settings = run.settings
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise SettingsError("the run was planned for cuda, but this process sees no GPU; it does not train "
                            "anywhere else: plan it for cpu, or start it where a GPU is visible")
    spec = load_model_spec(run.model)
    tokenizer = load_tokenizer(str(weights_dir(spec)) if spec.source != "builtin" else run.model)
    data = run.data
    report, train, val = training_data(data.path, tokenizer, data.format, data.mapping, settings.seq_len,
                                       data.train_on_prompt, data.val_fraction, data.seed)
    predicted = record_plans(job, train, val, session, events if main_rank else None)
    if main_rank:
        events.emit("data", rows=report.rows, train=len(train), validation=len(val) if val else 0,
                    seq_len=settings.seq_len, truncated=report.truncated_fraction, format=report.format,
                    dropped=report.dropped["count"])
    torch.manual_seed(run.schedule.seed)  # right before the adapters are initialised: nothing above may move it
    limit = cap if settings.device == "cpu" else gpu_limit()  # before the model takes its share
    args = sharded_loading_arguments(run, session / ".staging", val is not None)
    model = load_for_training(spec, get_method(run.method), run.knobs, settings)
    at_setup()
    at_step = probe_step_of(run, len(train))
    check = ProbeCheck(events if main_rank else None, predicted, limit, at_step, probes(run))
    step_peaks = StepPeakCallback(None, model, "cuda" if settings.device == "cuda" else "cpu", rank=rank,
                                  on_record=check, first=at_step)
    step_peaks.events = events if (main_rank or rank is not None) else None
    counter = TokenCounter()
    cancel = CancelCallback(session / "cancel")
    callbacks = (([EventCallback(events, counter)] if main_rank else []) + [step_peaks, cancel, FaultCallback()]
                 + ([TrimCallback()] if settings.device == "cpu" else [])
                 + ([CheckpointPublisher(session / "checkpoints", run.schedule.keep_checkpoints)] if main_rank else []))
    trainer = build_trainer(run, model, tokenizer, train, val, session / ".staging", callbacks, counter, args=args)
    return Setup(trainer, cancel, step_peaks, predicted, limit)


def sharded_loading_arguments(run, output_dir: Path, has_validation: bool):
    """For a strategy that shards the parameters (FSDP, ZeRO-3): the run's ``TrainingArguments``,
    made -- and the process group joined -- *before* the model is loaded, so that
    ``from_pretrained`` sees them: under ZeRO-3 the arguments register DeepSpeed's config
    (``is_deepspeed_zero3_enabled``: each rank builds only its partition inside ``zero.Init``),
    under FSDP the joined group lets every rank but the first load on the meta device
    (``fsdp_cpu_ram_efficient_loading``). Loaded first, every rank would hold the whole model in
    host RAM (a 70B model on 8 ranks: about 1.1 TB). None for the other strategies (their
    arguments are made with the Trainer)."""
    from ..memory.planner import PARAM_SHARDING
    from .recipe import training_arguments

    if run.settings.strategy not in PARAM_SHARDING:
        return None
    args = training_arguments(run, output_dir, has_validation)
    args.device  # noqa: B018 -- initialises accelerate's state: the process group, before the load
    return args


def _save(trainer, job, folder: Path) -> None:
    """peft methods: the adapter (``adapter_config.json`` + ``adapter_model.safetensors``);
    full: the whole model; freeze/BitFit: only the trained tensors. Always safetensors, the
    tokenizer, and ``workbench_meta.json`` (what, from which data, how far, a logits probe)."""
    from .artifacts import save_artifacts
    from .faults import before_final_save

    before_final_save()
    save_artifacts(trainer, job, folder)


def _is_oom(exc: BaseException, chained: bool = True) -> bool:
    """Out of memory, also when a reader turned the MemoryError into its own error (the
    data loader reports a failed allocation as a bad column, with the MemoryError chained)."""
    if chained:
        return any(_is_oom(e, chained=False) for e in _chain(exc))
    text = str(exc).lower()
    oom_types = (MemoryError,)
    if "torch" in sys.modules:
        oom_types += (sys.modules["torch"].OutOfMemoryError,)
    return isinstance(exc, oom_types) or "out of memory" in text or "can't allocate memory" in text


def _fail(exc: BaseException, events: EventWriter, session: Path, run, job_path: Path, cap: int | None) -> None:
    uncap_memory()  # reporting must not fail for the same reason as training
    traceback.print_exc()
    sys.stderr.flush()
    if isinstance(exc, KeyboardInterrupt):
        events.status("cancelled", reason="interrupted by a signal")
        return
    peak = run.step_peaks.peak_bytes if run is not None else None
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        from .checkpoints import newest_complete

        kept = newest_complete(session)
        events.status("failed", reason="disk_full", peak_bytes=peak,
                      message="no space left on device while saving; free space and resume"
                              + (f" (the complete checkpoint {kept.name} is still usable)" if kept else ""))
        return
    if _is_oom(exc):
        during = "" if run is not None else " during set-up (loading the data, tokenizer or model)"
        limit = f" under the worker's memory cap of {cap / 2**30:.2f} GiB" if cap is not None else ""
        events.status("failed", reason="oom", peak_bytes=peak,
                      message=f"out of memory{during}{limit}: {public_message(_oom_cause(exc))}",
                      suggestions=_suggestions(job_path, run.limit if run is not None else cap))
        return
    events.status("failed", reason="error", error=public_message(exc), peak_bytes=peak)


_PATH = re.compile(r"""(?<![\w.:/])(?:/[^\s'"(),:;\]\[]+)+""")


def public_message(exc: BaseException) -> str:
    """What the user is told of a failure: one line, the exception's kind and first line,
    absolute paths cut to their last part, no traceback (that stays in ``worker.log``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = _PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", lines[0] if lines else "")
    text = text[:300] + ("..." if len(text) > 300 else "")
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (worker.log has the details)"


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _oom_cause(exc: BaseException) -> BaseException:
    return next((e for e in _chain(exc) if _is_oom(e, chained=False)), exc)


def _suggestions(job_path: Path, limit: int | None) -> list[str]:
    """Changes that each re-plan under the memory the run had (its cap or its GPU)."""
    try:
        from ..preflight import device_budget, suggestions_under
        from .job import TrainJob

        job = TrainJob.load(job_path)
        if limit is None:
            limit = device_budget(job.training_settings.device).limit_bytes
        found = suggestions_under(job.run, limit)
        return [s.text for s in found] or ["nothing this workbench can change fits the memory here: a smaller model"]
    except Exception as exc:  # advice must never hide the failure itself
        return [f"(no suggestions: {type(exc).__name__})"]


def _hand_off(job_path: str, environ: dict) -> None:
    """This worker is done: start the next queued run now (with the environment this
    worker was started with), rather than waiting for the server's next dispatch round."""
    try:
        from .queue import dispatch

        dispatch(finishing=Path(job_path).resolve().parent.name, env=environ)
    except Exception:  # the server's dispatcher starts it a moment later anyway
        traceback.print_exc()


if __name__ == "__main__":
    started_with = dict(os.environ)  # before the run narrows CUDA_VISIBLE_DEVICES
    code = main(sys.argv[1:])
    if "LOCAL_RANK" not in started_with and sys.argv[1:]:  # the run's own process, not a rank
        _hand_off(sys.argv[1], started_with)
    raise SystemExit(code)
