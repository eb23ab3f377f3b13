"""Errors a user can cause. The CLI prints their message (exit code 2); the UI shows it."""


class WorkbenchError(Exception):
    """A problem with the user's input, with a message that says what to do about it."""


class UnknownModelError(WorkbenchError):
    """The model name is not bundled, not a local folder with a config.json, nor reachable."""


class ConfigError(WorkbenchError):
    """A config.json is missing a field the workbench needs, or has a wrong value."""


class MethodError(WorkbenchError):
    """An unknown method, an unknown knob, or a knob value out of range."""


class SettingsError(WorkbenchError):
    """A training setting (batch size, dtype, optimizer, ...) is invalid or incompatible."""
