"""The exception hierarchy. Every error the library raises for a user-facing
problem is a :class:`VoicepipeError`; the CLI prints its message on one line and
exits with its ``exit_code`` (documented in README, "Exit codes").

Messages say what was wrong and what to do next.
"""

from __future__ import annotations


class VoicepipeError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class ConfigError(VoicepipeError):
    """voicepipe.toml, an environment variable or a flag is invalid."""

    exit_code = 2


class UsageError(VoicepipeError):
    """A bad argument value (a filter, a time range) given to a library function."""

    exit_code = 2


class StoreError(VoicepipeError):
    """The data root cannot be read or written."""

    exit_code = 1


class BusyError(StoreError):
    """Another run of the same maintenance command (aggregate, compact) holds the
    root's run lock past the wait: nothing was done; the next run catches up."""

    exit_code = 5


class EmptyStoreError(StoreError):
    """No events under the root: nothing to report yet."""

    exit_code = 1


class NotFoundError(VoicepipeError):
    """An artifact, event or alert id that the store does not know."""

    exit_code = 1


class EmitError(VoicepipeError):
    """Raised by the Recorder only with ``strict=True`` (tests)."""


class RetryError(VoicepipeError):
    """A retry was refused or could not run."""

    exit_code = 4


class AlertError(VoicepipeError):
    """Alert evaluation or notification problem."""

    exit_code = 3
