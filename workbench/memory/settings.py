"""Training settings the planner, the measurer and (later) the worker share."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import SettingsError, check_fields

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: autocast dtypes (``none``: ops run in the storage dtype)
AUTOCASTS = ("none", "bfloat16", "float16")
#: the precision modes people know, as (storage dtype, autocast dtype). The ``-mixed`` modes
#: keep fp32 master weights (and fp32 gradients and optimizer state) and compute under
#: autocast, as the Trainer's ``bf16=True`` / ``fp16=True`` do on an fp32 model; ``fp16`` is a
#: pure fp16 model under the Trainer's ``fp16=True`` (autocast + GradScaler), which can train
#: only fp32 parameters (adapters): the GradScaler refuses to unscale fp16 gradients.
PRECISIONS = {"fp32": ("float32", "none"), "bf16": ("bfloat16", "none"), "fp16": ("float16", "float16"),
              "bf16-mixed": ("float32", "bfloat16"), "fp16-mixed": ("float32", "float16")}
PRECISION_HELP = {
    "fp32": "float32 weights and compute",
    "bf16": "bfloat16 weights and compute",
    "fp16": "float16 weights, loss scaling; adapters only",
    "bf16-mixed": "fp32 master weights, bf16 autocast",
    "fp16-mixed": "fp32 master weights, fp16 autocast, loss scaling",
}
_SPELLINGS = {"fp32": "fp32", "float32": "fp32", "float": "fp32", "32": "fp32", "full": "fp32",
              "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "half": "fp16", "16": "fp16"}


def parse_precision(text: object) -> str:
    """The precision mode for a common spelling: ``fp32``/``float32``, ``bf16``/``bfloat16``,
    ``fp16``/``float16``/``half``, and the mixed modes as ``bf16-mixed``, ``mixed-bf16``,
    ``bf16_mixed``, ``amp_bf16``, ``bfloat16-mixed``, ... (case and ``-``/``_``/space ignored)."""
    raw = str(text).strip().lower().replace("_", "-").replace(" ", "-").removeprefix("torch.")
    parts = [p for p in raw.split("-") if p]
    mixed = any(p in ("mixed", "amp", "autocast") for p in parts)
    rest = [p for p in parts if p not in ("mixed", "amp", "autocast", "true")]
    base = _SPELLINGS.get("-".join(rest)) if rest else None
    if base is None or (mixed and base == "fp32"):
        shown = str(text)[:40]
        raise SettingsError(f"precision {shown!r}: choose from {', '.join(PRECISIONS)} "
                            "(also accepted: float32, bfloat16, float16, mixed-bf16, ...)")
    return f"{base}-mixed" if mixed else base
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "sgd", "sgd_momentum", "adafactor")
QUANTS = ("none", "8bit", "4bit")
DEVICES = ("cuda", "cpu")
ATTENTIONS = ("sdpa", "eager")
# how training is spread over GPUs (accelerate launches every one of them)
STRATEGIES = ("single", "ddp", "fsdp", "fsdp-grad-op", "deepspeed-zero1", "deepspeed-zero2", "deepspeed-zero3")
OFFLOADS = ("none", "optimizer", "params", "both")

#: the whole-number settings and their allowed range (inclusive): what a form, a flag or a
#: job.json may give. The upper ends only catch typos (a batch of 10**12); the planner plans
#: anything in range, and the preflight says when it fits nowhere.
SETTING_RANGES = {"batch_size": (1, 1_000_000), "seq_len": (1, 10_000_000), "grad_accum": (1, 1_000_000),
                  "gpus": (1, 1024), "nodes": (1, 1024)}


def default_precision(device: str) -> str:
    """The precision a run gets when none is chosen (see :func:`default_dtype`)."""
    return "fp32" if device == "cpu" else "bf16"


def default_dtype(device: str) -> str:
    """The dtype a run gets when none is chosen: float32 on the CPU (most CPUs have no fast
    bfloat16 kernels: a SmolLM2 LoRA step took 213 s in bfloat16 against 19 s in float32 on
    this project's 2-core machine), bfloat16 on a GPU."""
    return "float32" if device == "cpu" else "bfloat16"


SETTING_HELP = {
    "dtype": "storage dtype of the model weights (default: float32 on CPU, where bfloat16 is ~10x "
             "slower, bfloat16 on GPU); --precision sets it with the autocast dtype",
    "precision": "fp32, bf16 (pure), fp16 (fp16 model, loss scaling: adapters only), bf16-mixed or fp16-mixed "
                 "(fp32 master weights, autocast compute); default: fp32 on CPU, bf16 on GPU",
    "autocast": "the dtype ops run in under torch.autocast (none, bfloat16, float16): set by the precision",
    "quant": "store the frozen base in 8-bit or 4-bit (bitsandbytes); default: what the method needs",
    "batch_size": "examples per forward pass (micro-batch)",
    "seq_len": "tokens per example (pad/truncate length)",
    "grad_accum": "micro-batches whose gradients are summed before each optimizer step",
    "gradient_checkpointing": "keep only block inputs; recompute the rest in backward",
    "optimizer": "optimizer and the state it keeps per trainable parameter",
    "device": "where training runs",
    "attention": "attention implementation (sdpa never stores the s x s score matrix)",
    "gpus": "GPUs per node (processes per node; on CPU, worker processes)",
    "nodes": "machines (for the generated multi-node config)",
    "strategy": "how the GPUs share the model: single, ddp (replicas), fsdp (full shard), fsdp-grad-op "
                "(shard gradients + optimizer), deepspeed-zero1/2/3",
    "offload": "move optimizer states and/or parameters to host memory (fsdp, deepspeed)",
}


@dataclass(frozen=True)
class TrainingSettings:
    dtype: str = "bfloat16"
    autocast: str | None = None  # None: the dtype's own (float16 trains under fp16 autocast + GradScaler)
    quant: str | None = None
    batch_size: int = 4
    seq_len: int = 512
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    device: str = "cuda"
    attention: str = "sdpa"
    gpus: int = 1
    nodes: int = 1
    strategy: str = "single"
    offload: str = "none"

    def __post_init__(self) -> None:
        if self.autocast is None:
            object.__setattr__(self, "autocast", "float16" if self.dtype == "float16" else "none")
        choices = {"dtype": DTYPE_BYTES, "autocast": AUTOCASTS, "optimizer": OPTIMIZERS, "device": DEVICES, "attention": ATTENTIONS,
                   "strategy": STRATEGIES, "offload": OFFLOADS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise SettingsError(f"setting {name}={getattr(self, name)!r}: choose from {', '.join(valid)}")
        if self.quant is not None and self.quant not in QUANTS:
            raise SettingsError(f"setting quant={self.quant!r}: choose from {', '.join(QUANTS)}")
        for name, (low, high) in SETTING_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise SettingsError(f"setting {name}={value!r}: must be a whole number from {low:,} to {high:,}")
        if (self.dtype, self.autocast) not in PRECISIONS.values():
            raise SettingsError(f"dtype {self.dtype} with autocast {self.autocast}: not a precision mode; choose "
                                + ", ".join(f"{k} ({v[0]}, autocast {v[1]})" for k, v in PRECISIONS.items()))
        if self.autocast == "float16" and self.device == "cpu":
            raise SettingsError(f"precision {self.precision} needs a GPU: fp16 autocast and loss scaling run only on "
                                "CUDA (accelerate trains fp16 on the CPU without either); on the CPU choose fp32, "
                                "bf16 or bf16-mixed")
        if self.mixed and self.strategy.startswith("deepspeed"):
            raise SettingsError(f"precision {self.precision} with {self.strategy}: DeepSpeed keeps its own fp32 master "
                                "weights; choose bf16 or fp16 (DeepSpeed's mixed precision) or fp32")
        if self.mixed and self.quant in ("8bit", "4bit"):
            raise SettingsError(f"precision {self.precision} keeps fp32 master weights, which a {self.quant} base "
                                "does not have; choose bf16 (the quantized base computes in bfloat16) or fp32")
        if self.strategy == "single" and self.world_size > 1:
            raise SettingsError(f"{self.world_size} processes need a strategy: ddp, fsdp, fsdp-grad-op or "
                                "deepspeed-zero1/2/3 (single is one process)")
        if self.offload != "none" and not self.strategy.startswith(("fsdp", "deepspeed")):
            raise SettingsError(f"offload={self.offload!r} needs fsdp or deepspeed; {self.strategy} keeps everything "
                                "on the GPU")
        if self.offload in ("params", "both") and self.strategy not in ("fsdp", "deepspeed-zero3"):
            raise SettingsError(f"offloading parameters needs sharded parameters: fsdp or deepspeed-zero3, "
                                f"not {self.strategy}")
        if self.device == "cpu" and self.strategy not in ("single", "ddp"):
            raise SettingsError(f"strategy {self.strategy} needs GPUs; on CPU use single or ddp (gloo)")

    @property
    def world_size(self) -> int:
        """Processes in the run: GPUs per node x nodes."""
        return self.gpus * self.nodes

    @property
    def element_bytes(self) -> int:
        """Bytes of one stored weight element (the storage dtype)."""
        return DTYPE_BYTES[self.dtype]

    @property
    def compute_dtype(self) -> str:
        """The dtype matmuls, attention and the logits run in: the autocast dtype, else the storage dtype."""
        return self.dtype if self.autocast == "none" else self.autocast

    @property
    def compute_bytes(self) -> int:
        return DTYPE_BYTES[self.compute_dtype]

    @property
    def precision(self) -> str:
        """The precision mode's name (``fp32``, ``bf16``, ``fp16``, ``bf16-mixed``, ``fp16-mixed``)."""
        return next(k for k, v in PRECISIONS.items() if v == (self.dtype, self.autocast))

    @property
    def mixed(self) -> bool:
        """fp32 master weights with autocast compute (bf16-mixed, fp16-mixed)."""
        return self.dtype == "float32" and self.autocast != "none"

    @property
    def loss_scaling(self) -> bool:
        """Does the Trainer scale the loss (``fp16=True``: a GradScaler)?"""
        return self.autocast == "float16"

    def trainer_flags(self) -> dict[str, bool]:
        """``TrainingArguments``' precision flags for this mode (``bf16`` / ``fp16``). DeepSpeed takes
        its own 16-bit mode with the same flag (``ds_config.json`` says the same)."""
        if self.strategy.startswith("deepspeed"):
            return {"bf16": self.dtype == "bfloat16", "fp16": self.dtype == "float16"}
        return {"bf16": self.autocast == "bfloat16", "fp16": self.autocast == "float16"}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingSettings:
        return cls(**check_fields(cls, data, "settings", SettingsError))
