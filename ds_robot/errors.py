"""Errors that the CLI turns into one plain sentence instead of a traceback."""


class DsRobotError(Exception):
    """A user-facing error: the message says what went wrong and how to fix it."""


class ConfigError(DsRobotError):
    """A configuration or data file is missing, unreadable or malformed."""


class ActionError(DsRobotError, ValueError):
    """An action has the wrong shape or contains NaN/Inf."""
