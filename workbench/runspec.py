"""RunSpec: the one definition of a run. What is planned is what runs.

The UI, the API and the CLI all build it with :func:`build_run` from what the user typed;
the plan on screen is :func:`plan_run` of exactly that object; ``job.json`` stores it with
the plan's :func:`fingerprint`; the worker trains exactly it and records the same plan.

Its single sequence length (``settings.seq_len``) is both what the planner assumes and the
run's truncation length: no example in any batch is longer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import SettingsError, WorkbenchError, check_fields
from .memory import Plan, TrainingSettings, plan
from .memory.settings import DTYPE_BYTES, PRECISIONS, SETTING_RANGES, default_dtype, parse_precision
from .methods import get_method

BATCHING = ("pad", "group_by_length", "padding_free")

#: what the user sees for each setting in messages (the UI's labels)
SETTING_LABELS = {
    "batch_size": "Batch size", "seq_len": "Sequence length", "grad_accum": "Gradient accumulation",
    "gpus": "GPUs", "nodes": "Nodes", "max_steps": "Max steps", "epochs": "Epochs", "learning_rate": "Learning rate",
}


@dataclass(frozen=True)
class DataSpec:
    """Which file and how to read it (see :func:`workbench.data.inspect`). Truncation is the
    run's sequence length, not a setting of the data."""

    path: str
    name: str | None = None  # the file name the user gave (for display and the model card)
    format: str | None = None
    mapping: dict[str, str] | None = None
    train_on_prompt: bool = False
    val_fraction: float = 0.0
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise SettingsError(f"Validation share must be in [0, 1), got {self.val_fraction}")


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
    #: the probe: the second optimizer step (the first with the optimizer's state) trains on
    #: the longest examples of the dataset, so its measured peak is the run's worst case and
    #: is compared with the plan before the run goes on (a probe over the memory limit stops
    #: the run with suggestions); see :mod:`workbench.training.sampling`
    probe: bool = True

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.epochs <= 0:
            raise SettingsError("Learning rate and epochs must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise SettingsError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise SettingsError("Max steps must be a positive number of steps, or -1 for whole epochs")
        if self.batching not in BATCHING:
            raise SettingsError(f"batching={self.batching!r}: choose from {', '.join(BATCHING)}")


@dataclass(frozen=True)
class RunSpec:
    """Model, method and its (resolved) knobs, training settings, data and schedule."""

    model: str
    method: str
    knobs: dict[str, Any]
    settings: TrainingSettings
    data: DataSpec | None = None
    schedule: Schedule = field(default_factory=Schedule)

    def __post_init__(self) -> None:
        object.__setattr__(self, "knobs", get_method(self.method).resolve(self.knobs))
        if self.schedule.batching == "padding_free":
            method = get_method(self.method)
            if method.extra_tokens(self.knobs) or method.extra_kv_positions(self.knobs):
                raise SettingsError(f"batching=padding_free cannot be used with {self.method}: its virtual tokens "
                                    "are added per row, and a flattened batch is one row; use pad or group_by_length")

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "method": self.method, "knobs": self.knobs, "settings": self.settings.as_dict(),
                "data": asdict(self.data) if self.data else None, "schedule": asdict(self.schedule)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "run") -> RunSpec:
        d = dict(check_fields(cls, d, where))
        data = d.get("data")
        if isinstance(data, dict) and "cutoff" in data:  # job.json of an earlier version: seq_len truncates now
            data = {k: v for k, v in data.items() if k != "cutoff"}
        return cls(model=d["model"], method=d["method"], knobs=d.get("knobs") or {},
                   settings=TrainingSettings.from_dict(d.get("settings") or {}),
                   data=DataSpec(**check_fields(DataSpec, data, f"{where} data")) if data else None,
                   schedule=Schedule(**check_fields(Schedule, d.get("schedule") or {}, f"{where} schedule")))

    def with_settings(self, **changes) -> RunSpec:
        return replace(self, settings=replace(self.settings, **changes))


def label(name: str, style: str = "ui") -> str:
    """How a field is named in a message: the form's label, or the command line's flag."""
    return "--" + name.replace("_", "-") if style == "cli" else SETTING_LABELS.get(name, name.replace("_", " "))


def _field(name: str, style: str) -> str:
    """The field at the start of a message: bold in the browser (markdown), ``--flag:`` on the command line."""
    return f"{label(name, style)}:" if style == "cli" else f"**{label(name, style)}**"


def _bound(kind: type, x: float) -> str:
    return f"{int(x):,}" if kind is int or float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def allowed_range(kind: type, low: float | None, high: float | None) -> str:
    """``a whole number from 1 to 1,000,000``: how a message or a form's help gives a range."""
    what = "a whole number" if kind is int else "a number"
    if low is not None and high is not None:
        return f"{what} from {_bound(kind, low)} to {_bound(kind, high)}"
    if low is not None:
        return f"{what} of at least {_bound(kind, low)}"
    return what if high is None else f"{what} of at most {_bound(kind, high)}"


SHOWN_CHARS = 40


def _shown(value: Any) -> str:
    """A value as the user typed it (text that is not a number is quoted), cut to
    :data:`SHOWN_CHARS` characters (a message never echoes a whole hostile input)."""
    text = _as_typed(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}… ({len(text):,} characters)"


def _as_typed(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
            return value.strip()
        except ValueError:
            return repr(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return repr(value)
    return _bound(int if isinstance(value, int) else float, value)


def form_number(name: str, value: Any, kind: type = int, low: float | None = 1, high: float | None = None,
                style: str = "ui") -> int | float:
    """A number typed into a form or a flag (a number, or its text), checked against its
    allowed range, or one message naming the field by its label and giving the range:
    ``**Batch size** must be a whole number from 1 to 1,000,000; got 2.5``. Never rounded,
    floored or replaced by a default."""
    field_, allowed = _field(name, style), allowed_range(kind, low, high)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SettingsError(f"{field_} empty; enter {allowed}" if style == "cli" else
                            f"{field_} is empty: enter {allowed}")
    number = None
    if not isinstance(value, bool):
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond any float (10**400)
            number = None
    if number is None or number != number or number in (float("inf"), float("-inf")) or \
            (kind is int and not number.is_integer()):
        raise SettingsError(f"{field_} must be {allowed}; got {_shown(value)}")
    number = int(number) if kind is int else number
    if low is not None and number < low:
        raise SettingsError(f"{field_} must be at least {_bound(kind, low)} ({allowed}); got {_shown(value)}")
    if high is not None and number > high:
        raise SettingsError(f"{field_} must be at most {_bound(kind, high)} ({allowed}); got {_shown(value)}")
    return number


def whole_number(name: str, value: Any, minimum: int = 1, style: str = "ui") -> int:
    """A whole-number setting (its range: :data:`workbench.memory.settings.SETTING_RANGES`)."""
    low, high = SETTING_RANGES.get(name, (minimum, None))
    return form_number(name, value, int, low, high, style)


def _knob_values(method, given: dict[str, Any]) -> dict[str, Any]:
    """The form's numeric knob values, each checked like a setting (named by its label, with
    its range); an empty field is an error, not the default. (``None`` is "not given": the
    method's default, for API callers that leave a knob out.)"""
    out = dict(given)
    for knob in method.knobs:
        if knob.name in out and knob.kind in (int, float) and knob.choices is None:
            out[knob.name] = form_number(knob.name, out[knob.name], knob.kind, knob.minimum, knob.maximum)
    return out


def _number(name: str, value: Any, style: str = "ui") -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{label(name, style)}: expected a number, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise SettingsError(f"{label(name, style)}: expected a finite number, got {value!r}")
    return number


INT_SETTINGS = tuple(SETTING_RANGES)
MAX_STEPS = 10**9


def build_run(model: str, method: str, knobs: dict[str, Any] | None = None, settings: dict[str, Any] | None = None,
              data: dict[str, Any] | None = None, schedule: dict[str, Any] | None = None,
              untrusted_model_name: bool = False, style: str = "ui") -> RunSpec:
    """The run the user asked for, from raw form/flag values (numbers may be floats or
    strings; ``quant="auto"`` means the method's default). Every error names the field.
    ``untrusted_model_name``: the name came from a browser (see :mod:`workbench.safety`).
    ``style``: name fields as the form does (``ui``) or as flags (``cli``)."""
    if untrusted_model_name:
        from .safety import check_model_name

        model = check_model_name(model)
    if not isinstance(model, str) or not model.strip():
        raise WorkbenchError("Model: empty; pick a bundled model or type a hub id or folder")
    chosen = get_method(method)
    given = {k: v for k, v in (knobs or {}).items() if v is not None}
    unknown = sorted(set(given) - {k.name for k in chosen.knobs})
    if unknown:
        valid = ", ".join(label(k.name, style) for k in chosen.knobs) or "(none)"
        raise SettingsError(f"method {chosen.name!r} has no knob {', '.join(label(u, style) for u in unknown)}; "
                            f"its knobs are: {valid}")
    raw = dict(settings or {})
    if raw.get("quant") in ("auto", ""):
        raw["quant"] = None
    if style != "cli":  # the command line keeps the methods' own knob messages (they name the flag's knob)
        given = _knob_values(chosen, given)
    for name in INT_SETTINGS:
        if name in raw:
            raw[name] = whole_number(name, raw[name], style=style)
    if "gradient_checkpointing" in raw:
        raw["gradient_checkpointing"] = bool(raw["gradient_checkpointing"])
    if raw.get("strategy") in (None, ""):
        raw["strategy"] = "single" if raw.get("gpus", 1) * raw.get("nodes", 1) == 1 else "ddp"
    if raw.get("offload") in (None, ""):
        raw["offload"] = "none"
    _precision(raw)
    if raw.get("dtype") in (None, "", "auto"):
        raw["dtype"] = default_dtype(raw.get("device") or TrainingSettings.device)
    training = TrainingSettings.from_dict(raw)
    sched = dict(schedule or {})
    if "max_steps" in sched:
        sched["max_steps"] = -1 if sched["max_steps"] in (None, "", -1) else form_number(
            "max_steps", sched["max_steps"], int, 1, MAX_STEPS, style)
    for name in ("learning_rate", "epochs", "warmup_ratio"):
        if name in sched:
            sched[name] = _number(name, sched[name], style)
    data_spec = None
    if data is not None:
        d = dict(data)
        if d.get("format") in ("auto", ""):
            d["format"] = None
        if "val_fraction" in d:
            d["val_fraction"] = _number("val_fraction", d["val_fraction"] or 0, style)
        data_spec = DataSpec(**check_fields(DataSpec, d, "data", SettingsError))
    return RunSpec(model=model, method=chosen.name, knobs=given, settings=training, data=data_spec,
                   schedule=Schedule(**check_fields(Schedule, sched, "schedule", SettingsError)))


def _precision(raw: dict[str, Any]) -> None:
    """``precision`` (any common spelling: ``bf16-mixed``, ``bfloat16``, ``fp16``, ...) into the
    settings' ``dtype`` and ``autocast``, in place; a ``dtype`` given as a precision's spelling
    (``bf16``, ``bf16-mixed``) counts as that precision."""
    given = raw.pop("precision", None)
    dtype = raw.get("dtype")
    if dtype is not None and not isinstance(dtype, str):  # a list or a number from an API caller
        given, dtype = dtype, None
        raw.pop("dtype")
    if not isinstance(given, (str, type(None))):
        given = str(given)  # refused by parse_precision with its choices, the value shortened
    if given in (None, "", "auto") and dtype not in (None, "", "auto") and dtype not in DTYPE_BYTES:
        given = dtype
    if given in (None, "", "auto"):
        return
    mode = parse_precision(given)
    storage, autocast = PRECISIONS[mode]
    if dtype in DTYPE_BYTES and dtype != storage:
        raise SettingsError(f"dtype {dtype} and precision {mode} disagree: precision {mode} stores the weights in "
                            f"{storage}; give one of them")
    raw["dtype"], raw["autocast"] = storage, autocast


def plan_run(run: RunSpec, seq_len: int | None = None) -> Plan:
    """The plan of the run (``seq_len``: of its batches of that width instead, when the data
    is shorter than the sequence length)."""
    from .specs import load_model_spec

    settings = run.settings if seq_len is None else replace(run.settings, seq_len=seq_len)
    return plan(load_model_spec(run.model), get_method(run.method), run.knobs, settings)


def fingerprint(p: Plan | dict[str, Any]) -> str:
    """A short hash of a plan's every figure and setting: equal fingerprints, equal plans."""
    d = p.as_dict() if isinstance(p, Plan) else p
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings_fields() -> tuple[str, ...]:
    return tuple(f.name for f in fields(TrainingSettings))
