"""The error tree: every error a user can cause carries a message, a hint and an exit code."""

from __future__ import annotations


class EdgekitError(Exception):
    """Base of edgekit's errors; `exit_code` is what the CLI exits with, `hint` says how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class ConfigError(EdgekitError):
    """A target file, option or recipe is invalid."""


class DataError(EdgekitError):
    """Calibration or evaluation data is missing, empty, non-finite or does not fit the model."""


class ModelError(EdgekitError):
    """The model file is missing, corrupt or of an unknown kind."""


class UnsupportedError(EdgekitError):
    """The model uses an operator or feature that a converter or runtime cannot handle."""


class ToolError(EdgekitError):
    """A tool that the chosen route needs is not installed."""


class EmulatorError(EdgekitError):
    """The ARM64 emulator is missing, broken, crashed or timed out."""

    exit_code = 1


class ConversionError(EdgekitError):
    """A converter failed on a model that passed all input checks: a bug to report, not a user mistake."""

    exit_code = 1


class DriftError(EdgekitError):
    """The device model drifts from the reference beyond the thresholds; the bundle is written, marked failed."""

    exit_code = 3

    def __init__(self, message: str, report: dict | None = None, hint: str = "") -> None:
        super().__init__(message, hint)
        self.report = report


class IntegrityError(EdgekitError):
    """A bundle file, or manifest.json itself, is not the one the build wrote and measured (sha256 differs)."""

    exit_code = 3


def first_line(exc: BaseException) -> str:
    """The first line of a library's error (at most 300 characters), or its type when it says nothing."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
