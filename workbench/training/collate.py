"""Pad a batch of ``input_ids``/``labels`` (labels padded with -100) and count its tokens."""

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
