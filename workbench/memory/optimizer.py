"""Optimizer state bytes, per trainable tensor, for the optimizers the workbench offers.

- ``adamw`` (``torch.optim.AdamW``, Loshchilov & Hutter 2019): ``exp_avg`` and
  ``exp_avg_sq`` shaped and typed like the parameter, plus a 4-byte fp32 ``step`` tensor per
  parameter tensor (torch/optim/adamw.py, ``_init_group``).
- ``adamw_8bit`` / ``paged_adamw_8bit`` (bitsandbytes, Dettmers et al. 2022,
  arXiv:2110.02861): tensors of at least 4096 elements keep two uint8 states plus one fp32
  absmax per 256-element block for each; smaller tensors keep two fp32 states; two shared
  256-entry fp32 quantization maps. Paged states live in CUDA unified memory.
- ``sgd``: no state; ``sgd_momentum``: one momentum buffer like the parameter.
- ``adafactor`` (Shazeer & Stern 2018, transformers ``Adafactor``): factored second moment,
  fp32 row and column sums for matrices (rows x 1 and 1 x cols), a full fp32 copy for vectors,
  and (measured) one 4-byte tensor per parameter.

Step temporaries (:func:`optimizer_step_transient`) are what ``optimizer.step()`` allocates
and frees on top of the gradients and states, read off each optimizer's code and checked
against the tracked CPU peak (``workbench measure``).
"""

from __future__ import annotations

import math
import re

from ..methods.base import TensorGroup
from .weights import Term

BNB_MIN_8BIT_SIZE = 4096
BNB_OPT_BLOCK = 256
BNB_QMAP_BYTES = 2 * 256 * 4


def _adafactor_bytes(shape: tuple[int, ...]) -> int:
    if len(shape) >= 2:
        return 4 * (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1])
    return 4 * math.prod(shape)


def _bnb8_bytes(numel: int) -> int:
    if numel >= BNB_MIN_8BIT_SIZE:
        return 2 * numel + 2 * 4 * math.ceil(numel / BNB_OPT_BLOCK)
    return 2 * 4 * numel


def optimizer_term(optimizer: str, tensors: list[tuple[TensorGroup, int]]) -> Term:
    n_tensors = sum(g.count for g, _ in tensors)
    if optimizer == "adamw":
        states = sum(2 * g.total * b for g, b in tensors)
        return Term("optimizer", states + 4 * n_tensors,
                    f"AdamW: 2 states x param bytes ({states:,} B) + 4 B step x {n_tensors:,} tensors")
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        total = sum(_bnb8_bytes(g.numel) * g.count for g, _ in tensors)
        maps = BNB_QMAP_BYTES if any(g.numel >= BNB_MIN_8BIT_SIZE for g, _ in tensors) else 0
        paged = " (paged: CUDA unified memory)" if optimizer.startswith("paged") else ""
        return Term("optimizer", total + maps,
                    f"8-bit AdamW{paged}: 2 x 1 B + 2 x 4 B/256 per element (tensors >= 4096 elements; "
                    f"smaller ones 2 x 4 B) + {maps} B shared maps (only when some tensor is quantized)")
    if optimizer == "sgd":
        return Term("optimizer", 0, "SGD without momentum keeps no state")
    if optimizer == "sgd_momentum":
        total = sum(g.total * b for g, b in tensors)
        return Term("optimizer", total, "SGD momentum: 1 buffer x param bytes")
    if optimizer == "adafactor":
        total = sum(_adafactor_bytes(g.shape) * g.count for g, _ in tensors)
        return Term("optimizer", total + 4 * n_tensors,
                    "Adafactor: fp32 row + column second moments per matrix, full fp32 for vectors, "
                    f"+ 4 B step x {n_tensors:,} tensors")
    raise ValueError(optimizer)


#: the parameters the Trainer gives no weight decay (``Trainer.get_decay_parameter_names``):
#: biases and norms go to a second parameter group
NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def trainer_param_groups(tensors: list[tuple[TensorGroup, int]]) -> list[list[tuple[int, int]]]:
    """The trainable tensors as ``Trainer.create_optimizer`` groups them, (elements, element
    bytes) in model order: the weight-decay group, then biases and norms."""
    decay: list[tuple[int, int]] = []
    rest: list[tuple[int, int]] = []
    for g, b in tensors:
        (rest if NO_DECAY.search(g.label.lower()) else decay).extend([(g.numel, b)] * g.count)
    return [group for group in (decay, rest) if group]


def _adamw_loop_bytes(groups: list[list[tuple[int, int]]]) -> int:
    """torch's single-tensor AdamW (``_single_tensor_adam``), one call per parameter group:
    ``denom = (exp_avg_sq.sqrt() / c).add_(eps)`` allocates the square root and the division
    while the previous tensor's ``denom`` is still bound: prev + 2 x this tensor's bytes."""
    best = 0
    for group in groups:
        prev = 0
        for numel, b in group:
            best = max(best, prev + 2 * numel * b)
            prev = numel * b
    return best


def _adafactor_loop_bytes(groups: list[list[tuple[int, int]]]) -> int:
    """transformers ``Adafactor.step``, one loop over every group's tensors: ``update =
    grad**2 + eps`` (the power and the sum alive at the ``+``) while the previous tensor's fp32
    ``update`` is still bound; a 16-bit tensor adds fp32 copies of its gradient and of itself
    (``grad.float()``, ``p.float()``), made while the previous ones are still bound."""
    best, prev = 0, 0
    for numel, b in (t for group in groups for t in group):
        if b >= 4:
            best = max(best, 4 * (prev + 2 * numel))
        else:
            best = max(best, 4 * (2 * prev + numel), 4 * (prev + 4 * numel))
        prev = numel
    return best


def optimizer_step_transient(optimizer: str, device: str, tensors: list[tuple[TensorGroup, int]]) -> Term:
    """Temporaries during ``optimizer.step()``, over the Trainer's parameter groups
    (:func:`trainer_param_groups`). On CUDA torch AdamW defaults to the ``foreach``
    implementation, whose ``_foreach_sqrt(exp_avg_sq)`` materialises a copy of every state
    tensor of a group (torch/optim/adamw.py ``_multi_tensor_adamw``); on CPU the single-tensor
    loop (:func:`_adamw_loop_bytes`). Adafactor steps one tensor at a time on every device
    (:func:`_adafactor_loop_bytes`)."""
    groups = trainer_param_groups(tensors)
    if optimizer == "adafactor" and groups:
        return Term("optimizer_step", _adafactor_loop_bytes(groups),
                    "Adafactor, one tensor at a time: grad**2 and grad**2 + eps (4 B x elements each) beside the "
                    "previous tensor's fp32 update (+ fp32 copies of a 16-bit gradient and parameter)")
    if optimizer != "adamw" or not groups:
        return Term("optimizer_step", 0, "no large temporaries" if optimizer != "sgd_momentum"
                    else "SGD momentum updates in place")
    if device == "cuda":
        largest = max(sum(n * b for n, b in group) for group in groups)
        return Term("optimizer_step", largest, "foreach AdamW: one temporary copy of every state tensor of the "
                                               "larger parameter group")
    return Term("optimizer_step", _adamw_loop_bytes(groups),
                "single-tensor loop: sqrt(exp_avg_sq) and its division, beside the previous tensor's denominator")
