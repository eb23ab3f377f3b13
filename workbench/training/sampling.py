"""The order in which a run sees its examples.

The probe (``Schedule.probe``, on by default): the first optimizer step trains on the
longest examples of the dataset -- ``batch_size x grad_accum`` of them -- so its batches are
the widest the run will ever form, and its measured peak is the run's worst case, known
after one step instead of whenever the longest example happens to come up. Every other
example follows in a seeded random order, reshuffled each epoch (like the Trainer's own
``RandomSampler``); with a seed and an epoch the order is the same every time, so a resumed
run skips exactly the batches it had trained.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


def longest_first_order(lengths: list[int], first: int, seed: int, epoch: int = 0) -> list[int]:
    """Indices: the ``first`` longest (longest first, ties by index), then the rest shuffled."""
    by_length = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    head = by_length[:first]
    rest = by_length[first:]
    generator = torch.Generator().manual_seed(seed + epoch)
    return head + [rest[i] for i in torch.randperm(len(rest), generator=generator).tolist()]


class LongestFirstSampler(Sampler[int]):
    def __init__(self, lengths: list[int], first: int, seed: int) -> None:
        self.lengths, self.first, self.seed, self.epoch = list(lengths), first, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        # only the first epoch leads with the probe batch; later epochs are plain shuffles
        first = self.first if self.epoch == 0 else 0
        return iter(longest_first_order(self.lengths, first, self.seed, self.epoch))
