"""What a chat request may ask, checked before any model is touched: sampling settings, the
prompt's shape, the limits read from the environment, and the errors a request can get. The
engine (:mod:`workbench.chat`) and the inference client both use these."""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass

from .errors import WorkbenchError

MAX_NEW_TOKENS = 4096
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.manual_seed accepts
PROMPT_CHARS_VARIABLE, DEFAULT_MAX_PROMPT_CHARS = "WORKBENCH_MAX_PROMPT_CHARS", 32_000
WAIT_VARIABLE, DEFAULT_WAIT_SECONDS = "WORKBENCH_MODEL_WAIT_S", 60.0


class ModelBusyError(WorkbenchError):
    """Another answer held the model longer than a caller may wait for it."""


class PromptTooLongError(WorkbenchError):
    """A prompt over the character cap, or too long for the model's context with its answer."""


class OperationCancelled(WorkbenchError):
    """The caller's ``stop`` event was set: the work ended early, its result is incomplete."""


def check_stop(stop: threading.Event | None, what: str) -> None:
    """Raise :class:`OperationCancelled` naming ``what`` once ``stop`` is set."""
    if stop is not None and stop.is_set():
        raise OperationCancelled(f"{what}: cancelled")


def env_setting(variable: str, default: float) -> float:
    """A number >= 0 from the environment variable ``variable`` (``default`` when unset)."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise WorkbenchError(f"{variable}={raw!r}: give a number >= 0 (default {default:g})")
    return value


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        ok = (isinstance(self.max_new_tokens, int) and not isinstance(self.max_new_tokens, bool)
              and 1 <= self.max_new_tokens <= MAX_NEW_TOKENS
              and _is_number(self.temperature) and self.temperature >= 0
              and _is_number(self.top_p) and 0 < self.top_p <= 1
              and isinstance(self.seed, int) and SEED_RANGE[0] <= self.seed <= SEED_RANGE[1])
        if not ok:
            raise WorkbenchError(f"sampling: max_new_tokens 1..{MAX_NEW_TOKENS}, temperature >= 0, top_p in (0, 1], "
                                 f"a whole-number seed; got max_new_tokens={self.max_new_tokens!r}, "
                                 f"temperature={self.temperature!r}, top_p={self.top_p!r}, seed={self.seed!r}")


def as_messages(prompt) -> list[dict[str, str]]:
    """A prompt as chat messages: text becomes one user message; anything else is refused."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise WorkbenchError("a prompt is text, or a list of messages {'role': ..., 'content': ...} with text")
    return messages
