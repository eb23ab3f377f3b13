"""Pad a batch of ``input_ids``/``labels`` (labels padded with -100) and count its tokens;
or flatten it into one padding-free row (:class:`FlatCollator`)."""

from __future__ import annotations


class PadCollator:
    def __init__(self, pad_id: int, counter=None) -> None:
        self.pad_id, self.counter = pad_id, counter

    def __call__(self, features):
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        if self.counter is not None:
            self.counter.tokens += int(mask.sum())
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class FlatCollator:
    """Padding-free batches: the examples concatenated into one row of shape (1, total) with
    ``position_ids`` restarting at 0 for each, and no attention mask, by transformers'
    ``DataCollatorWithFlattening`` (its first label of each example becomes -100, a label the
    shifted loss never reads). transformers then builds a block-diagonal causal mask from the
    position ids, so no token attends across examples: the same loss as :class:`PadCollator`
    without computing pad tokens. Needs ``use_cache=False`` (set by ``load_base``) and no
    prefix/prompt tokens."""

    def __init__(self, counter=None) -> None:
        from transformers import DataCollatorWithFlattening

        self.counter = counter
        self._flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)

    def __call__(self, features):
        batch = self._flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        if self.counter is not None:
            self.counter.tokens += int(batch["input_ids"].numel())
        return batch
