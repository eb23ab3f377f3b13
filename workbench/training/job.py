"""TrainJob: a frozen, JSON-serialisable description of one training run.

It is written to ``sessions/<id>/job.json`` before the worker starts, and it is all the
worker knows. Session ids are ours (``YYYYmmdd-HHMMSS-xxxxxxxx``): no user text in paths.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SettingsError, WorkbenchError, check_fields
from ..memory.settings import TrainingSettings
from ..methods import get_method

BATCHING = ("pad", "group_by_length", "padding_free")
SESSION_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")


def new_session_id() -> str:
    """UTC time to the millisecond, then random hex: ids sort in creation order (the run
    queue relies on it) and cannot be guessed."""
    now = time.time()
    millis = int(now * 1000) % 1000
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{millis:03x}{secrets.token_hex(3)[:5]}"


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
        raise WorkbenchError(f"invalid session id {session_id!r}")
    return session_id


@dataclass(frozen=True)
class DataSpec:
    """Which file and how to read it (see :func:`workbench.data.inspect`)."""

    path: str
    name: str | None = None  # the file name the user gave (for display and the model card)
    format: str | None = None
    mapping: dict[str, str] | None = None
    cutoff: int | None = None
    train_on_prompt: bool = False
    val_fraction: float = 0.0
    seed: int = 42


@dataclass(frozen=True)
class Schedule:
    """How long and how fast to train (passed to ``transformers.TrainingArguments``)."""

    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    logging_steps: int = 1
    save_steps: int = 0  # 0: save only at the end
    keep_checkpoints: int = 3  # the newest K intermediate checkpoints are kept
    eval_steps: int = 0  # 0: evaluate once per epoch when there is a validation split
    seed: int = 42
    #: "pad": random batches padded to their longest example; "group_by_length": batches of
    #: similar lengths (transformers' LengthGroupedSampler, less padding, another batch order);
    #: "padding_free": each batch flattened into one row with per-example position ids
    #: (transformers' DataCollatorWithFlattening), no pad tokens, the same loss.
    batching: str = "pad"

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.epochs <= 0:
            raise SettingsError("learning_rate and epochs must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise SettingsError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise SettingsError("max_steps must be a positive number of steps, or -1 for whole epochs")
        if self.batching not in BATCHING:
            raise SettingsError(f"batching={self.batching!r}: choose from {', '.join(BATCHING)}")


@dataclass(frozen=True)
class TrainJob:
    session_id: str
    model: str
    method: str
    knobs: dict[str, Any]
    settings: dict[str, Any]
    data: DataSpec
    schedule: Schedule = field(default_factory=Schedule)

    def __post_init__(self) -> None:
        check_session_id(self.session_id)
        method = get_method(self.method)
        object.__setattr__(self, "knobs", method.resolve(self.knobs))
        TrainingSettings.from_dict(self.settings)  # validates

    @property
    def training_settings(self) -> TrainingSettings:
        return TrainingSettings.from_dict(self.settings)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainJob:
        data = dict(check_fields(cls, data, "job.json"))
        data["data"] = DataSpec(**check_fields(DataSpec, data.get("data"), "job.json data"))
        data["schedule"] = Schedule(**check_fields(Schedule, data.get("schedule", {}), "job.json schedule"))
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainJob:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
