"""Which attention kernel a training step runs, and so what it saves for backward.

``torch.nn.functional.scaled_dot_product_attention`` picks a kernel at run time from the
inputs (``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp``, ``select_sdp_backend``:
the first of the priority order whose checks all pass), and transformers decides the inputs
(``integrations/sdpa_attention.py``: a mask, or ``enable_gqa`` for grouped-query heads
only without a mask and with head dim <= 256; with a mask, k and v are repeated per head).

CUDA (sm80+; H100/H200 are sm90), the checks that decide it for these models:

- **cuDNN** attention comes first on sm90/sm100 with cuDNN > 9.15 (``check_prefer_cudnn_attention``):
  fp16/bf16, masks allowed, grouped-query heads allowed;
- **flash**: fp16/bf16, *no* mask (``check_for_attn_mask``), equal head dims <= 256;
- **memory-efficient**: fp32/fp16/bf16, masks allowed, head dim divisible by 8 in 16-bit
  and by 4 in fp32 (``minimum_gemm_alignment``), grouped-query heads with ``enable_gqa``
  only from torch :data:`EFFICIENT_GQA_TORCH` (pytorch#191085, 2026);
- **math** otherwise: the s x s probabilities are saved (like eager attention).

So fp32 with grouped-query heads and no padding mask (batch 1) cannot use flash -- and,
before :data:`EFFICIENT_GQA_TORCH`, not the memory-efficient kernel either: it runs the math
kernel. cuDNN, flash and memory-efficient save the same tensors for these shapes (q, k, v,
the output and an fp32 log-sum-exp per head and token; the memory-efficient kernel pads the
log-sum-exp to 32 positions, at most 31 x 4 B per head), so one walk plans all three.
Dropout (``attention_dropout`` > 0) adds nothing to the fused kernels (they regenerate the
mask from the RNG state) and a mask to math.

CPU: the CPU flash kernel (fp32/bf16/fp16, masks allowed) -- the walk measured on CPU.

Every CUDA choice is marked unmeasured until ``bench/gpu_check.py`` has measured it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..specs import ModelSpec
from .settings import TrainingSettings

#: the first torch whose CUDA memory-efficient kernel takes grouped-query heads (enable_gqa)
EFFICIENT_GQA_TORCH = (2, 14)
FLASH_MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class Kernel:
    name: str  # "cpu-flash" | "fused" (cuDNN / flash / memory-efficient) | "math" | "eager"
    shown: str  # e.g. "flash (or cuDNN)"
    reason: str
    measured: bool  # this choice's saved tensors were measured (on CPU) -- never yet on a GPU

    def describe(self) -> str:
        return f"{self.shown}: {self.reason}" + ("" if self.measured else " (not yet measured on a GPU)")


def _torch_version() -> tuple[int, int]:
    try:
        from importlib.metadata import version

        major, minor = version("torch").split(".")[:2]
        return int(major), int(minor)
    except Exception:  # no torch here: plan as the oldest supported
        return (2, 0)


def runnable_attention(spec: ModelSpec, settings: TrainingSettings) -> TrainingSettings:
    """``settings`` with the attention ``spec``'s class can run: sdpa asked of a class with no
    sdpa path (Gemma 2, which soft-caps the attention scores) is eager, as transformers
    itself recommends. The planner and the loader both take the settings from here."""
    if settings.attention == "sdpa" and not spec.attention_facts.supports_sdpa:
        return replace(settings, attention="eager")
    return settings


def attention_kernel(spec: ModelSpec, settings: TrainingSettings, masked: bool) -> Kernel:
    """The kernel a step of ``settings`` runs for ``spec``'s attention; ``masked``: the
    micro-batch carries an attention mask (padding, a prefix's positions, a sliding window)."""
    if settings.attention == "eager":
        facts = spec.attention_facts
        if not facts.supports_sdpa:
            return Kernel("eager", "eager", f"{facts.class_name} has no sdpa attention in transformers"
                          + (" (it soft-caps the attention scores)" if spec.config.get("attn_logit_softcapping") else ""),
                          True)
        return Kernel("eager", "eager", "attention_implementation='eager'", True)
    if settings.device != "cuda":
        return Kernel("cpu-flash", "CPU flash", "torch's CPU flash kernel (every dtype, masks allowed)", True)
    d = spec.head_dim
    half = settings.compute_bytes == 2
    gqa = spec.num_kv_heads != spec.num_heads
    enable_gqa = gqa and not masked and d <= FLASH_MAX_HEAD_DIM  # transformers' use_gqa_in_sdpa
    what = (f"{settings.compute_dtype}, {'a mask' if masked else 'no mask'}, head dim {d}"
            + (", grouped-query heads" if gqa else ""))
    if half and d % 8 == 0:
        if not masked and d <= FLASH_MAX_HEAD_DIM:
            return Kernel("fused", "flash (or cuDNN)", what, False)
        return Kernel("fused", "cuDNN (or memory-efficient)", what, False)
    alignment = 8 if half else 4
    if d % alignment:
        return Kernel("math", "math", f"{what}: head dim not divisible by {alignment}", False)
    if enable_gqa and _torch_version() < EFFICIENT_GQA_TORCH:
        return Kernel("math", "math", f"{what}: fp32 rules out flash and cuDNN; torch "
                      f"{'.'.join(map(str, _torch_version()))} has no grouped-query memory-efficient kernel", False)
    return Kernel("fused", "memory-efficient", f"{what}: fp32 rules out flash and cuDNN", False)


def describe_kernels(spec: ModelSpec, settings: TrainingSettings, extra_kv: int = 0) -> str:
    """The attention kernel(s) a step runs, as the plan shows them: one line, or one per kind
    of layer where sliding-window layers get a mask and full ones do not."""
    from .blocks import layer_masked

    kinds: dict[str, list[int]] = {}
    for i in range(spec.num_layers):
        kinds.setdefault(attention_kernel(spec, settings, layer_masked(spec, settings, i, extra_kv)).describe(),
                         []).append(i)
    if len(kinds) == 1:
        return next(iter(kinds))
    windows = spec.attention_facts.windows
    return "; ".join(f"{'sliding-window' if windows[layers[0]] else 'full-attention'} layers ({len(layers)}): {text}"
                     for text, layers in kinds.items())
