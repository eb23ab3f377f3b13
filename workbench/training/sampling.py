"""The order in which a run sees its examples.

The probe (``Schedule.probe``, on by default): the second optimizer step trains on the
longest examples of the dataset -- ``batch_size x grad_accum`` of them -- so its batches are
the widest the run will ever form, and its measured peak is the run's worst case, known
after two steps instead of whenever the longest example happens to come up. It is the
second step, not the first, because the optimizer creates its state (Adam's two moments)
inside the first step: a first step whose peak falls in backward has no optimizer state
yet, and would measure less than any later step. From the second step on, everything the
plan counts exists. (A run too short for a second step probes on its first.) Every other
example is in a seeded random order, reshuffled each epoch (like the Trainer's own
``RandomSampler``); with a seed and an epoch the order is the same every time, so a resumed
run skips exactly the batches it had trained.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


def probe_step(examples: int, per_step: int, max_steps: int = -1, epochs: float = 1.0) -> int:
    """The optimizer step (1-based) that trains on the longest examples: the second, when
    the run has a second step of ``per_step`` examples; else the first."""
    steps = max_steps if max_steps > 0 else int(epochs * (examples // max(per_step, 1)))
    return 2 if examples >= 2 * per_step and steps >= 2 else 1


def longest_first_order(lengths: list[int], first: int, seed: int, epoch: int = 0, step: int = 1) -> list[int]:
    """Indices: ``first`` shuffled ones per step before ``step``, then the ``first`` longest
    (longest first, ties by index), then the rest shuffled."""
    by_length = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    head = by_length[:first]
    rest = by_length[first:]
    generator = torch.Generator().manual_seed(seed + epoch)
    shuffled = [rest[i] for i in torch.randperm(len(rest), generator=generator).tolist()]
    before = first * (step - 1) if first else 0
    return shuffled[:before] + head + shuffled[before:]


class LongestFirstSampler(Sampler[int]):
    def __init__(self, lengths: list[int], first: int, seed: int, step: int = 1) -> None:
        self.lengths, self.first, self.seed, self.epoch, self.step = list(lengths), first, seed, 0, step

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        # only the first epoch leads with the probe batch; later epochs are plain shuffles
        first = self.first if self.epoch == 0 else 0
        return iter(longest_first_order(self.lengths, first, self.seed, self.epoch, self.step))
