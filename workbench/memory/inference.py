"""What an inference worker needs on its device: the base weights once, the attached adapters,
the KV cache of the longest request it serves, and that request's logits.

Terms (each with its formula; ``e`` = bytes of the serving dtype):

- ``weights``: every parameter of the base x ``e`` + its buffers, the same inventory the
  training planner counts (tied embeddings once);
- ``adapters``: each adapter's tensors in fp32 (peft ``autocast_adapter_dtype=True`` keeps
  adapter weights fp32 whatever the base dtype), read from the safetensors header -- no
  tensor is loaded to count them;
- ``kv_cache``: ``2 x layers x kv_heads x head_dim x batch x tokens x e`` (transformers'
  ``DynamicCache``: a key and a value per layer and token);
- ``logits``: generation computes the last position only (``logits_to_keep=1``) and copies
  it to fp32 for sampling: ``batch x V x (e + 4)``; scoring a text (perplexity) needs every
  position's logits plus the loss's fp32 copy and log-softmax: ``tokens x V x (e + 8)``;
- ``overhead``: CUDA: the cuBLAS workspace (``constants.json``); the CUDA context is in the
  device budget's margin. CPU: none (the worker's Python and libraries are in the margin).

Not counted: the prefill's per-layer working set (one block's activations for the prompt,
freed layer by layer), which the device budget's margin absorbs; it is stated on screen.
Checked against a real model's tensors and cache in ``tests/test_inference.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import WorkbenchError
from .settings import DTYPE_BYTES
from .weights import ADAPTER_BYTES, Term, buffer_bytes

GIB = 1024**3


@dataclass(frozen=True)
class InferencePlan:
    model: str
    device: str
    dtype: str
    batch: int
    tokens: int
    parts: tuple[Term, ...]

    @property
    def total_bytes(self) -> int:
        return sum(t.bytes for t in self.parts)

    def part(self, name: str) -> int:
        return next((t.bytes for t in self.parts if t.name == name), 0)

    def describe(self) -> str:
        """One line: the total and its parts, in GiB."""
        shown = " + ".join(f"{t.name.replace('_', ' ')} {t.bytes / GIB:.2f}" for t in self.parts if t.bytes)
        return f"{self.total_bytes / GIB:.2f} GiB: {shown} GiB for {self.batch} x {self.tokens:,} tokens"

    def as_dict(self) -> dict:
        return {"model": self.model, "device": self.device, "dtype": self.dtype, "batch": self.batch,
                "tokens": self.tokens, "total_bytes": self.total_bytes,
                "parts": [{"name": t.name, "bytes": t.bytes, "formula": t.formula} for t in self.parts]}


def adapter_numel(folder: str | Path) -> int:
    """Elements of the floating-point tensors in ``folder/adapter_model.safetensors``, read
    from its header (``safetensors.safe_open``: shapes and dtypes, no tensor loaded)."""
    from safetensors import safe_open

    path = Path(folder) / "adapter_model.safetensors"
    try:
        with safe_open(str(path), framework="numpy") as fh:
            slices = [fh.get_slice(name) for name in fh.keys()]
            return sum(math.prod(s.get_shape()) for s in slices if s.get_dtype() in ("F64", "F32", "F16", "BF16"))
    except Exception as exc:  # missing, truncated or foreign: a message naming the file
        raise WorkbenchError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None


def plan_inference(spec, dtype: str, device: str, adapter_elements: int = 0, batch: int = 1, tokens: int = 1,
                   scoring: bool = False) -> InferencePlan:
    """The plan of serving ``spec`` in ``dtype`` on ``device`` with adapters of
    ``adapter_elements`` elements in all, for a request of ``batch`` sequences of ``tokens``
    tokens (prompt + answer); ``scoring``: every position's logits (perplexity)."""
    if dtype not in DTYPE_BYTES:
        raise WorkbenchError(f"serving dtype {dtype!r}: one of {', '.join(DTYPE_BYTES)}")
    e = DTYPE_BYTES[dtype]
    params = sum(p.numel for p in spec.inventory.params)
    buffers = buffer_bytes(spec, e)
    weights = Term("weights", params * e + buffers, f"{params:,} params x {e} B ({dtype}) + {buffers:,} B buffers")
    adapters = Term("adapters", adapter_elements * ADAPTER_BYTES,
                    f"{adapter_elements:,} adapter elements x {ADAPTER_BYTES} B (fp32: peft keeps adapters fp32)")
    L, kv, d = spec.num_layers, spec.num_kv_heads, spec.head_dim
    kv_cache = Term("kv_cache", 2 * L * kv * d * batch * tokens * e,
                    f"2 x {L} layers x {kv} kv heads x {d} head dim x {batch} x {tokens:,} tokens x {e} B")
    V = spec.vocab_size
    if scoring:
        logits = Term("logits", tokens * batch * V * (e + 8),
                      f"{batch} x {tokens:,} tokens x {V:,} vocab x ({e} B logits + 4 B fp32 copy + 4 B log-softmax)")
    else:
        logits = Term("logits", batch * V * (e + 4),
                      f"{batch} x {V:,} vocab x ({e} B last-position logits + 4 B fp32 copy for sampling)")
    if device == "cuda":
        from .planner import device_constants

        workspace = int(device_constants()["cuda"]["cublas_workspace_bytes"])
        overhead = Term("overhead", workspace, "cuBLAS workspace (constants.json, uncalibrated)")
    else:
        overhead = Term("overhead", 0, "CPU: none counted (the worker's runtime is in the margin)")
    return InferencePlan(spec.name, device, dtype, batch, tokens, (weights, adapters, kv_cache, logits, overhead))
