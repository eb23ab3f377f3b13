"""Trainer callbacks: log events, cooperative cancel, and marking saved checkpoints complete."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from .checkpoints import complete_checkpoints, mark_complete
from .events import EventWriter


class TokenCounter:
    """Counts the tokens the collator hands to the model (for tokens/s)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.widest = 0  # the widest padded batch so far (tokens per row)


class EventCallback(TrainerCallback):
    """``log`` events: step, epoch, loss, eval loss, learning rate, grad norm, tokens/s, ETA."""

    def __init__(self, events: EventWriter, counter: TokenCounter) -> None:
        self.events, self.counter = events, counter
        self._start = self._last_time = time.perf_counter()
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = self._last_time = time.perf_counter()
        self.events.status("running", total_steps=state.max_steps, epochs=args.num_train_epochs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if "train_runtime" in logs:  # the Trainer's end-of-training summary
            self.events.emit("summary", step=state.global_step, **logs)
            return
        now = time.perf_counter()
        elapsed = now - self._start
        tokens = self.counter.tokens
        rate = (tokens - self._last_tokens) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_tokens = now, tokens
        step = state.global_step
        eta = elapsed / step * (state.max_steps - step) if step else None
        self.events.emit(
            "log", step=step, max_steps=state.max_steps, epoch=state.epoch, loss=logs.get("loss"),
            eval_loss=logs.get("eval_loss"), learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
            tokens_per_second=round(rate, 1), elapsed_seconds=round(elapsed, 2), widest_batch=self.counter.widest,
            eta_seconds=None if eta is None else round(eta, 1),
        )


class CancelCallback(TrainerCallback):
    """Stops at the next step once ``flag`` exists (or :meth:`request` was called), and saves."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag
        self.requested = False

    def request(self) -> None:
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        wanted = self.requested or self.flag.exists()
        if _world_size() > 1:  # every rank must stop at the same step, or the others hang in a collective
            wanted = _any_rank(wanted)
        if wanted:
            self.requested = True
            control.should_training_stop = True
            control.should_save = True
        return control


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (one small all-reduce per step)."""
    import torch
    import torch.distributed as dist

    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class CheckpointPublisher(TrainerCallback):
    """The Trainer writes checkpoints into a staging folder; once one is written, this marks
    it ``COMPLETE``, renames it into ``checkpoints/`` and keeps the newest ``keep`` there."""

    def __init__(self, published: Path, keep: int) -> None:
        self.published, self.keep = published, keep

    def on_train_begin(self, args, state, control, **kwargs):
        shutil.rmtree(args.output_dir, ignore_errors=True)  # leftovers of a run killed mid-save

    def on_save(self, args, state, control, **kwargs):
        staged = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not staged.is_dir():
            return
        mark_complete(staged, step=state.global_step)
        self.published.mkdir(parents=True, exist_ok=True)
        target = self.published / staged.name
        if target.exists():  # re-saved after a resume: the new one replaces it only when complete
            shutil.rmtree(target)
        os.replace(staged, target)
        for old in complete_checkpoints(self.published.parent)[: -self.keep] if self.keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
