"""Training settings the planner, the measurer and (later) the worker share."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import SettingsError, check_fields

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
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


def default_dtype(device: str) -> str:
    """The dtype a run gets when none is chosen: float32 on the CPU (most CPUs have no fast
    bfloat16 kernels: a SmolLM2 LoRA step took 213 s in bfloat16 against 19 s in float32 on
    this project's 2-core machine), bfloat16 on a GPU."""
    return "float32" if device == "cpu" else "bfloat16"


SETTING_HELP = {
    "dtype": "storage and compute dtype of the model weights (default: float32 on CPU, where bfloat16 is ~10x "
             "slower, bfloat16 on GPU)",
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
        choices = {"dtype": DTYPE_BYTES, "optimizer": OPTIMIZERS, "device": DEVICES, "attention": ATTENTIONS,
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
        return DTYPE_BYTES[self.dtype]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingSettings:
        return cls(**check_fields(cls, data, "settings", SettingsError))
