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

SETTING_HELP = {
    "dtype": "storage and compute dtype of the model weights",
    "quant": "store the frozen base in 8-bit or 4-bit (bitsandbytes); default: what the method needs",
    "batch_size": "examples per forward pass (micro-batch)",
    "seq_len": "tokens per example (pad/truncate length)",
    "grad_accum": "micro-batches whose gradients are summed before each optimizer step",
    "gradient_checkpointing": "keep only block inputs; recompute the rest in backward",
    "optimizer": "optimizer and the state it keeps per trainable parameter",
    "device": "where training runs",
    "attention": "attention implementation (sdpa never stores the s x s score matrix)",
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

    def __post_init__(self) -> None:
        choices = {"dtype": DTYPE_BYTES, "optimizer": OPTIMIZERS, "device": DEVICES, "attention": ATTENTIONS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise SettingsError(f"setting {name}={getattr(self, name)!r}: choose from {', '.join(valid)}")
        if self.quant is not None and self.quant not in QUANTS:
            raise SettingsError(f"setting quant={self.quant!r}: choose from {', '.join(QUANTS)}")
        for name in ("batch_size", "seq_len", "grad_accum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(f"setting {name}={value!r}: must be a whole number of at least 1")

    @property
    def element_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingSettings:
        return cls(**check_fields(cls, data, "settings", SettingsError))
