"""Test helpers shipped as API, for people testing their own instrumented pipelines:
an in-memory capture of events and a frozen, advanceable clock.

    from voicepipe_obs.testing import FrozenClock, capture

    def test_transcribe_records_confidence():
        clock = FrozenClock("2026-01-05T09:00:00Z")
        with capture(clock=clock) as cap:       # also the default recorder (vp.stage ...)
            with cap.artifact("a-1", organization_id="org-1"):
                transcribe(audio)                # decorated with @vp.stage("transcription")
        done = cap.of_type("transcription_completed")[0]
        assert done["confidence_score"] == 0.94

Captured events are plain dicts with every column of the event schema, looking as
they would read back from Parquet (``event_id`` a string, timestamps aware UTC
datetimes). Nothing is written to disk and no background thread runs.

Owns nothing but these helpers; the recording logic is the real Recorder's
(``emit.py``), so what a capture shows is what a real Recorder would write.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from . import store
from .emit import (
    _DEFAULT,
    Durability,
    Recorder,
    Row,
    _Default,
    _repair_row,
    _rows_to_columns,
    _swap_default,
    format_event_id,
)
from .events import COLUMN_KINDS, COLUMN_NAMES

__all__ = ["CaptureRecorder", "FrozenClock", "capture"]


class FrozenClock:
    """A clock for ``Recorder(clock=...)``: it stands still until advanced.

    It returns epoch microseconds, as the Recorder expects. A Recorder given a clock
    also measures stage and artifact durations with it, so advancing the clock inside
    a stage gives an exact ``duration_ms``.

    Args:
        start: an aware datetime, an ISO 8601 string ("2026-01-05T09:00:00Z") or epoch
            seconds; default 2026-01-01T00:00:00Z.
    """

    def __init__(self, start: dt.datetime | str | float | None = None) -> None:
        self._lock = threading.Lock()
        self._us = _parse_instant(start if start is not None else "2026-01-01T00:00:00Z")

    def __call__(self) -> int:
        return self._us

    @property
    def now(self) -> dt.datetime:
        """The current time of the clock as an aware UTC datetime."""
        return store.from_us(self._us)

    def advance(
        self, seconds: float = 0.0, *, milliseconds: float = 0.0, delta: dt.timedelta | None = None
    ) -> dt.datetime:
        """Move the clock forward (never backward) and return the new time."""
        step = round(seconds * 1_000_000 + milliseconds * 1000)
        if delta is not None:
            step += delta // dt.timedelta(microseconds=1)
        if step < 0:
            raise ValueError("a FrozenClock only moves forward; use set() to jump")
        with self._lock:
            self._us += step
            return store.from_us(self._us)

    def set(self, when: dt.datetime | str | float) -> None:
        """Jump to an instant (aware datetime, ISO 8601 string or epoch seconds)."""
        with self._lock:
            self._us = _parse_instant(when)

    def __repr__(self) -> str:
        return f"FrozenClock({self.now.isoformat()!r})"


def _parse_instant(value: dt.datetime | str | float) -> int:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("FrozenClock needs a timezone-aware datetime (e.g. ...+00:00 or Z)")
        return store.to_us(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return round(value * 1_000_000)
    raise TypeError(f"expected a datetime, ISO string or epoch seconds, got {value!r}")


class CaptureRecorder(Recorder):
    """A Recorder that keeps every event as a dict in :attr:`events` instead of
    writing it. Validation, context propagation, truncation and redaction are the
    real Recorder's. ``strict`` defaults to True here: invalid fields raise
    :class:`~voicepipe_obs.errors.EmitError`.

    A value the real Recorder's Parquet writer would have to repair (a string with
    a lone surrogate) is treated like an invalid field too: EmitError when strict,
    else repaired as the writer would and counted in ``stats()["invalid"]``. The
    exception of a failing stage or artifact is never replaced by EmitError: its
    failure event is recorded, repaired, and the problem counted instead (the text
    of the exception itself is repaired where it is read, as by any Recorder).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], int] | None = None,
        strict: bool = True,
        error_message_max: int = 1000,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        durability: Durability = "memory"
        super().__init__(
            "voicepipe-capture:memory",
            durability=durability,
            strict=strict,
            recover=False,
            clock=clock,
            error_message_max=error_message_max,
            redact=redact,
        )
        self.events: list[dict[str, Any]] = []

    def _append(self, row: Row) -> bool:
        if self._closed:
            with self._lock:
                self._counts["dropped"] += 1
            return False
        repaired, problems = _repair_row(row)  # what the Parquet writer would store
        for problem in problems:
            self._invalid(problem)
        if repaired is None:  # pragma: no cover - rows are built by the Recorder
            with self._lock:
                self._counts["emitted"] += 1
                self._counts["dropped"] += 1
            return False
        event = _row_to_event(repaired, self._id_prefix)
        with self._lock:
            self._counts["emitted"] += 1
            self._counts["written"] += 1
            self.events.append(event)
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Nothing to write: always True."""
        return True

    def close(self, timeout: float | _Default | None = _DEFAULT) -> None:
        """Nothing to write: closes at once (``timeout`` is ignored)."""
        self._closed = True

    def types(self) -> list[str]:
        """The event types captured so far, in order."""
        return [e["event_type"] for e in self.events]

    def of_type(self, *event_types: str) -> list[dict[str, Any]]:
        """The captured events of the given types, in order."""
        return [e for e in self.events if e["event_type"] in event_types]

    def where(self, **fields: Any) -> list[dict[str, Any]]:
        """The captured events whose fields equal all the given values."""
        return [e for e in self.events if all(e.get(k) == v for k, v in fields.items())]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()

    def __repr__(self) -> str:
        return f"CaptureRecorder({len(self.events)} events)"


def _row_to_event(row: Row, id_prefix: str) -> dict[str, Any]:
    """The event as it would read back from Parquet (the writer's own transposition)."""
    columns = _rows_to_columns([row])
    event: dict[str, Any] = {}
    for name in COLUMN_NAMES:
        value = columns[name][0] if name in columns else None
        if name == "event_id":
            value = format_event_id(id_prefix, value) if type(value) is int else str(value)
        elif value is not None and COLUMN_KINDS[name] == "ts":
            value = store.from_us(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        event[name] = value
    return event


@contextmanager
def capture(
    *,
    clock: Callable[[], int] | None = None,
    strict: bool = True,
    error_message_max: int = 1000,
    redact: Callable[[str], str] | None = None,
) -> Iterator[CaptureRecorder]:
    """Capture events in memory for the duration of the block.

    The capture is also installed as the module-level default recorder, so code
    instrumented with ``vp.stage`` / ``vp.artifact`` / ``vp.emit`` records into it;
    the previous default is restored afterwards.
    """
    rec = CaptureRecorder(clock=clock, strict=strict, error_message_max=error_message_max, redact=redact)
    previous = _swap_default(rec)
    try:
        yield rec
    finally:
        _swap_default(previous)
        rec.close()
