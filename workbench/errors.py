"""Errors a user can cause. The CLI prints their message (exit code 2); the UI shows it."""

from dataclasses import fields


class WorkbenchError(Exception):
    """A problem with the user's input, with a message that says what to do about it."""


class UnknownModelError(WorkbenchError):
    """The model name is not bundled, not a local folder with a config.json, nor reachable."""


class ConfigError(WorkbenchError):
    """A config.json is missing a field the workbench needs, or has a wrong value."""


class TemplateError(ConfigError):
    """A model's chat template failed to render (broken, or it reached for Python internals
    and the sandbox stopped it)."""


class MethodError(WorkbenchError):
    """An unknown method, an unknown knob, or a knob value out of range."""


class SettingsError(WorkbenchError):
    """A training setting (batch size, dtype, optimizer, ...) is invalid or incompatible."""


class DataFileError(WorkbenchError):
    """A dataset file that cannot be used: names the file and, where it applies, the
    line/row/column, and says what to do."""

    def __init__(self, file: str, problem: str, *, line: int | None = None, row: int | None = None,
                 column: str | None = None, hint: str = "") -> None:
        self.file, self.problem, self.line, self.row, self.column, self.hint = file, problem, line, row, column, hint
        where = "".join([
            f" line {line}" if line is not None else "",
            f" row {row}" if row is not None else "",
            f" column {column!r}" if column is not None else "",
        ])
        super().__init__(f"{file}{where}: {problem}" + (f" -- {hint}" if hint else ""))


def check_fields(cls, data: dict, where: str, error: type = None) -> dict:
    """``data`` for ``cls(**data)``: a dict whose keys are all fields of the dataclass, or
    ``error`` (default :class:`WorkbenchError`) naming the unknown ones and the valid ones."""
    if not isinstance(data, dict):
        raise (error or WorkbenchError)(f"{where}: expected an object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise (error or WorkbenchError)(
            f"{where}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return data
