"""The training step users run, built once: the worker trains with it, and ``measure`` and the
planner-accuracy benchmark measure it (so the planner is checked on the product's loop).

:func:`build_trainer` makes a ``transformers.Trainer`` exactly as a run's
:class:`~workbench.runspec.RunSpec` says: micro-batch, gradient accumulation, the collator
(batches padded to their longest example with an attention mask and ``-100`` labels, or
padding-free rows), the optimizer, the sampler (the longest examples first when the run
probes) and the callbacks it is given.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer, TrainingArguments

from ..runspec import RunSpec
from .sampling import LongestFirstSampler, probe_step


def training_arguments(run: RunSpec, output_dir: Path, has_validation: bool) -> TrainingArguments:
    from ..optimizers import TRAINER_OPTIM, TRAINER_OPTIM_ARGS

    s, settings = run.schedule, run.settings
    sharded = settings.strategy not in ("single", "ddp")
    return TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=s.epochs, max_steps=s.max_steps, learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler, warmup_steps=s.warmup_ratio, logging_steps=s.logging_steps,
        save_strategy="steps" if s.save_steps else "no", save_steps=s.save_steps or 500,
        eval_strategy=("steps" if s.eval_steps else "epoch") if has_validation else "no",
        eval_steps=s.eval_steps or None, seed=s.seed, use_cpu=settings.device == "cpu", report_to=[],
        disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if s.batching == "group_by_length" else "random",
        ddp_find_unused_parameters=False if settings.strategy == "ddp" else None,
        **settings.trainer_flags(),  # the precision: autocast (+ GradScaler for fp16), DeepSpeed's 16-bit mode
        # sharded runs let the Trainer (or DeepSpeed) build the optimizer: the same one, momentum included
        **({"optim": TRAINER_OPTIM[settings.optimizer], "optim_args": TRAINER_OPTIM_ARGS.get(settings.optimizer)}
           if sharded else {}),
    )


def probe_step_of(run: RunSpec, examples: int) -> int:
    """The optimizer step whose peak is the probe (or, without a probe, the first compared
    with the plan): :func:`.sampling.probe_step` for this run's steps."""
    settings = run.settings
    return probe_step(examples, settings.batch_size * settings.grad_accum, run.schedule.max_steps, run.schedule.epochs)


def probes(run: RunSpec) -> bool:
    """Does the run lead with its longest examples? (Random padded batches on one process;
    length-grouped batches already start with the longest, and padding-free rows have no width.)"""
    return run.schedule.probe and run.schedule.batching == "pad" and run.settings.world_size == 1


class WorkbenchTrainer(Trainer):
    """The Trainer, with the probe's order of examples (:mod:`.sampling`) when the run probes."""

    def __init__(self, *args, longest_first: int = 0, probe_step: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.longest_first, self.probe_step = longest_first, probe_step

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.longest_first and dataset is not None and "input_ids" in dataset.column_names:
            lengths = [len(ids) for ids in dataset["input_ids"]]
            return LongestFirstSampler(lengths, self.longest_first, self.args.seed, self.probe_step)
        return super()._get_train_sampler(train_dataset)


class WidthRecorder:
    """Wraps a collator: records the widest batch it formed (``counter.widest``), so a run
    can show that no batch was wider than its sequence length."""

    def __init__(self, collator, counter) -> None:
        self.collator, self.counter = collator, counter

    def __call__(self, features):
        batch = self.collator(features)
        if self.counter is not None:
            self.counter.widest = max(getattr(self.counter, "widest", 0), int(batch["input_ids"].shape[-1]))
        return batch


def make_collator(run: RunSpec, tokenizer, counter=None):
    from .collate import FlatCollator, PadCollator

    if run.schedule.batching == "padding_free":
        return FlatCollator(counter)
    return WidthRecorder(PadCollator(tokenizer.pad_token_id or 0, counter), counter)


def build_trainer(run: RunSpec, model, tokenizer, train, validation, output_dir: Path, callbacks: list,
                  counter=None, args: TrainingArguments | None = None) -> Trainer:
    """The Trainer of the run; ``args``: its arguments when they were made before the model was
    loaded (sharded strategies, :func:`workbench.training.worker.sharded_loading_arguments`)."""
    from ..optimizers import build_optimizer

    settings = run.settings
    # FSDP and DeepSpeed wrap the model first: the Trainer builds the optimizer afterwards
    sharded = settings.strategy not in ("single", "ddp")
    optimizer = None if sharded else build_optimizer(model.parameters(), settings.optimizer,
                                                     lr=run.schedule.learning_rate)
    return WorkbenchTrainer(
        model=model, args=args or training_arguments(run, output_dir, validation is not None), train_dataset=train,
        eval_dataset=validation, processing_class=tokenizer, data_collator=make_collator(run, tokenizer, counter),
        optimizers=(optimizer, None), callbacks=callbacks,
        longest_first=settings.batch_size * settings.grad_accum if probes(run) else 0,
        probe_step=probe_step_of(run, len(train)),
    )
