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


def _adafactor_step_bytes(numel: int, param_bytes: int) -> int:
    """transformers ``Adafactor.step`` on one tensor: ``update = grad**2 + eps`` (the power
    and the sum are both alive at the ``+``), then the factored approximation
    ``torch.mul(r_factor, c_factor)`` (or ``exp_avg_sq.rsqrt()`` for a vector) while the
    first ``update`` is still referenced, then ``p.add_(-update)``: two fp32 tensors of the
    parameter's size at each point. A 16-bit parameter adds the fp32 copies of its gradient
    (``grad.float()``) and of itself (``p.float()``), alive for the whole update."""
    return 4 * numel * (2 if param_bytes >= 4 else 4)


def optimizer_step_transient(optimizer: str, device: str, tensors: list[tuple[TensorGroup, int]]) -> Term:
    """Temporaries during ``optimizer.step()``. On CUDA torch AdamW defaults to the
    ``foreach`` implementation, whose ``_foreach_sqrt(exp_avg_sq)`` etc. materialise one
    extra copy of all states (torch/optim/adamw.py ``_multi_tensor_adamw``); on CPU the
    single-tensor loop computes ``(exp_avg_sq.sqrt() / bias_correction2_sqrt)``: two
    temporaries as large as the largest tensor. Adafactor steps one tensor at a time
    (:func:`_adafactor_step_bytes`) on every device."""
    if optimizer == "adafactor" and tensors:
        largest = max(_adafactor_step_bytes(g.numel, b) for g, b in tensors)
        return Term("optimizer_step", largest,
                    "Adafactor, one tensor at a time: grad**2 + eps and the (factored) update, 2 x 4 B x elements "
                    "of the largest tensor (+ fp32 copies of a 16-bit gradient and parameter, 2 x 4 B x elements)")
    if optimizer not in ("adamw", "sgd_momentum") or not tensors:
        return Term("optimizer_step", 0, "no large temporaries")
    if device == "cuda" and optimizer == "adamw":
        total = sum(g.total * b for g, b in tensors)
        return Term("optimizer_step", total, "foreach AdamW: one temporary copy of every state tensor")
    largest = max(g.numel * b for g, b in tensors)
    if optimizer == "sgd_momentum":
        return Term("optimizer_step", 0, "SGD momentum updates in place")
    return Term("optimizer_step", 2 * largest,
                "single-tensor loop: sqrt(exp_avg_sq) and its division, each as large as the largest tensor")
