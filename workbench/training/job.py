"""TrainJob: one run (a :class:`~workbench.runspec.RunSpec`) in its session, with the
fingerprint of the plan that was shown before it started.

It is written to ``sessions/<id>/job.json`` before the worker starts, and it is all the
worker knows. Session ids are ours (``YYYYmmdd-HHMMSS-xxxxxxxx``): no user text in paths.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WorkbenchError, check_fields
from ..runspec import BATCHING, DataSpec, RunSpec, Schedule

__all__ = ["BATCHING", "DataSpec", "RunSpec", "Schedule", "TrainJob", "check_session_id", "new_session_id"]
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
class TrainJob:
    session_id: str
    run: RunSpec
    plan_fingerprint: str | None = None  # of the plan shown before the start (plan.json)

    def __post_init__(self) -> None:
        check_session_id(self.session_id)
        if self.run.data is None:
            raise WorkbenchError("a training job needs a dataset")

    # what the run is, read through the job (job.model reads better than job.run.model)
    model = property(lambda self: self.run.model)
    method = property(lambda self: self.run.method)
    knobs = property(lambda self: self.run.knobs)
    data = property(lambda self: self.run.data)
    schedule = property(lambda self: self.run.schedule)
    training_settings = property(lambda self: self.run.settings)
    settings = property(lambda self: self.run.settings.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "plan_fingerprint": self.plan_fingerprint, "run": self.run.as_dict()}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainJob:
        if isinstance(data, dict) and "run" not in data and "model" in data:  # job.json of an earlier version
            data = {"session_id": data.get("session_id"), "plan_fingerprint": None,
                    "run": {k: v for k, v in data.items() if k != "session_id"}}
        data = dict(check_fields(cls, data, "job.json"))
        return cls(session_id=data.get("session_id"), run=RunSpec.from_dict(data.get("run"), "job.json run"),
                   plan_fingerprint=data.get("plan_fingerprint"))

    @classmethod
    def load(cls, path: str | Path) -> TrainJob:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
