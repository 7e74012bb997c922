"""Errors that qrl reports to the user as one clear message (no traceback from the CLI)."""

from __future__ import annotations


class QrlError(Exception):
    """Base class: the message alone says what went wrong and what to fix."""


class ConfigError(QrlError, ValueError):
    """An unknown or invalid configuration value."""


class DataError(QrlError, FileNotFoundError):
    """Missing or malformed data set files."""


class CheckpointError(QrlError, ValueError):
    """A checkpoint that is missing, corrupt, or made for another model."""


class ActionError(QrlError, ValueError):
    """An action an environment cannot take (NaN, infinite, wrong shape)."""
