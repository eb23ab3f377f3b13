"""Allocator settings for the training worker's environment (glibc malloc, CPU runs).

Measured (``bench/memory_creep.py``, tiny LoRA, batch 4, alpaca rows of 41..785 and
41..1,362 tokens): with glibc's defaults the worker's RSS climbs in the first steps and stays
high -- at sequence length 1024, 1.19 GiB after step 1, 1.67 GiB at step 20, 1.83-1.9 GiB
at step 100 (planned peak 0.74 GiB) -- while with ``MALLOC_MMAP_THRESHOLD_=65536`` the
same run holds 1.02-1.07 GiB from step 1 on. Padding every batch to a multiple of 64 did
not change it (1.67 GiB at step 20), nor did a plain torch loop show it, and RSS did not
grow with the step count (600 steps at 512: 1.39 GiB at step 20, 1.28 GiB at step 600), so it
is neither a per-shape cache nor a leak: it is glibc's *dynamic* mmap threshold.

glibc starts by serving blocks >= 128 KiB with ``mmap`` (returned to the system on
``free``), but each time such a block is freed it raises the threshold to that block's size
(up to 32 MiB on 64-bit) and the trim threshold to twice that. After the first backward
has freed its activations, every tensor buffer up to 32 MiB is carved from the heap
instead; with batch widths that change every step, freed holes of one step's sizes do not
fit the next step's, the heap grows, and memory in the middle of it is never given back.
Setting the threshold explicitly turns the adjustment off: tensor buffers of 64 KiB and
more are mapped and unmapped again, and RSS follows the live tensors.

Other allocators (musl, jemalloc via ``LD_PRELOAD``) ignore these variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: variable -> value, with the reason each is set (see the module docstring for the numbers)
WORKER_ALLOCATOR_DEFAULTS: dict[str, str] = {
    # a fixed threshold (bytes) also disables glibc's dynamic raising of it and of the trim threshold
    "MALLOC_MMAP_THRESHOLD_": "65536",
}


def worker_env_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allocator variables the worker gets unless the operator's environment (default
    ``os.environ``) already sets them: merge as ``{**worker_env_defaults(), **os.environ}``
    so that an operator's own value always wins."""
    environ = os.environ if environ is None else environ
    return {key: value for key, value in WORKER_ALLOCATOR_DEFAULTS.items() if key not in environ}
