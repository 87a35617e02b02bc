"""The Recorder: stage decorators and context managers (sync and async), artifact
context propagation (contextvars), the in-memory buffer, the background flusher,
the crash spool and its recovery, and fork safety.

Decides *when* events are written; *where* and *how* (paths, atomic Parquet writes)
is ``store.py``. Never imports duckdb or click, and never raises into the host
pipeline at run time unless ``strict=True``: invalid values, unwritable roots and
full disks are counted (:meth:`Recorder.stats`) and logged at a limited rate.

Life of an event (two background threads per recorder)::

    emit() ──append (no lock)──▶ pending
        spooler, every spool_interval: pending ──▶ spool segment (per process) and
            the current batch; every flush_interval or batch_size: seal the batch
        writer: sealed batch ──▶ Parquet (one file per hour, named after the
            segment) ──▶ delete the segment
    durability="sync": emit() appends to the segment and the batch itself.
    object-store root (s3://…): the root above is a local outbox, and a third
        thread has each written file uploaded and deleted (outbox.py).

A segment whose Parquet files exist is never written twice (the names are
deterministic), so recovery of a dead process's spool is exactly-once. In an outbox
the file may be uploaded and gone, and recovery writes it again: the upload then
never replaces the object of its name (outbox.py), so it stays exactly-once. Rows are
compact tuples (see ``_R_ID``), transposed to columns only at write time.
"""

from __future__ import annotations

import atexit
import contextvars
import datetime as dt
import enum
import errno
import fcntl
import functools
import inspect
import itertools
import logging
import marshal
import math
import os
import secrets
import struct
import sys
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import CoroutineType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, overload

from . import remote, store
from .errors import EmitError
from .events import (
    COLUMN_KINDS,
    COLUMN_NAMES,
    CONTEXT_FIELDS,
    DISAMBIGUATION_EVENT,
    EVENT_STAGE,
    EVENT_TYPE_SET,
    EVENT_TYPES,
    INT32_MAX,
    INT32_MIN,
    NUM_COLUMNS,
    SETTABLE_FIELDS,
    STAGE_EVENTS,
    STAGES,
    TIMED_STAGES,
    closest,
)
from .outbox import Outbox, Shipped

if TYPE_CHECKING:  # pragma: no cover
    from typing import TypeAlias
    from uuid import UUID

    #: An id column's value as given: a string, or an int / UUID stored as str(value).
    IdValue: TypeAlias = str | int | UUID

log = logging.getLogger("voicepipe_obs")

_perf_ns = time.perf_counter_ns
_time_ns = time.time_ns

Durability = Literal["spool", "sync", "memory"]
F = TypeVar("F", bound=Callable[..., Any])
Row = Sequence[Any]  # a list or tuple in the compact layout below

# An event row, in memory and in the spool, is compact: nine slots instead of one per
# column, so building one on the hot path and transposing a batch to columns at write
# time stay cheap. Most columns are null in most events; they live in the extra dict.
#   [id counter, event_type, timestamp µs, context tuple (_CTX_COLUMNS) or None,
#    pipeline_stage, stage_started_at µs, stage_completed_at µs, duration_ms,
#    {any other column: value} or None]
# Values in the extra dict take precedence over the context tuple.
_R_ID, _R_TYPE, _R_TS, _R_CTX, _R_STAGE, _R_SSTART, _R_SEND, _R_DUR, _R_EXTRA = range(9)
_CTX_COLUMNS: Final = ("artifact_id", "voice_note_id", "organization_id", "coach_user_id", "retry_attempt")
_SLOTS: Final = {
    "pipeline_stage": _R_STAGE,
    "stage_started_at": _R_SSTART,
    "stage_completed_at": _R_SEND,
    "duration_ms": _R_DUR,
}
_NO_CONTEXT: Final = (None,) * len(_CTX_COLUMNS)


def _extra(fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """Annotated fields as a row's extra dict; the measured slots are not overridable."""
    extra = {k: v for k, v in fields.items() if k not in _SLOTS}
    return extra or None


def _rows_to_columns(rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Transpose compact rows into {column name: values}; absent columns are all null."""
    n = len(rows)
    ids, types, stamps, contexts, stages, starts, ends, durations, extras = zip(*rows, strict=True)
    columns: dict[str, Any] = {
        "event_id": ids,
        "event_type": types,
        "timestamp": stamps,
        "pipeline_stage": stages,
        "stage_started_at": starts,
        "stage_completed_at": ends,
        "duration_ms": durations,
    }
    without = contexts.count(None)  # C-speed scans first: most batches are uniform
    if without == 0:
        columns.update(zip(_CTX_COLUMNS, zip(*contexts, strict=True), strict=True))
    elif without < n:
        values = zip(*[_NO_CONTEXT if c is None else c for c in contexts], strict=True)
        columns.update(zip(_CTX_COLUMNS, values, strict=True))
    if not any(extras):
        return columns
    for i, extra in enumerate(extras):
        if extra:
            for name, value in extra.items():
                col = columns.get(name)
                if col is None:
                    col = columns[name] = [None] * n
                elif type(col) is tuple:
                    col = columns[name] = list(col)
                col[i] = value
    return columns


#: Event ids are ``<id_prefix><counter>``, the counter zero-padded to this many digits
#: so that the ids of one recorder sort in emission order.
_ID_DIGITS: Final = 12


def format_event_id(id_prefix: str, counter: int) -> str:
    """The event_id of a recorder's ``counter``-th event (rows hold the counter only)."""
    return id_prefix + str(counter).zfill(_ID_DIGITS)


def _event_id_array(ids: Sequence[Any], id_prefix: str) -> Any:
    """The event_id column (an Arrow array) for a batch's counters, built column-wise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        counters = pa.array(ids, type=pa.int64())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):  # ids made by hand
        return pa.array(
            [format_event_id(id_prefix, v) if type(v) is int else str(v) for v in ids], type=pa.string()
        )
    digits = pc.utf8_lpad(pc.cast(counters, pa.string()), _ID_DIGITS, "0")
    return pc.binary_join_element_wise(id_prefix, digits, "")


def _columns_to_table(columns: dict[str, Any], n: int, id_prefix: str) -> Any:
    """store.columns_to_table, with the event ids formatted here (zero-padded)."""
    ids = columns.pop("event_id")
    table = store.columns_to_table(columns, n)
    at = table.schema.get_field_index("event_id")
    return table.set_column(at, table.schema.field(at), _event_id_array(ids, id_prefix))


def _write_event_rows(
    root: Path,
    rows: Sequence[Sequence[Any]],
    stem: str,
    id_prefix: str,
    sync: Callable[[int], None] | None = None,
) -> None:
    """Write compact rows as Parquet, one file per hour named ``<stem>.parquet``; an
    hour whose file exists is skipped (exactly-once, see store.write_event_rows).
    ``sync``: see store.write_table."""
    if not rows:
        return
    if len(rows[0]) == NUM_COLUMNS:  # a full-width row (spool of an older version)
        rows = [
            (format_event_id(id_prefix, row[0]) if type(row[0]) is int else row[0], *row[1:]) for row in rows
        ]
        store.write_event_rows(root, rows, stem)
        return
    buckets: list[tuple[int, Sequence[Sequence[Any]], dict[str, Any] | None]]
    if len(rows) > _SLICE:
        buckets = [(h, b, None) for h, b in sorted(store.split_by_hour(rows).items())]
    else:
        columns = _rows_to_columns(rows)
        stamps = columns["timestamp"]
        first, last = min(stamps) // store.US_PER_HOUR, max(stamps) // store.US_PER_HOUR
        if first == last:  # the usual batch: one hour, transposed once
            buckets = [(first, rows, columns)]
        else:  # backfills, or a batch across an hour boundary
            buckets = [(h, b, None) for h, b in sorted(store.split_by_hour(rows).items())]
    for hour_number, bucket, cols in buckets:
        path = store.event_file(root, hour_number, stem)
        if path.exists():
            if _rows_in(path) == len(bucket):
                continue  # written before: by this writer, or by a recovery of its spool
            # Part of these rows under this name: a recoverer took the segment of a live
            # writer for a dead one's (its lock file was deleted). All of them go under a
            # name of their own; the copies are dropped by readers, nothing is lost.
            path = store.event_file(root, hour_number, f"{stem}-{len(bucket)}")
            if path.exists() and _rows_in(path) == len(bucket):
                continue
        store.write_table(path, _rows_to_table(bucket, id_prefix, cols), sync=sync)


#: rows turned into Arrow per step: each step holds the GIL throughout, so a large
#: batch or a recovered spool converted at once would stall the pipeline's threads
#: (~1 s for 500,000 rows); 20,000 rows take a few milliseconds
_SLICE: Final = 20_000


def _rows_to_table(
    rows: Sequence[Sequence[Any]], id_prefix: str, columns: dict[str, Any] | None = None
) -> Any:
    """Compact rows as an Arrow table (``columns``: already transposed), converted
    :data:`_SLICE` rows at a time."""
    if len(rows) <= _SLICE:
        return _columns_to_table(columns or _rows_to_columns(rows), len(rows), id_prefix)
    import pyarrow as pa

    parts = []
    for lo in range(0, len(rows), _SLICE):
        part = rows[lo : lo + _SLICE]
        parts.append(_columns_to_table(_rows_to_columns(part), len(part), id_prefix))
    return pa.concat_tables(parts)


def _rows_in(path: Path) -> int:
    """The row count of an event file (-1 when it cannot be read)."""
    import pyarrow.parquet as pq

    try:
        return int(pq.read_metadata(path).num_rows)
    except Exception:
        return -1


def _write_rows_repairing(
    root: Path,
    rows: Sequence[Row],
    stem: str,
    id_prefix: str,
    report: Callable[..., None] = log.error,
    sync: Callable[[int], None] | None = None,
) -> tuple[int, list[str], bool]:
    """Write rows (:func:`_write_event_rows`). When Arrow refuses a value that
    validation let through, repair the rows (:func:`_repair_rows`: the offending
    values coerced or left out, an unusable row left out) and write the rest.

    Returns (events written, values repaired, whether the rows were unwritable even
    after repair). Rows are set aside (True) only when a repair was made and the
    write still failed. Problems are logged through ``report`` (a recorder's report
    holds them back until it has released its locks). Any other error propagates
    (OSError, MemoryError, an Arrow failure that is not about a value): it may be
    transient, so the caller keeps the rows and retries later.
    """
    try:
        _write_event_rows(root, rows, stem, id_prefix, sync)
        return len(rows), [], False
    except OSError:
        raise
    except Exception as exc:
        first_error = exc
    repaired, problems, lost = _repair_rows(rows)
    if not problems and not lost:  # not a value problem: nothing to repair, retry later
        raise first_error
    if lost:
        report("voicepipe left out %d event rows without a usable id, type or time", lost)
    try:
        _write_event_rows(root, repaired, stem, id_prefix, sync)
    except OSError:
        raise
    except Exception as exc:
        report("voicepipe cannot write a batch of %d events (%r); set aside", len(rows), exc)
        return 0, problems, True
    return len(repaired), problems, False


_SPOOL_HEADER = struct.Struct("<II")  # payload length, crc32
_SPOOL_SUFFIX = ".spool"
_LOCK_SUFFIX = ".lock"


# ------------------------------------------------------------------ context state


@dataclass(frozen=True, slots=True)
class ArtifactContext:
    """The artifact a piece of code is working on; inherited by nested stages/emits.
    ``rec.artifact(...)`` makes it from validated values (ids as strings)."""

    artifact_id: str | None
    voice_note_id: str | None = None
    organization_id: str | None = None
    coach_user_id: str | None = None
    source_channel: str | None = None
    retry_attempt: int | None = None
    #: The context columns as a row stores them (see _CTX_COLUMNS).
    row: tuple[str | int | None, ...] = field(init=False, repr=False, compare=False)
    #: A retry scope (no artifact_received; retry_succeeded / retry_failed on exit):
    #: a retry_attempt was given, even one left out as invalid (pass True then).
    is_retry: bool = field(default=False, kw_only=True, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.retry_attempt is not None:
            object.__setattr__(self, "is_retry", True)
        object.__setattr__(
            self,
            "row",
            (
                self.artifact_id,
                self.voice_note_id,
                self.organization_id,
                self.coach_user_id,
                self.retry_attempt,
            ),
        )


_artifact_var: contextvars.ContextVar[ArtifactContext | None] = contextvars.ContextVar(
    "voicepipe_artifact", default=None
)
_stage_var: contextvars.ContextVar[StageRun | None] = contextvars.ContextVar("voicepipe_stage", default=None)


def current_artifact() -> ArtifactContext | None:
    """The artifact context bound in the calling context, if any."""
    return _artifact_var.get()


# ---------------------------------------------------------------------- helpers


class _RateLimitedLog:
    """At most one log line per key per ``interval`` seconds, with a suppressed count.

    Nothing is logged while the calling thread holds one of the recorder's locks
    (``holding()``): a logging handler is user code, and may call ``rec.stats()``,
    which takes the lock. Such lines wait in ``held`` until a thread outside the
    locks logs them (:meth:`drain`, called where the recorder's work ends)."""

    def __init__(self, interval: float = 60.0, holding: Callable[[], bool] | None = None) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.RLock()  # re-entered by a signal handler on the same thread
        self._holding = holding
        self.held: deque[tuple[int, str, tuple[object, ...]]] = deque()

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg += f" ({skipped} similar messages suppressed)"
        self.log(logging.WARNING, msg, *args)

    def log(self, level: int, msg: str, *args: object) -> None:
        """Log now, or, while the thread holds a recorder lock, later (drain)."""
        if self._holding is not None and self._holding():
            self.held.append((level, msg, args))
        else:
            self.drain()
            log.log(level, msg, *args)

    def error(self, msg: str, *args: object) -> None:
        self.log(logging.ERROR, msg, *args)

    def drain(self) -> None:
        """Log the lines held back, unless this thread holds a recorder lock."""
        held = self.held
        if not held or (self._holding is not None and self._holding()):
            return
        while held:
            try:
                level, msg, args = held.popleft()
            except IndexError:  # another thread took the last one
                return
            log.log(level, msg, *args)


def _is_owned(lock: Any) -> Callable[[], bool]:
    """Whether the calling thread holds ``lock`` (an RLock: CPython's has
    ``_is_owned``, the method threading.Condition relies on)."""
    return lock._is_owned  # type: ignore[no-any-return]


class _Invalid(Exception):
    pass


_SETTABLE_KINDS: Final = {name: kind for name, kind in COLUMN_KINDS.items() if name in SETTABLE_FIELDS}


def _check_value(name: str, value: Any) -> Any:
    """Validate (and normalise) one field value for the row; raises _Invalid (only).

    What comes back is an exact built-in type that both Arrow and the spool (marshal)
    take: str, int (int32 range), finite float, epoch µs or a dict of str. A string
    column also takes an int (not a bool) or a uuid.UUID, stored as ``str(value)``
    (ids straight from a database); subclasses (a StrEnum, an IntEnum) become their
    plain value. Anything else is invalid for the column.
    """
    if value is None:
        return None
    kind = _SETTABLE_KINDS.get(name)
    if kind is None:
        raise _Invalid(f"unknown field {name!r}")
    vtype = type(value)  # exact-type fast paths first (bool is not int here)
    if (vtype is str and kind == "str") or (
        vtype is int and kind == "i32" and INT32_MIN <= value <= INT32_MAX
    ):
        return value
    if vtype is float and kind == "f64" and math.isfinite(value):
        return value
    try:
        return _check_other(name, kind, value)
    except _Invalid:
        raise
    except Exception as exc:  # a value whose own methods fail (__int__, __repr__, ...)
        raise _Invalid(f"{name}: the value could not be checked ({type(exc).__name__})") from None


def _check_other(name: str, kind: str, value: Any) -> Any:
    """_check_value past the fast paths."""
    if kind == "str":
        if isinstance(value, str):
            return str.__str__(value)  # a subclass's plain value: marshal takes exact str only
        if isinstance(value, int) and not isinstance(value, bool):
            return str(int(value))
        uuid_module = sys.modules.get("uuid")  # a UUID exists only once uuid is imported
        if uuid_module is not None and isinstance(value, uuid_module.UUID):
            return str(value)
        raise _Invalid(f"{name} must be a string (or an int or UUID id), got {type(value).__name__}")
    if kind == "i32":
        if isinstance(value, int) and not isinstance(value, bool) and INT32_MIN <= value <= INT32_MAX:
            return int(value)
        raise _Invalid(f"{name} must be a 32-bit integer, got {_show(value)}")
    if kind == "f64":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            f = float(value)
            if math.isfinite(f):
                return f
        raise _Invalid(f"{name} must be a finite number, got {_show(value)}")
    if kind == "ts":
        return _to_us(name, value)
    if kind == "map":
        if isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return {str.__str__(k): str.__str__(v) for k, v in value.items()}
        raise _Invalid(f"{name} must be a mapping of strings to strings")
    raise _Invalid(f"unknown field {name!r}")  # pragma: no cover


def _show(value: Any, limit: int = 60) -> str:
    """repr(value) for a message: short, and never raising."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_us(name: str, value: Any) -> int:
    """An aware datetime or epoch seconds as epoch µs; raises _Invalid (only)."""
    try:
        if isinstance(value, dt.datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise _Invalid(f"{name} must be timezone-aware (e.g. datetime.now(timezone.utc))")
            return store.to_us(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            us = round(value * 1_000_000)  # epoch seconds
            if _MIN_US <= us <= _MAX_US:
                return int(us)
    except _Invalid:
        raise
    except Exception:  # an overflow, a broken tzinfo: invalid like any other value
        pass
    raise _Invalid(f"{name} must be an aware datetime or epoch seconds (years 1-9999), got {_show(value)}")


_MIN_US = store.to_us(dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc))
_MAX_US = store.to_us(dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc))


def _lock_file(path: Path) -> int | None:
    """Open and exclusively lock ``path``; the fd, or None if another process holds
    it or the file was removed (by a recoverer that finished) while we locked it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _same_file(fd, path):
            raise OSError("lock file replaced")
    except OSError:
        os.close(fd)
        return None
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _acquire_writer_lock(path: Path) -> int:
    """Create and lock a live writer's lock file. A recoverer may lock and unlink a
    fresh lock file between our open and flock, so the lock only counts when the
    path still names the file we locked; otherwise try again with a new file."""
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, path):
                return fd
        except BlockingIOError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        time.sleep(0.001)
    raise OSError(f"could not lock {path}")


def _prewarm_writer() -> None:
    """Import the Parquet writer's modules early, on the flusher thread. Imported
    during interpreter shutdown they fail (pyarrow pulls in pandas, which imports
    concurrent.futures.thread, which cannot register at exit any more), and the
    final flush at exit would be lost."""
    try:
        import concurrent.futures.thread  # noqa: F401

        import pyarrow as pa
        import pyarrow.compute
        import pyarrow.parquet

        pa.array([0])  # first use imports the pandas shim
    except Exception as exc:  # pragma: no cover - reported when a write fails
        log.debug("voicepipe could not preload pyarrow: %r", exc)


def _storable_str(value: str) -> str:
    """``value`` with lone surrogates (which Parquet cannot store) replaced by U+FFFD."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


def _repair_value(name: str, value: Any) -> tuple[Any, str | None]:
    """(a value column ``name`` can store, what was wrong or None): the
    :func:`_check_value` rules, except that a row's timestamps are epoch µs already."""
    if value is None:
        return None, None
    fixed: Any
    try:
        if COLUMN_KINDS.get(name) == "ts":
            if type(value) is not int or not _MIN_US <= value <= _MAX_US:
                raise _Invalid(f"{name} must be epoch microseconds, got {_show(value)}")
            fixed = value
        else:
            fixed = _check_value(name, value)
    except _Invalid as exc:
        return None, f"{exc}; left out"
    problem = None
    if type(fixed) is str:
        clean = _storable_str(fixed)
        if clean is not fixed:
            fixed, problem = clean, f"{name} is not valid UTF-8 (a lone surrogate); replaced with U+FFFD"
    elif type(fixed) is dict:
        clean_map = {_storable_str(k): _storable_str(v) for k, v in fixed.items()}
        if clean_map != fixed:
            fixed, problem = clean_map, f"{name} is not valid UTF-8 (a lone surrogate); replaced with U+FFFD"
    if problem is None and fixed is not value and fixed != value:
        problem = f"{name}: {_show(value)} stored as {_show(fixed)}"
    return fixed, problem


def _repair_row(row: Row) -> tuple[Row | None, list[str]]:
    """A row whose every value its column can store, and what had to be coerced or
    left out (each a value counted as invalid). None for a row that is unusable as a
    whole (no integer id, string event type or timestamp): only it is lost."""
    problems: list[str] = []

    def fix(name: str, value: Any) -> Any:
        fixed, problem = _repair_value(name, value)
        if problem is not None:
            problems.append(problem)
        return fixed

    out = list(row)
    if len(row) == NUM_COLUMNS:  # a full-width row (spool of an older version)
        for i, name in enumerate(COLUMN_NAMES[3:], start=3):
            out[i] = fix(name, row[i])
    elif len(row) == _R_EXTRA + 1:  # the compact layout
        ctx = row[_R_CTX]
        if ctx is not None:
            if isinstance(ctx, (tuple, list)) and len(ctx) == len(_CTX_COLUMNS):
                out[_R_CTX] = tuple(fix(name, v) for name, v in zip(_CTX_COLUMNS, ctx, strict=True))
            else:
                out[_R_CTX] = None
                problems.append(f"artifact context {_show(ctx)} is not a context tuple; left out")
        for name, slot in _SLOTS.items():
            out[slot] = fix(name, row[slot])
        extra = row[_R_EXTRA]
        if extra is not None:
            if isinstance(extra, Mapping):
                fields = {}
                for name, value in extra.items():
                    if isinstance(name, str) and name in _SETTABLE_KINDS and name not in _SLOTS:
                        fields[str.__str__(name)] = fix(name, value)
                    else:
                        problems.append(f"unknown field {_show(name)}; left out")
                out[_R_EXTRA] = fields or None
            else:
                out[_R_EXTRA] = None
                problems.append(f"event fields {_show(extra)} are not a mapping; left out")
    else:
        return None, []
    event_id, event_type, ts = row[_R_ID], row[_R_TYPE], row[_R_TS]
    if (
        not (type(event_id) is int or isinstance(event_id, str))
        or not isinstance(event_type, str)
        or type(ts) is not int
        or not _MIN_US <= ts <= _MAX_US
    ):
        return None, problems
    if isinstance(event_id, str):
        out[_R_ID] = _storable_str(str.__str__(event_id))
    out[_R_TYPE] = _storable_str(str.__str__(event_type))
    return tuple(out), problems


def _repair_rows(rows: Sequence[Row]) -> tuple[list[Row], list[str], int]:
    """Rows a Parquet write can take (see :func:`_repair_row`): the repaired rows, the
    values coerced or left out, and how many rows were unusable (left out)."""
    repaired: list[Row] = []
    problems: list[str] = []
    lost = 0
    for row in rows:
        fixed, row_problems = _repair_row(row)
        problems.extend(row_problems)
        if fixed is None:
            lost += 1
        else:
            repaired.append(fixed)
    return repaired, problems, lost


def _ensure_spool_dir(root: Path) -> Path:
    spool = root / store.SPOOL
    spool.mkdir(parents=True, exist_ok=True)
    os.chmod(spool, 0o700)
    return spool


# ----------------------------------------------------------------- spool format


def _spool_record(rows: list[Row]) -> bytes:
    try:
        payload = marshal.dumps(rows)
    except ValueError:  # a value marshal cannot take: validation should have caught it
        payload = marshal.dumps(_repair_rows(rows)[0])
    return _SPOOL_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_spool_segment(path: Path) -> list[Row]:
    """All complete records of a spool segment; a torn tail (a kill mid-write) ends it."""
    rows: list[Row] = []
    with open(path, "rb") as fh:
        data = fh.read()
    pos = 0
    while pos + _SPOOL_HEADER.size <= len(data):
        length, crc = _SPOOL_HEADER.unpack_from(data, pos)
        start = pos + _SPOOL_HEADER.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        try:
            rows.extend(marshal.loads(payload))
        except (ValueError, EOFError, TypeError):
            break
        pos = start + length
    return rows


#: seconds between checks that a live segment file is still linked (see _spool_rows)
_RECHECK: Final = 0.2


def _has_spool_segments(root: Path) -> bool:
    """Whether ``root``'s spool holds any segment (a cheap look: one directory read)."""
    try:
        with os.scandir(root / store.SPOOL) as entries:
            return any(e.name.endswith(_SPOOL_SUFFIX) for e in entries)
    except OSError:
        return False


def _segment_stem(writer_id: str, seq: int) -> str:
    return f"{writer_id}-{seq:08d}"


#: one recovery at a time in this process (the gate file's POSIX lock is per process)
_recover_lock = threading.Lock()


def recover_spools(root: str | os.PathLike[str], *, wait: bool = True) -> tuple[int, int]:
    """Write the spools of dead processes under ``root`` into Parquet, exactly once.

    A process is dead when its ``<writer>.lock`` can be locked; a segment whose lock
    file is missing (deleted by hand or by a temp cleaner) is left alone while a
    process of that id runs on this host. Returns (events recovered, segments
    recovered). Safe to run concurrently: recoverers are serialised by a lock, and
    re-writing a segment whose files exist is a no-op. ``wait``: when another
    recovery is running under the root, wait for it (the default) or return (0, 0) at
    once (what a Recorder does: the other recoverer writes those spools).

    For an object-store root (``s3://…``) this recovers into its local outbox on
    this host; the next Recorder on that root uploads the files.
    """
    rootp = remote.cache_dir(os.fspath(root), "outbox") if remote.is_remote(root) else Path(root)
    if not _recover_lock.acquire(blocking=wait):
        return 0, 0
    try:
        return _recover_spools(rootp, wait)
    finally:
        _recover_lock.release()


def _writer_alive(writer: str) -> bool:
    """Whether the process behind a writer id (``<host>-<pid>-<prefix>``) runs on
    this host: in this process, a recorder of that id still open."""
    parts = writer.rsplit("-", 2)
    if len(parts) != 3 or parts[0] != store.host_name() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return any(r._writer_id == writer and not r._closed for r in list(_recorders))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user
        return True
    try:  # a zombie is dead (Linux; elsewhere assume it runs)
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _recover_spools(rootp: Path, wait: bool) -> tuple[int, int]:
    spool = rootp / store.SPOOL
    if not spool.is_dir():
        return 0, 0
    gate = os.open(spool / ".recover", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    events = segments = 0
    try:
        # a POSIX lock, not flock: a child forked meanwhile does not inherit it (with
        # flock it would hold the gate for as long as it lives), so a fork never has
        # to wait for a recovery
        try:
            fcntl.lockf(gate, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if wait or exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            return 0, 0
        names = sorted(os.listdir(spool))
        writers = {n[: -len(_LOCK_SUFFIX)] for n in names if n.endswith(_LOCK_SUFFIX)}
        seg_names = [n for n in names if n.endswith(_SPOOL_SUFFIX)]
        orphans = {n.rsplit("-", 1)[0] for n in seg_names} - writers
        for writer in sorted(writers | orphans):
            if writer in orphans and _writer_alive(writer):
                continue  # its lock file was deleted, but it runs: its segments are live
            lock_path = spool / f"{writer}{_LOCK_SUFFIX}"
            fd = _lock_file(lock_path)
            if fd is None:
                continue  # alive
            kept = False  # a segment left for a later recovery
            try:
                for name in seg_names:
                    if name.rsplit("-", 1)[0] != writer:
                        continue
                    path = spool / name
                    rows = read_spool_segment(path)
                    written, poisoned = 0, False
                    if rows:
                        stem = name[: -len(_SPOOL_SUFFIX)]
                        try:
                            # one segment at a time under the fork gate: a fork waits
                            # for the write in progress, not for the whole recovery
                            with _fork_gate:
                                written, _, poisoned = _write_rows_repairing(
                                    rootp, rows, stem, writer.rsplit("-", 1)[-1]
                                )
                        except OSError:
                            raise
                        except Exception as exc:  # maybe transient: kept for the next recovery
                            log.error(
                                "voicepipe could not recover spool segment %s (will retry): %r", path, exc
                            )
                            kept = True
                            continue
                    events += written
                    segments += 1
                    if poisoned:  # kept for inspection; recovery ignores it
                        path.rename(path.with_name(path.name + ".bad"))
                    else:
                        path.unlink()
                if not kept:
                    lock_path.unlink(missing_ok=True)
            finally:
                os.close(fd)
    finally:
        os.close(gate)
    if segments:
        log.info("recovered %d events from %d spool segments under %s", events, segments, spool)
    return events, segments


# ----------------------------------------------------------------------- batches


class _Batch:
    """The events of one spool segment: in memory (rows) or only on disk (rows None)."""

    __slots__ = ("checked", "done", "fd", "held", "n", "path", "rows", "seq", "size")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.rows: list[Row] | None = []
        self.n = 0
        self.path: Path | None = None
        self.fd: int | None = None
        self.size = 0  # bytes of complete records in the segment
        # rows in memory not (successfully) written to the segment yet: the next spool
        # append to the batch writes them first (durability "spool" and "sync")
        self.held: list[Row] = []
        self.done = False  # written as Parquet: its segment is deleted, never re-made
        self.checked = 0.0  # when the segment was last seen still linked (monotonic)

    def close_fd(self) -> None:
        """Close the segment's file descriptor, if open (errors ignored)."""
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


# ----------------------------------------------------------------------- recorder

_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()


class _Default(enum.Enum):
    """close()'s default timeout: the recorder's ``close_timeout``."""

    DEFAULT = "close_timeout"


_DEFAULT: Final = _Default.DEFAULT

#: seconds a bounded close() waits, after its timeout, for the recorder's locks to
#: count what is lost and release the spool (held only for moments, unless a spool
#: write hangs on the disk)
_RELEASE_GRACE: Final = 0.5


class Recorder:
    """Records pipeline events under a data root.

    Args:
        root: data root directory (default: $VOICEPIPE_DATA, else ./voicepipe-data),
            or an object-store URI (``s3://bucket/prefix``): events are then written
            into a local outbox (:attr:`root`) exactly as into a local root, and a
            background thread has each finished file uploaded by a helper process
            (see outbox.py).
        flush_interval: seconds between Parquet writes.
        batch_size: write early when this many events are waiting.
        spool_interval: seconds between appends to the crash spool ("spool" mode).
        durability: "spool" (default; events reach the crash spool within
            ``spool_interval``), "sync" (each event reaches the spool before emit
            returns) or "memory" (no spool).
        max_buffer: events held in memory at most; beyond it events go to the spool
            only, and are dropped (and counted) if that fails too.
        error_message_max: error messages are truncated to this many characters.
        redact: applied to error messages before truncation.
        strict: raise :class:`EmitError` instead of counting and logging (tests).
        recover: recover dead processes' spools under the root on first use.
        clock: returns the current time as epoch microseconds (tests freeze it,
            simulations advance it). When given, it also measures stage and
            artifact durations, so a simulated clock yields simulated durations.
        close_timeout: seconds :meth:`close` (and so interpreter exit) waits for
            the final write at most; None waits for as long as it takes. At exit
            all open recorders share one bound, the largest of theirs.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        flush_interval: float = 1.0,
        batch_size: int = 10_000,
        spool_interval: float = 0.2,
        durability: Durability = "spool",
        max_buffer: int = 100_000,
        error_message_max: int = 1000,
        redact: Callable[[str], str] | None = None,
        strict: bool = False,
        recover: bool = True,
        clock: Callable[[], int] | None = None,
        close_timeout: float | None = 5.0,
    ) -> None:
        if durability not in ("spool", "sync", "memory"):
            raise ValueError(f"durability must be 'spool', 'sync' or 'memory', not {durability!r}")
        if flush_interval <= 0 or spool_interval <= 0 or batch_size < 1 or max_buffer < 1:
            raise ValueError("flush_interval, spool_interval, batch_size and max_buffer must be positive")
        if close_timeout is not None and not close_timeout >= 0:
            raise ValueError(f"close_timeout must be None or at least 0, not {close_timeout!r}")
        #: the object-store root events are uploaded to (None: a local root)
        self.remote: str | None = None
        given = store.given_root(root)
        if remote.is_remote(given):
            self.remote = remote.require_bucket(os.fspath(given))
            #: where events are written (for an object-store root: its local outbox)
            self.root = remote.cache_dir(self.remote, "outbox")
        else:
            self.root = store.resolve_root(root)
        self.flush_interval = float(flush_interval)
        self.spool_interval = float(min(spool_interval, flush_interval))
        self.batch_size = int(batch_size)
        self.durability: Durability = durability
        self.max_buffer = int(max_buffer)
        self.error_message_max = int(error_message_max)
        self.redact = redact
        self.strict = strict
        self._recover = recover
        self._clock = clock
        self.close_timeout = None if close_timeout is None else float(close_timeout)
        # The final flush at exit needs pyarrow, which (through pandas) imports
        # concurrent.futures.thread; that import fails once interpreter shutdown has
        # begun. Importing it here (a few ms) keeps a short-lived script's events.
        import concurrent.futures.thread  # noqa: F401

        self._init_process_state()
        _recorders.add(self)
        _close_at_multiprocessing_exit()
        if (recover and _has_spool_segments(self.root)) or (self._outbox and self._outbox.has_files()):
            # recover dead processes' spools, and upload what earlier processes left in
            # the outbox, now rather than at the first emit
            self._start()

    # -- process-local state (re-made in a forked child) --------------------------

    def _init_process_state(self, closed: bool = False) -> None:
        # Lock order: _write_lock, _fork_lock, _io_lock, _lock, _spool_lock (the fork
        # hooks take all but _write_lock).
        # Two threads per recorder: the spooler (pending rows → spool segment, sealing
        # batches) and the writer (sealed batches → Parquet), so that a slow write, the
        # first pyarrow import or a recovery never delays the spool.
        # The three outer locks are RLocks only to ask whether the calling thread holds
        # one (_holding; they are never taken twice): code that runs on a thread while
        # it holds one — a signal handler — must not wait for them, and a logging
        # handler (user code) is never called then. _spool_lock is only ever taken
        # with _lock or _io_lock held.
        self._write_lock = threading.RLock()  # one Parquet writer at a time
        # Held with _write_lock, except around the write's fsync (_fsync_unlocked): a
        # fork waits for the writer's Arrow and file work, never for a slow disk's
        # fsync (a system call: the writer then holds nothing a child could need).
        self._fork_lock = threading.RLock()
        self._lock = threading.RLock()  # batches, counters
        self._spool_lock = threading.Lock()  # segment files
        self._io_lock = threading.RLock()  # one spool tick at a time
        owned = (_is_owned(self._lock), _is_owned(self._io_lock), _is_owned(self._write_lock))
        self._holding: Callable[[], bool] = lambda: owned[0]() or owned[1]() or owned[2]()
        self._wake = threading.Event()  # wakes the spooler early (batch_size reached)
        self._write_wake = threading.Event()  # wakes the writer (a batch was sealed)
        self._wake_set = False
        self._waking = threading.local()  # .on: this thread is in _wake.set() (its lock)
        self._warn = _RateLimitedLog(holding=self._holding)
        # counts made where _lock cannot be taken (re-entered: its thread may hold it);
        # added to _counts under _lock by the next tick or stats()
        self._late_counts: deque[tuple[str, int]] = deque()
        self._sync = self.durability == "sync"
        self._stop = False
        self._closed = closed
        # close() stopped waiting for storage and released the spool: a write still
        # running completes, but nothing (no segment, batch or counter) is touched after
        self._abandoned = False
        self._threads: tuple[threading.Thread, ...] = ()
        self._pid = os.getpid()
        # Event ids are <id_prefix><12-digit counter>. Rows carry only the counter (an
        # int) until they are written: the string is made per column at write time, and
        # recovery finds the prefix in the segment's name (the writer id ends with it).
        self._id_prefix = secrets.token_hex(8)
        self._writer_id = f"{store.host_name()}-{self._pid}-{self._id_prefix}"
        self._id_counter = itertools.count(1)
        # Rows emitted but not yet taken by the flusher. Appended without a lock (a deque
        # append is atomic); only the flusher pops, under _io_lock. Unused with "sync".
        self._pending: deque[Row] = deque()
        self._seq = 0
        self._current = self._new_batch()
        self._overflow: _Batch | None = None
        self._sealed: deque[_Batch] = deque()
        self._mem_rows = 0  # rows held by batches (pending rows are len(_pending))
        self._retry_after = 0.0  # after a failed write, wait before the next attempt
        self._next_flush = time.monotonic() + self.flush_interval
        self._lock_fd: int | None = None
        self._spool_dir: Path | None = None
        self._spool_broken_until = 0.0
        self._spool_error: Exception | None = None  # the last failed spool write
        self._started = False
        self._flush_helper: threading.Thread | None = None  # flush(timeout=)'s thread
        self._flush_helper_lock = threading.Lock()  # taken alone, never with another
        self._flush_errors: list[Exception] = []  # what the helper met, for the next flush
        self._counts = dict.fromkeys(
            ("emitted", "written", "spooled", "recovered", "dropped", "invalid", "write_errors"), 0
        )
        # an object-store root: the uploader of the outbox (a new one in a forked
        # child, its thread and helper process started when needed)
        self._outbox: Outbox | None = None
        if self.remote is not None:
            self._outbox = Outbox(self.remote, self.root, self._warn.warning)

    def _new_batch(self) -> _Batch:
        self._seq += 1
        return _Batch(self._seq)

    def _after_fork_in_child(self) -> None:
        for fd in (self._lock_fd, self._current.fd, self._overflow.fd if self._overflow else None):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        for batch in self._sealed:
            if batch.fd is not None:
                try:
                    os.close(batch.fd)
                except OSError:
                    pass
        if self._outbox is not None:
            self._outbox.after_fork()  # the parent's upload helper is the parent's
        self._init_process_state(closed=self._closed)

    # -- public API ------------------------------------------------------------------

    def stage(self, name: str) -> StageSpec:
        """Time a pipeline stage: a decorator (sync or async) or a (async) context manager."""
        return StageSpec(name, self)

    def artifact(
        self,
        artifact_id: IdValue,
        *,
        organization_id: IdValue | None = None,
        coach_user_id: IdValue | None = None,
        voice_note_id: IdValue | None = None,
        source_channel: str | None = None,
        retry_attempt: int | str | None = None,
    ) -> ArtifactScope:
        """Bind an artifact's context; emits artifact_received on entry and
        artifact_completed / artifact_failed on exit.

        Ids are strings; an int or a uuid.UUID (an id straight from a database) is
        stored as ``str(value)``. Any other value is invalid: that field is left out
        (counted in ``stats()["invalid"]``; ``EmitError`` when strict) and everything
        else is recorded.

        With ``retry_attempt`` (a retry worker reopening an existing artifact) no
        artifact_received is emitted, every event inside carries the attempt, and the
        exit records retry_succeeded / retry_failed before the artifact's outcome. A
        string of digits (an attempt read from a queue message) is taken as its int;
        an invalid attempt is left out (counted invalid) but the scope is still a retry.
        """
        if type(retry_attempt) is str and retry_attempt.isascii() and retry_attempt.isdigit():
            retry_attempt = int(retry_attempt)
        given = (artifact_id, voice_note_id, organization_id, coach_user_id, source_channel, retry_attempt)
        values: list[Any] = []
        for name, value in zip(CONTEXT_FIELDS, given, strict=True):
            try:
                values.append(_check_value(name, value))
            except _Invalid as exc:
                self._invalid(f"{exc}; rec.artifact() leaves it out")
                values.append(None)
        if values[0] is None and artifact_id is None:
            self._invalid("artifact_id is required; rec.artifact(None) records events without it")
        # an attempt left out as invalid still makes a retry scope
        return ArtifactScope(self, ArtifactContext(*values, is_retry=retry_attempt is not None))

    def emit(
        self,
        event_type: str,
        *,
        timestamp: dt.datetime | float | None = None,
        attributes: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> str | None:
        """Record one event of any type. Context fields not given are taken from the
        enclosing artifact; field values are validated as in :meth:`artifact` and
        :meth:`annotate` (an invalid value leaves that field out; an unknown field or
        event type, or an invalid ``timestamp``, rejects the event).

        Returns the event_id, or None if the event was not recorded: rejected, emitted
        after :meth:`close`, or dropped at once (memory full and the spool failing).

        Safe in a signal handler that interrupted the recorder's own work on that
        thread (also in the middle of an emit): the event is then queued in memory
        without taking a lock and spooled within ``spool_interval``, whatever the
        durability (see ``_append_reentrant``).
        """
        try:
            if type(event_type) is not str or event_type not in EVENT_TYPE_SET:
                event_type = self._check_event_type(event_type)
            row = self._base_row(event_type)
            if timestamp is not None:
                row[_R_TS] = _to_us("timestamp", timestamp)
            if attributes is not None:
                fields["attributes"] = attributes
            if fields:
                self._apply_fields(row, fields)
            if row[_R_STAGE] is None:
                row[_R_STAGE] = EVENT_STAGE.get(event_type)
        except _Invalid as exc:
            self._invalid(str(exc))
            return None
        except Exception as exc:  # pragma: no cover - defensive
            self._internal_error(exc)
            return None
        if not self._append(tuple(row)):  # a tuple of atomic values: untracked by the cyclic GC
            return None
        return self._id_prefix + str(row[_R_ID]).zfill(_ID_DIGITS)  # = format_event_id, inlined

    @staticmethod
    def _check_event_type(event_type: Any) -> str:
        """The event type as a plain str (a StrEnum member is fine); raises _Invalid."""
        if isinstance(event_type, str):
            if event_type in EVENT_TYPE_SET:
                return str.__str__(event_type)
            hint = closest(event_type, EVENT_TYPES)
            raise _Invalid(
                f"unknown event type {_show(event_type)}" + (f" (did you mean {hint!r}?)" if hint else "")
            )
        raise _Invalid(f"event type must be a string, got {type(event_type).__name__}")

    def annotate(self, **fields: Any) -> None:
        """Attach fields to the completion/failure event of the innermost running stage."""
        run = _stage_var.get()
        if run is None:
            self._invalid("annotate() called outside a running stage")
            return
        run.annotate(**fields)

    def retry_handler(
        self, stage: str, *, deferred: bool = False
    ) -> Callable[[Callable[[str, int], Any]], Callable[[str, int], Any]]:
        """Register what `voicepipe retry` runs for a stage (or "full"); see retry.py."""
        from .retry import register_handler

        def decorate(fn: Callable[[str, int], Any]) -> Callable[[str, int], Any]:
            register_handler(stage, fn, recorder=self, deferred=deferred)
            return fn

        return decorate

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything emitted so far as Parquet. True when nothing is left over.

        Without ``timeout`` the write runs in the calling thread (waiting, if need
        be, for a background write in progress). With ``timeout`` (seconds) it runs
        on a helper thread and flush returns False if it has not finished by then;
        the write then completes in the background. After :meth:`close` nothing is
        written: True if close left nothing behind.

        In a signal handler that interrupted the recorder's own work on that thread
        (an emit, a flush) it writes nothing and returns False: that work holds the
        locks a flush needs.

        On an object-store root "written" means written into the local outbox: flush
        wakes the uploader but never waits for the store (:meth:`close` does, within
        its timeout).
        """
        if self._holding():
            return False
        errors: list[Exception] = []
        if not self._closed:
            if timeout is None:
                self._flush_into(errors)
            elif not self._flush_with_helper(max(timeout, 0.0)):
                if self.strict:
                    raise EmitError(f"flush did not finish within {timeout} s under {self.root}")
                return False
        with self._lock:  # also what a helper that outlived an earlier timeout met
            errors.extend(self._flush_errors)
            self._flush_errors.clear()
        for exc in errors:
            self._internal_error(exc)
        with self._lock:
            ok = not self._pending and not self._sealed and self._current.n == 0
        if self._outbox is not None and not self._closed:
            self._outbox.wake()  # uploaded in the background: flush never waits for the store
        if not ok and self.strict:
            raise EmitError(f"events could not be written under {self.root}; see rec.stats() and the log")
        return ok

    def _flush_with_helper(self, timeout: float) -> bool:
        """Flush on the helper thread, waiting at most ``timeout`` s; True when done.

        One helper at a time: while one runs (storage stuck) a new call waits on it
        instead of starting another, then flushes again for what came since.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._flush_helper_lock:  # started under it: others see it running
                helper = self._flush_helper
                mine = helper is None or not helper.is_alive()
                if mine:
                    helper = threading.Thread(
                        target=self._flush_helper_run, name="voicepipe-flush", daemon=True
                    )
                    try:
                        helper.start()
                    except RuntimeError:  # no new threads at interpreter shutdown
                        helper = None
                    self._flush_helper = helper
            if helper is None:
                self._flush_helper_run()
                return True
            helper.join(max(deadline - time.monotonic(), 0.0))
            if helper.is_alive():
                return False
            if mine:
                return True

    def _flush_helper_run(self) -> None:
        errors: list[Exception] = []
        self._flush_into(errors)
        if errors:
            with self._lock:
                self._flush_errors.extend(errors)

    def _flush_into(self, errors: list[Exception]) -> None:
        """A flush's work; nothing once the recorder is closed (checked under each
        lock, so a helper that outlived close() cannot touch the released spool)."""
        try:
            self._tick(force=True, unless_closed=True)
            self._write_sealed(force=True, unless_closed=True)
        except Exception as exc:
            errors.append(exc)
        self._drain_log()

    def close(self, timeout: float | _Default | None = _DEFAULT) -> None:
        """Flush, stop the background threads and release the spool. Idempotent.

        Waits at most ``timeout`` seconds for the final write (default: the
        recorder's ``close_timeout``; None: for as long as it takes), then gives up:
        a write still running completes in the background while the process lives,
        and touches nothing after. Events safe in the spool ("spool", "sync") stay
        there for the next Recorder on the root (or ``voicepipe compact``) to
        recover; a batch that was written as Parquet as well is found written then
        (its file name is fixed), so it is not written twice. Events that could be
        written neither as Parquet nor to the spool — in "memory" mode, every event
        not written when close gives up — are counted as dropped, with a warning.
        """
        limit = self.close_timeout if isinstance(timeout, _Default) else timeout
        _close_together([self], limit)

    def _begin_close(self) -> bool:
        """close()'s first step: stop taking events and wake the background threads.
        False when there is nothing to close (closed already, a forked child's copy,
        or called from a signal handler inside the recorder's own work)."""
        if self._closed or self._pid != os.getpid():
            return False
        if self._holding():  # a signal handler that interrupted the recorder's own work
            self._warn.warning(
                "close",
                "voicepipe: close() in the middle of the recorder's work (a signal handler) is ignored",
            )
            return False
        self._stop = True
        self._closed = True  # later emits are dropped and counted
        self._wake.set()
        self._write_wake.set()
        if self._outbox is not None:
            self._outbox.stop()  # close() ships the rest itself (_start_shipping)
        return True

    def _start_final_flush(self, deadline: float | None) -> threading.Thread | None:
        """With a deadline, start the final flush on a helper thread (None: run it
        in the caller, by _await_final_flush)."""
        if deadline is None:
            return None
        helper = threading.Thread(
            target=self._final_flush, args=(threading.current_thread(),), name="voicepipe-close", daemon=True
        )
        try:
            helper.start()
        except RuntimeError:  # no new threads at interpreter shutdown (Python 3.12.0-1): no bound
            return None
        return helper

    def _await_final_flush(self, helper: threading.Thread | None, deadline: float | None) -> bool:
        """Wait for the final flush (run it here when no ``helper`` runs it) until
        ``deadline``; True when it finished. Then give the writer thread (which may
        be recovering other processes' spools) what is left of the time to end."""
        caller = threading.current_thread()
        if helper is None:
            self._final_flush(caller)
            finished = True
        else:
            assert deadline is not None
            helper.join(max(deadline - time.monotonic(), 0.0))
            finished = not helper.is_alive()
        wait = max(5.0, self.flush_interval * 2)
        if deadline is not None:
            wait = min(wait, max(deadline - time.monotonic(), 0.0))
        writer = self._threads[1] if self._threads else None
        if finished and writer is not None and writer is not caller:
            writer.join(timeout=wait)
        return finished

    def _final_flush(self, caller: threading.Thread) -> None:
        """close()'s write: the spooler's last tick, then every sealed batch."""
        spooler = self._threads[0] if self._threads else None
        if spooler is not None and spooler is not caller:
            spooler.join(timeout=max(5.0, self.flush_interval * 2))
        try:
            self._tick(force=True)
            self._write_sealed(force=True)
        except Exception as exc:
            self._warn.warning("close", "voicepipe could not flush on close under %s: %s", self.root, exc)
        self._drain_log()

    def _release_at_close(self, finished: bool, limit: float | None, grace: float | None) -> None:
        """close()'s end: count what is lost, release memory, segments and the
        spool's lock. When the final flush did not finish (``finished`` False), the
        write still running is abandoned first (see _write_batches). With a bound,
        the recorder's locks are waited for until ``grace`` (monotonic; a spool
        write stuck on a hung disk holds them): then the spool stays locked until
        the process exits, and nothing is counted."""
        self._drain_log()

        def take(lock: Any) -> bool:
            if grace is None:
                return bool(lock.acquire())
            return bool(lock.acquire(timeout=max(grace - time.monotonic(), 0.0)))

        in_spool = lost = 0
        locked = take(self._lock)
        try:
            spool_locked = locked and take(self._spool_lock)
            try:
                if not finished:
                    self._abandoned = True  # under both locks when we have them: see _write_batches
                if spool_locked:
                    in_spool, lost = self._release_locked()
            finally:
                if spool_locked:
                    self._spool_lock.release()
        finally:
            if locked:
                self._lock.release()
        if not finished and spool_locked:
            self._warn.warning(
                "close-timeout",
                "voicepipe: close() stopped waiting for storage under %s after %s s; "
                "%d events stay in the spool for the next recorder (or voicepipe compact)",
                self.root,
                limit,
                in_spool,
            )
        if not (locked and spool_locked):
            self._warn.warning(
                "close-timeout-locks",
                "voicepipe: close() could not release the spool under %s (storage hangs); "
                "events not yet in the spool may be lost",
                self.root,
            )
        if lost:
            self._warn.warning("dropped", "voicepipe dropped %d events that could not be stored", lost)
        if self.strict and (lost or self._sealed or not finished):
            raise EmitError(f"events could not be written under {self.root}; see rec.stats() and the log")

    def _start_shipping(self, deadline: float | None) -> tuple[threading.Thread | None, list[Shipped]]:
        """close()'s upload of what the outbox holds, after the final write: with a
        deadline on a helper thread (None: run by _await_shipping in the caller)."""
        result: list[Shipped] = []
        if deadline is None or self._outbox is None:
            return None, result
        outbox = self._outbox
        helper = threading.Thread(
            target=lambda: result.append(outbox.ship(deadline)), name="voicepipe-ship", daemon=True
        )
        try:
            helper.start()
        except RuntimeError:  # no new threads at interpreter shutdown: run it in the caller
            return None, result
        return helper, result

    def _await_shipping(
        self, helper: threading.Thread | None, result: list[Shipped], deadline: float | None
    ) -> Shipped | None:
        """Wait for close()'s upload until ``deadline``; what it did (None: no outbox)."""
        if self._outbox is None:
            return None
        if helper is None:
            result.append(self._outbox.ship(deadline))
        else:
            helper.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        self._outbox.join(deadline)  # stopped: it ends once close's round has run
        self._outbox.close_helper(deadline)
        return result[0] if result else Shipped(0, True, "close_timeout reached", "close_timeout reached")

    def _report_outbox(self, shipped: Shipped | None) -> None:
        """close()'s last word on the outbox: when files could not all be uploaded,
        one line saying how many wait and where (strict: EmitError)."""
        if self._outbox is None or shipped is None or not shipped.failed:
            return
        waiting = self._outbox.pending()
        if waiting == 0:
            return
        where = remote.display(self._outbox.url)
        self._warn.log(
            logging.WARNING,
            "voicepipe: %d event files wait in %s for %s (%s); the next Recorder on that root uploads them",
            waiting,
            self.root,
            where,
            shipped.reason,
        )
        if self.strict:
            raise EmitError(
                f"{waiting} event files could not be uploaded to {where} ({shipped.error}); they wait in {self.root}"
            )

    def _release_locked(self) -> tuple[int, int]:
        """With _lock and _spool_lock held: count the events lost and release what
        close() holds. Returns (events left in the spool, events lost)."""
        # an emit that raced with close, and rows neither written nor spooled, are lost
        batches = [b for b in (self._current, *self._sealed) if not b.done]
        lost = len(self._pending) + sum(self._unspooled(b) for b in batches if b.rows is not None)
        in_spool = 0
        if self.durability != "memory":
            in_spool = sum(b.n for b in batches) - lost + len(self._pending)
            if self._overflow is not None:
                in_spool += self._overflow.n
        self._pending.clear()
        self._counts["dropped"] += lost
        # nothing stays in memory: what is not lost waits in the spool
        for batch in [self._current, *self._sealed]:
            if batch.rows is not None:
                self._mem_rows -= len(batch.rows)
                batch.rows = None
        for batch in [self._current, *self._sealed, *([self._overflow] if self._overflow else [])]:
            batch.close_fd()
        if self._lock_fd is not None:
            try:
                leftover = self._spool_dir is not None and any(
                    n.startswith(self._writer_id) and n.endswith(_SPOOL_SUFFIX)
                    for n in os.listdir(self._spool_dir)
                )
                if not leftover and self._spool_dir is not None:
                    (self._spool_dir / f"{self._writer_id}{_LOCK_SUFFIX}").unlink(missing_ok=True)
            except OSError:
                pass
            os.close(self._lock_fd)  # releasing the lock lets others recover leftovers
            self._lock_fd = None
        return max(in_spool, 0), lost

    def stats(self) -> dict[str, int]:
        """Counters: emitted, written, spooled, recovered, dropped, invalid,
        write_errors, and buffered (events in memory now). On an object-store root
        also uploaded_files (event files this recorder uploaded), upload_errors
        (failed upload rounds) and pending_uploads (files waiting in the outbox now,
        any process's).

        Called on a thread that is inside the recorder (a signal handler that
        interrupted it) it does not wait for the recorder's lock: the counters are
        read as they are, and may be a moment out of step with each other."""
        if self._holding():
            out = dict(self._counts)
            for name, n in list(self._late_counts):
                out[name] += n
        else:
            with self._lock:
                self._add_late_counts()
                out = dict(self._counts)
        waiting = len(self._pending)
        out["emitted"] += waiting
        out["buffered"] = self._mem_rows + waiting
        if self._outbox is not None:
            out["uploaded_files"] = self._outbox.uploaded
            out["upload_errors"] = self._outbox.errors
            out["pending_uploads"] = self._outbox.pending()
        return out

    def _add_late_counts(self) -> None:
        """With _lock held: add the counts made where it could not be taken."""
        late = self._late_counts
        while late:
            name, n = late.popleft()
            self._counts[name] += n

    def _count(self, name: str, n: int = 1) -> None:
        """Add to a counter; never waits for _lock on a thread that holds it."""
        if self._holding():
            self._late_counts.append((name, n))
        else:
            with self._lock:
                self._counts[name] += n

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        root = remote.display(self.remote) if self.remote is not None else str(self.root)
        return f"Recorder(root={root!r}, durability={self.durability!r})"

    # -- building rows ------------------------------------------------------------

    def _now_us(self) -> int:
        if self._clock is not None:
            return self._clock()
        return time.time_ns() // 1000

    def _event_id(self, row: Row) -> str:
        """The event_id a row will be written with (rows hold the counter only)."""
        return format_event_id(self._id_prefix, row[_R_ID])

    def _base_row(self, event_type: str, ts_us: int | None = None) -> list[Any]:
        """A new row (layout: see _R_ID) with the id, type, time and artifact context."""
        if ts_us is None:
            ts_us = time.time_ns() // 1000 if self._clock is None else self._clock()
        ctx = _artifact_var.get()
        return [
            next(self._id_counter),
            event_type,
            ts_us,
            None if ctx is None else ctx.row,
            None,
            None,
            None,
            None,
            None,
        ]

    def _apply_fields(self, row: list[Any], fields: Mapping[str, Any]) -> None:
        extra: dict[str, Any] = {}
        for name, value in fields.items():
            try:
                checked = _check_value(name, value)
            except _Invalid as exc:
                if self.strict or name not in SETTABLE_FIELDS:
                    raise
                self._invalid(str(exc))
                continue
            if name == "error_message" and checked is not None:
                checked = self._clean_message(checked)
            slot = _SLOTS.get(name)
            if slot is None:
                extra[name] = checked
            else:
                row[slot] = checked
        row[_R_EXTRA] = extra or None

    def _clean_message(self, message: str) -> str:
        if self.redact is not None:
            try:
                message = self.redact(message)
            except Exception:
                message = "<redaction failed>"
            if not isinstance(message, str):
                message = "<redaction failed>"
        if type(message) is not str:
            message = str.__str__(message)  # a str subclass: its plain value
        if len(message) > self.error_message_max:
            message = message[: max(self.error_message_max - 1, 0)] + "…"
        return message

    def _error_fields(self, exc: BaseException) -> tuple[str, str]:
        """(error_code, error_message) of a failure; never raises, so a failure is
        recorded whatever the exception does: an ``error_code`` that is not a string,
        or whose property raises, gives the class name; a failing ``str(exc)`` a
        placeholder. The text is the pipeline's, not a value the caller passed, so a
        lone surrogate in it (a file name decoded with surrogateescape) is replaced
        with U+FFFD here rather than counted invalid (or raised, when strict)."""
        try:
            code = getattr(exc, "error_code", None)
        except Exception:
            code = None
        code = _storable_str(str.__str__(code)) if isinstance(code, str) else type(exc).__name__
        try:
            message = str(exc)
        except Exception:
            message = "<unprintable exception>"
        return code, _storable_str(self._clean_message(message or code))

    # -- the buffer ---------------------------------------------------------------

    def _append(self, row: Row) -> bool:
        """Hand a finished row to the buffer; False when it was dropped at once.
        Lock-free on the default path: a deque append is atomic and the flusher pops
        from the other end. Every path that takes a lock first makes sure that this
        thread does not hold it already (_append_reentrant)."""
        if self._closed:
            self._count("dropped")
            self._warn.warning("closed", "event emitted after Recorder.close() was dropped")
            return False
        kept = True
        if self._sync:
            if self._holding():
                return self._append_reentrant(row)
            kept = self._append_sync(row)
        else:
            pending = self._pending
            if len(pending) + self._mem_rows >= self.max_buffer:
                if self._holding():
                    return self._append_reentrant(row)
                with self._lock:
                    self._counts["emitted"] += 1
                    kept = self._overflow_row(row)
            else:
                pending.append(row)
                if len(pending) >= self.batch_size and not self._wake_set:
                    self._wake_spooler()
        if not self._started and not self._holding():
            self._start()
        if self._warn.held:
            self._drain_log()
        return kept

    def _drain_log(self) -> None:
        """Log what was held back while a recorder lock was held (never raises)."""
        try:
            self._warn.drain()
        except Exception:  # pragma: no cover - logging reports its handlers' errors itself
            pass

    def _wake_spooler(self) -> None:
        """Wake the spooler early. Event.set takes a lock: a signal handler that
        interrupted this thread in there must not set it again (and wait forever)."""
        waking = self._waking
        if getattr(waking, "on", False):
            return
        self._wake_set = True
        waking.on = True
        try:
            self._wake.set()
        finally:
            waking.on = False

    def _append_reentrant(self, row: Row) -> bool:
        """An emit on a thread that holds the recorder's lock: a signal handler that
        interrupted that thread in the recorder's work (in "sync" mode: in the middle
        of an emit). Taking the lock would wait forever for the interrupted code, so
        the row is queued in memory without it, as in "spool" mode, whatever the
        durability: the spooler appends it to the spool within ``spool_interval``
        (``max_buffer`` is not applied to it: that needs the lock)."""
        self._pending.append(row)
        return True

    def _append_sync(self, row: Row) -> bool:
        """durability="sync": the row reaches the current segment before emit returns.
        Spooling and adding to the batch happen under one lock, so a row is always in
        the same batch in memory as on disk (sealing takes the same lock)."""
        with self._lock:
            self._counts["emitted"] += 1
            if self._mem_rows >= self.max_buffer:
                return self._overflow_row(row)
            batch = self._current
            if batch.rows is None:  # close() released the batches after this emit began
                self._counts["dropped"] += 1
                return False
            outcome, spooled = self._spool_rows(batch, [row])
            self._count_spool(outcome, spooled)
            assert batch.rows is not None  # the current batch is never spilled
            batch.rows.append(row)
            batch.n += 1
            self._mem_rows += 1
            if batch.n >= self.batch_size and not self._wake_set:
                self._wake_spooler()
            if outcome is False:
                self._raise_if_strict_spool()
        return True

    def _overflow_row(self, row: Row) -> bool:
        """Called with _lock held when memory is full: spool only, else drop (False)."""
        outcome: bool | None = None
        if self.durability != "memory":
            if self._overflow is None:
                self._overflow = self._new_batch()
                self._overflow.rows = None
            outcome, spooled = self._spool_rows(self._overflow, [row])
            if self._count_spool(outcome, spooled):
                self._overflow.n += 1
                return True
        self._counts["dropped"] += 1
        self._warn.warning(
            "dropped",
            "voicepipe buffer full (%d events) and spool unavailable: events dropped",
            self.max_buffer,
        )
        if outcome is False:
            self._raise_if_strict_spool()
        return False

    def _count_spool(self, outcome: bool | None, n: int) -> bool:
        """Count a _spool_rows outcome: n spooled, or one failed write. A skipped
        attempt (None: the spool is off, or failed moments ago) is no new error."""
        if outcome:
            self._counts["spooled"] += n
        elif outcome is False:
            self._counts["write_errors"] += 1
        return bool(outcome)

    def _spool_rows(self, batch: _Batch, rows: list[Row]) -> tuple[bool | None, int]:
        """Append rows to a batch's segment file, after the batch's rows that an
        earlier append could not write (``batch.held``). Never raises.

        Returns (outcome, rows newly in the spool): True when written, False when the
        write failed, None when skipped (durability="memory", the batch already
        written as Parquet, or the spool failed less than a second ago). Rows of a
        batch in memory that were not written are held in ``batch.held`` for the next
        append (or the spooler's retry, see _respool_held), so that the spool, once it
        works again, holds every accepted event exactly once. The caller counts the
        outcome (with _lock held) through _count_spool. Its callers hold _lock or
        _io_lock: its warning is logged once they are released (_RateLimitedLog).

        A failed append is cut off again (ftruncate to the last good size), so a
        torn record can never hide the records appended after it from recovery.
        """
        if self.durability == "memory":
            return None, 0
        now = time.monotonic()
        with self._spool_lock:
            in_memory = batch.rows is not None  # an overflow batch has its rows on disk only
            if batch.done or self._abandoned:
                return None, 0
            if now < self._spool_broken_until:
                if in_memory and rows:
                    batch.held.extend(rows)
                return None, 0
            todo = batch.held + rows if batch.held else rows
            new = len(todo)
            if not new:
                return True, 0
            try:
                # at most every _RECHECK s (an fstat per event would cost "sync" mode
                # ~25%): appends in between to a deleted segment are spooled again
                if (
                    batch.fd is not None
                    and now >= batch.checked + _RECHECK
                    and os.fstat(batch.fd).st_nlink == 0
                ):
                    # the segment was deleted under us (the spool directory removed, or a
                    # recoverer on another host took us for dead): start it again with
                    # every row the batch holds, so a crash still loses nothing
                    os.close(batch.fd)
                    batch.fd = None
                    if in_memory:
                        assert batch.rows is not None
                        known = {id(r) for r in batch.rows}
                        todo = [*batch.rows, *(r for r in todo if id(r) not in known)]
                if batch.fd is None:
                    self._hold_writer_lock()
                    assert self._spool_dir is not None
                    path = self._spool_dir / f"{_segment_stem(self._writer_id, batch.seq)}{_SPOOL_SUFFIX}"
                    batch.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                    os.fchmod(batch.fd, 0o600)
                    batch.path = path
                    batch.size = os.fstat(batch.fd).st_size
                data = _spool_record(todo)
                try:
                    written = os.write(batch.fd, data)
                    if written != len(data):
                        raise OSError(f"short write to spool ({written} of {len(data)} bytes)")
                except BaseException:
                    try:
                        os.ftruncate(batch.fd, batch.size)
                    except OSError:
                        pass
                    raise
                batch.size += written
                if now >= batch.checked + _RECHECK:
                    batch.checked = now
                if batch.held:
                    batch.held = []
            except Exception as exc:
                self._spool_broken_until = now + min(self.flush_interval, 1.0)
                self._spool_error = exc
                if in_memory:
                    batch.held = todo if todo is not rows else list(rows)
                self._warn.warning("spool", "voicepipe spool write failed under %s: %s", self.root, exc)
                return False, 0
        return True, new

    def _unspooled(self, batch: _Batch) -> int:
        """How many of an in-memory batch's rows are in no spool segment."""
        if self.durability == "memory":
            return len(batch.rows or ())
        return len(batch.held)

    def _respool_held(self) -> None:
        """The spooler, every tick: write the rows that earlier spool appends could not
        (a full disk, an unwritable spool) to their batches' segments, once the spool
        works again. Sealed batches too: while the Parquet write fails they would
        otherwise stay in memory only, and a crash would lose them."""
        with self._lock:
            batches = [b for b in (self._current, *self._sealed) if b.held and not b.done]
        for batch in batches:
            outcome, spooled = self._spool_rows(batch, [])
            if batch is not self._current:  # sealed: its segment is complete again
                with self._spool_lock:
                    batch.close_fd()
            with self._lock:
                self._count_spool(outcome, spooled)
            if outcome is not True:
                break  # failing or skipped: the next tick tries again

    def _raise_if_strict_spool(self) -> None:
        """strict, in the emitting thread: the spool write just failed (the event is
        kept in memory or counted as dropped first; the spooler thread never raises)."""
        if self.strict:
            raise EmitError(f"spool write failed under {self.root}: {self._spool_error}")

    def _hold_writer_lock(self) -> None:
        """Make sure this writer's lock file exists and is the one it holds (called
        with _spool_lock held, before a segment is opened): a lock file deleted by hand
        or by a temp cleaner, or a spool directory removed, is made again, so no
        recoverer takes this live writer's segments for a dead one's."""
        lock = self.root / store.SPOOL / f"{self._writer_id}{_LOCK_SUFFIX}"
        if self._lock_fd is not None:
            if _same_file(self._lock_fd, lock):
                return
            os.close(self._lock_fd)
            self._lock_fd = None
        self._spool_dir = _ensure_spool_dir(self.root)
        self._lock_fd = _acquire_writer_lock(lock)

    # -- background work ----------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        _close_at_multiprocessing_exit()  # multiprocessing may be imported since __init__
        self._threads = (
            threading.Thread(target=self._run_spooler, name="voicepipe-spool", daemon=True),
            threading.Thread(target=self._run_writer, name="voicepipe-writer", daemon=True),
        )
        for thread in self._threads:
            thread.start()
        if self._outbox is not None:
            self._outbox.start()
            self._outbox.wake()  # what earlier processes left goes up now

    def recover(self, *, wait: bool = True) -> int:
        """Recover dead processes' spools under the root now; the number of events.
        ``wait``: see :func:`recover_spools` (a recorder starting up does not wait)."""
        try:
            recovered, _ = recover_spools(self.root, wait=wait)
        except Exception as exc:
            self._warn.warning("recover", "voicepipe could not recover spools under %s: %s", self.root, exc)
            if self.strict:
                raise
            return 0
        with self._lock:
            self._counts["recovered"] += recovered
        return recovered

    def _run_spooler(self) -> None:
        while not self._stop:
            self._wake.wait(self.spool_interval)
            self._wake.clear()
            if self._stop:
                break
            try:
                if self._tick(force=False, unless_closed=True):
                    self._write_wake.set()
            except Exception as exc:  # the threads must survive anything, strict or not
                self._warn.warning("internal", "voicepipe spooler error: %r", exc)
            self._drain_log()

    def _run_writer(self) -> None:
        with _fork_gate:  # a fork during an import would deadlock the child's next import
            _prewarm_writer()
        if self._recover:
            try:
                self.recover(wait=False)
            except Exception as exc:
                self._warn.warning("recover", "voicepipe spool recovery failed: %r", exc)
            if self._outbox is not None:
                self._outbox.wake()  # the recovered events' files
        while not self._stop:
            self._write_wake.wait(self.flush_interval)
            self._write_wake.clear()
            if self._stop:
                break
            try:
                self._write_sealed(force=False, unless_closed=True)
            except Exception as exc:
                self._warn.warning("internal", "voicepipe writer error: %r", exc)
            self._drain_log()

    def _write_sealed(self, force: bool, unless_closed: bool = False) -> None:
        """Write the sealed batches as Parquet (after a failure, not before the retry delay)."""
        with self._write_lock, self._fork_lock:
            if unless_closed and self._closed:
                return
            with self._lock:
                batches = list(self._sealed)
            if batches and (force or time.monotonic() >= self._retry_after):
                self._write_batches(batches)

    def _tick(self, force: bool, unless_closed: bool = False) -> bool:
        """Move pending rows into the current batch and its spool segment; seal the
        batch when it is due. True when sealed batches wait for the writer."""
        with self._io_lock:
            if (unless_closed and self._closed) or self._abandoned:
                return False
            self._wake_set = False
            pending = self._pending
            with self._lock:  # emitters never wait for it; stats() sees consistent counts
                self._add_late_counts()
                n = len(pending)
                self._mem_rows += n  # before the rows leave the deque: max_buffer holds
                self._counts["emitted"] += n
                rows = [pending.popleft() for _ in range(n)]
            # rows that earlier appends could not spool first, then the new ones (in
            # "sync" mode pending holds only rows emitted re-entrantly, see _append)
            self._respool_held()
            if n:
                outcome, spooled = self._spool_rows(self._current, rows)
                with self._lock:
                    self._count_spool(outcome, spooled)
                    if self._current.rows is None:  # close() gave up and released the batches
                        self._mem_rows -= n
                        if outcome is not True:
                            self._counts["dropped"] += n
                        return False
                    self._current.rows.extend(rows)
                    self._current.n += n
            now = time.monotonic()
            due = force or now >= self._next_flush or self._current.n >= self.batch_size
            if not due:
                return bool(self._sealed)
            with self._lock, self._spool_lock:
                self._next_flush = now + self.flush_interval
                if self._current.n:
                    self._seal(self._current)
                    self._current = self._new_batch()
                if self._overflow is not None and self._overflow.n:
                    self._seal(self._overflow)
                    self._overflow = None
                return bool(self._sealed)

    def _seal(self, batch: _Batch) -> None:
        batch.close_fd()
        self._sealed.append(batch)

    def _write_batches(self, batches: list[_Batch]) -> None:
        for batch in batches:
            with self._lock:
                if self._abandoned:  # close() gave up waiting: leave the rest to recovery
                    return
                rows = batch.rows
            stem = _segment_stem(self._writer_id, batch.seq)
            poisoned = False
            try:
                if rows is None:
                    assert batch.path is not None
                    try:
                        rows = read_spool_segment(batch.path)
                    except FileNotFoundError:  # removed by hand: nothing left to write
                        rows = []
                written = 0
                if rows:
                    # a value Arrow cannot take (validation should have caught it) must
                    # not cost the batch's good events: repaired, counted, written
                    written, problems, poisoned = _write_rows_repairing(
                        self.root, rows, stem, self._id_prefix, self._warn.error, self._fsync_unlocked
                    )
                    if problems:
                        with self._lock:
                            self._counts["invalid"] += len(problems)
                        self._warn.warning(
                            "repair",
                            "voicepipe coerced or left out %d values Parquet cannot store: %s",
                            len(problems),
                            "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else ""),
                        )
            except Exception as exc:
                with self._lock:
                    self._counts["write_errors"] += 1
                    self._spill_sealed()
                self._retry_after = time.monotonic() + min(self.flush_interval, 1.0)
                self._warn.warning(
                    "write", "voicepipe could not write events under %s (will retry): %s", self.root, exc
                )
                return
            with self._lock, self._spool_lock:  # its segment is not made again (_respool_held)
                if self._abandoned:
                    # close() gave up while this write ran and released the spool, which
                    # another process may be recovering now: the segment stays, and its
                    # recovery finds these files written (same names), so no event twice
                    return
                batch.done = True
                batch.held = []
                batch.close_fd()
                # under the locks: close() never releases the spool between this batch
                # being done and its segment going away
                if batch.path is not None:
                    try:
                        if poisoned:  # kept for inspection; recovery ignores it
                            batch.path.rename(batch.path.with_name(batch.path.name + ".bad"))
                        else:
                            batch.path.unlink()
                    except OSError:
                        pass
            with self._lock:
                self._sealed.popleft()
                self._counts["written"] += written
                self._counts["dropped"] += max(batch.n - written, 0)
                if batch.rows is not None:
                    self._mem_rows -= len(batch.rows)
                    batch.rows = None
            if self._outbox is not None:
                self._outbox.wake()

    def _fsync_unlocked(self, fd: int) -> None:
        """The writer's fsync (it holds _write_lock and _fork_lock), with _fork_lock
        released: a fork meanwhile goes ahead, and the child, whose state is made
        afresh, inherits at most the descriptor of the file being synced."""
        self._fork_lock.release()
        try:
            os.fsync(fd)
        finally:
            self._fork_lock.acquire()

    def _write_rows(self, rows: list[Row], stem: str) -> None:
        """Write rows as Parquet under their hour partitions, named after ``stem``."""
        _write_event_rows(self.root, rows, stem, self._id_prefix)

    def _spill_sealed(self) -> None:
        """Storage is failing: release the memory of batches that are safe in the spool
        (called with _lock held). A batch with rows in no segment stays in memory until
        the spooler has written them (_respool_held)."""
        if self.durability == "memory":
            return
        with self._spool_lock:
            for batch in self._sealed:
                if batch.rows is not None and not batch.held and batch.path is not None:
                    self._mem_rows -= len(batch.rows)
                    batch.rows = None

    # -- counting problems -----------------------------------------------------------

    def _invalid(self, message: str) -> None:
        if self.strict:
            raise EmitError(message)
        self._count("invalid")
        self._warn.warning("invalid:" + " ".join(message.split(" ", 2)[:2]), "voicepipe: %s", message)

    def _internal_error(self, exc: BaseException) -> None:
        if self.strict:
            raise exc
        self._warn.warning("internal", "voicepipe internal error: %r", exc)


# ------------------------------------------------------------------------ stages

#: Fields a stage or an artifact scope records itself; annotate() refuses them (a
#: measured duration or time, the stage's name, the outcome's status).
_STAGE_OWN_FIELDS: Final = frozenset(_SLOTS)
_ARTIFACT_OWN_FIELDS: Final = frozenset({*_SLOTS, "new_status"})


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    """An ``async def`` function (or a partial of one), or an object whose class
    defines ``async def __call__``: calling it returns a coroutine to be timed when
    awaited, not when made."""
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, type) or not callable(fn):
        return False
    return inspect.iscoroutinefunction(type(fn).__call__)


def _not_raised(rec: Recorder, err: Exception) -> None:
    """An error met while an exception propagates out of a stage or artifact scope:
    logged, strict or not, since raising it would replace the pipeline's own
    exception. (What it is about, a failed spool write, is counted where it happens.)"""
    rec._warn.warning("internal", "voicepipe could not record a failure: %r", err)


def _append_unraised(rec: Recorder, row: Row) -> None:
    """Append the outcome row of a stage or artifact that an exception is leaving.

    Never raises. A strict recorder (``testing.capture()``) would raise for a value
    the Parquet writer must repair (a lone surrogate in an annotated string): here
    the row is repaired first, the value counted invalid and logged, and the event
    recorded.
    """
    try:
        if rec.strict:
            fixed, problems = _repair_row(row)
            if problems:
                rec._count("invalid", len(problems))
                rec._warn.warning(
                    "invalid:unraised", "voicepipe: %s (not raised: the stage's exception is)", problems[0]
                )
            if fixed is None:  # pragma: no cover - rows made here always have an id, type and time
                return
            row = fixed
        rec._append(row)
    except Exception as err:
        _not_raised(rec, err)


class StageRun:
    """One running execution of a stage; what ``with rec.stage(...) as st`` gives."""

    __slots__ = ("context", "fields", "recorder", "spec", "start_ns", "start_us", "token")

    def __init__(self, spec: StageSpec, recorder: Recorder, start_us: int = 0, start_ns: int = 0) -> None:
        self.spec = spec
        self.recorder = recorder
        self.fields: dict[str, Any] = {}
        self.start_us = start_us
        self.start_ns = start_ns
        self.token: contextvars.Token[StageRun | None] | None = None
        self.context: tuple[str | int | None, ...] | None = None

    @property
    def stage(self) -> str:
        return self.spec.name

    def annotate(self, **fields: Any) -> None:
        """Attach fields (claim_count=..., confidence_score=..., ai_cost=...) to the
        stage's completion or failure event. Invalid values, and the fields the stage
        records itself (duration_ms, pipeline_stage, stage_started_at,
        stage_completed_at), are counted and left out (EmitError when strict)."""
        for name, value in fields.items():
            if name in _STAGE_OWN_FIELDS:
                self.recorder._invalid(f"{name} is recorded by the stage itself; annotate() leaves it out")
                continue
            try:
                self.fields[name] = _check_value(name, value)
            except _Invalid as exc:
                self.recorder._invalid(str(exc))


class StageSpec:
    """``rec.stage(name)``: a decorator and a context manager for one stage."""

    def __init__(self, name: str, recorder: Recorder | None) -> None:
        if name not in STAGE_EVENTS:
            if name in STAGES:
                raise ValueError(
                    f"stage {name!r} is not timed: it is recorded by "
                    + (
                        "rec.artifact() (artifact_received)"
                        if name == "ingestion"
                        else "rec.emit('draft_confirmed' / 'draft_rejected')"
                    )
                    + f"; timed stages are {', '.join(TIMED_STAGES)}"
                )
            hint = closest(name, TIMED_STAGES) if isinstance(name, str) else None
            raise ValueError(
                f"unknown stage {name!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" (stages: {', '.join(TIMED_STAGES)})"
            )
        self.name = name
        self._recorder = recorder
        self._events = STAGE_EVENTS[name]

    @property
    def recorder(self) -> Recorder:
        return self._recorder if self._recorder is not None else get_recorder()

    def annotate(self, **fields: Any) -> None:
        """Annotate the innermost running execution of this stage."""
        run = _stage_var.get()
        if run is None or run.spec is not self:
            self.recorder._invalid(f"annotate() called outside a running {self.name} stage")
            return
        run.annotate(**fields)

    # -- start / finish (never raise unless strict) --------------------------------

    # Rows are built as tuples here (the hot path): a tuple of atomic values is
    # untracked by the cyclic GC, so buffered rows cost the collector nothing.

    def _start(self) -> StageRun:
        rec = self._recorder or get_recorder()
        # wall clock first: a preemption between the two reads then shortens the
        # measured duration instead of pushing the end past later events' timestamps
        start_us = _time_ns() // 1000 if rec._clock is None else rec._clock()
        start_ns = _perf_ns()
        run = StageRun(self, rec, start_us, start_ns)
        run.token = _stage_var.set(run)
        ctx = _artifact_var.get()
        context = run.context = None if ctx is None else ctx.row
        try:
            rec._append(
                (
                    next(rec._id_counter),
                    self._events[0],
                    start_us,
                    context,
                    self.name,
                    start_us,
                    None,
                    None,
                    None,
                )
            )
        except Exception as exc:
            try:
                rec._internal_error(exc)
            except BaseException:  # strict: the stage does not run, so it leaves no context
                _stage_var.reset(run.token)
                raise
        return run

    def _finish_ok(self, run: StageRun) -> None:
        """_finish for the common case: success, nothing annotated, real clock."""
        elapsed_ns = _perf_ns() - run.start_ns
        try:
            _stage_var.reset(run.token)  # type: ignore[arg-type]
        except ValueError:  # finished in another context than it started
            _stage_var.set(None)
        start_us = run.start_us
        end_us = start_us + elapsed_ns // 1000
        rec = run.recorder
        try:
            rec._append(
                (
                    next(rec._id_counter),
                    self._events[1],
                    end_us,
                    run.context,
                    self.name,
                    start_us,
                    end_us,
                    elapsed_ns / 1e6,
                    None,
                )
            )
        except Exception as err:
            rec._internal_error(err)

    def _finish(self, run: StageRun, exc: BaseException | None) -> None:
        elapsed_ns = _perf_ns() - run.start_ns
        rec = run.recorder
        if rec._clock is not None:  # a given (simulated) clock also measures the duration
            elapsed_ns = max(rec._now_us() - run.start_us, 0) * 1000
        if run.token is not None:
            try:
                _stage_var.reset(run.token)
            except ValueError:  # finished in another context than it started
                _stage_var.set(None)
        # While an exception leaves the stage nothing may replace it, strict or not.
        # GeneratorExit is no failure: a generator's consumer stopped early (break,
        # close(), aclose()), and the work the stage did succeeded, so it completes.
        propagating = exc is not None
        if isinstance(exc, GeneratorExit):
            exc = None
        try:
            end_us = run.start_us + elapsed_ns // 1000
            fields = run.fields
            if exc is not None:
                etype = self._events[2]
            elif self.name == "entity_resolution" and (fields.get("disambiguation_count") or 0) > 0:
                etype = DISAMBIGUATION_EVENT
            else:
                etype = self._events[1]
            extra = _extra(fields) if fields else None
            if extra is not None and extra.get("error_message") is not None:
                extra["error_message"] = rec._clean_message(extra["error_message"])
            if exc is not None:
                code, message = rec._error_fields(exc)
                extra = extra or {}
                extra["error_code"] = extra.get("error_code") or code
                extra["error_message"] = extra.get("error_message") or message  # annotated: cleaned above
            row = (
                next(rec._id_counter),
                etype,
                end_us,
                run.context,
                self.name,
                run.start_us,
                end_us,
                elapsed_ns / 1e6,
                extra,
            )
            if propagating:
                _append_unraised(rec, row)
            else:
                rec._append(row)
        except Exception as err:
            if propagating:
                _not_raised(rec, err)
            else:
                rec._internal_error(err)

    # -- decorator ----------------------------------------------------------------

    @overload
    def __call__(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]: ...
    @overload
    def __call__(self, fn: F) -> F: ...

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"@stage({self.name!r}) cannot time a generator function ({fn.__qualname__}); "
                "decorate the function that consumes it, or use `with rec.stage(...)`"
            )
        if _is_async_callable(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                run = self._start()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    self._finish(run, exc)
                    raise
                self._finish(run, None)
                return result

            return async_wrapper

        plain = self.name != "entity_resolution"  # its completion event depends on the fields
        coroutine = CoroutineType

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            run = self._start()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._finish(run, exc)
                raise
            if type(result) is coroutine:  # an async callable inspect did not recognise
                return self._awaited(run, result)
            if plain and not run.fields and run.recorder._clock is None:
                self._finish_ok(run)
            else:
                self._finish(run, None)
            return result

        return wrapper

    def _awaited(self, run: StageRun, coro: Awaitable[Any]) -> Awaitable[Any]:
        """The rest of a stage whose sync-looking callable returned a coroutine (a
        function returning another's coroutine, a partial of an async callable): the
        work runs, and the stage completes or fails, when the coroutine is awaited.
        The caller is not inside the stage meanwhile."""
        try:
            _stage_var.reset(run.token)  # type: ignore[arg-type]
        except ValueError:  # pragma: no cover - set in this same call and context
            _stage_var.set(None)
        return self._await_in_stage(run, coro)

    async def _await_in_stage(self, run: StageRun, coro: Awaitable[Any]) -> Any:
        run.token = _stage_var.set(run)  # annotate() inside reaches this run
        try:
            result = await coro
        except BaseException as exc:
            self._finish(run, exc)
            raise
        self._finish(run, None)
        return result

    # -- context manager ------------------------------------------------------------

    def __enter__(self) -> StageRun:
        return self._start()

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        run = _stage_var.get()
        if run is not None and run.spec is self:
            if (
                exc is None
                and not run.fields
                and run.recorder._clock is None
                and self.name != "entity_resolution"
            ):
                self._finish_ok(run)
            else:
                self._finish(run, exc)
        return False

    async def __aenter__(self) -> StageRun:
        return self._start()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        return self.__exit__(et, exc, tb)


# ----------------------------------------------------------------------- artifacts


class ArtifactScope:
    """``rec.artifact(...)``: binds the artifact context (sync and async)."""

    def __init__(self, recorder: Recorder, ctx: ArtifactContext) -> None:
        self.recorder = recorder
        self.context = ctx
        self.fields: dict[str, Any] = {}
        self._tokens: list[tuple[contextvars.Token[ArtifactContext | None], int, int]] = []

    @property
    def artifact_id(self) -> str | None:
        return self.context.artifact_id

    def annotate(self, **fields: Any) -> None:
        """Attach fields (e.g. ai_cost, claim_count) to artifact_completed / artifact_failed.
        Invalid values, and the fields the scope records itself (duration_ms,
        new_status, ...), are counted and left out (EmitError when strict)."""
        for name, value in fields.items():
            if name in _ARTIFACT_OWN_FIELDS:
                self.recorder._invalid(
                    f"{name} is recorded by rec.artifact() itself; annotate() leaves it out"
                )
                continue
            try:
                self.fields[name] = _check_value(name, value)
            except _Invalid as exc:
                self.recorder._invalid(str(exc))

    def __enter__(self) -> ArtifactScope:
        rec = self.recorder
        token = _artifact_var.set(self.context)
        start_us = rec._now_us()
        self._tokens.append((token, start_us, time.perf_counter_ns()))
        if not self.context.is_retry:
            try:
                row = rec._base_row("artifact_received", start_us)
                row[_R_STAGE] = "ingestion"
                row[_R_EXTRA] = {"source_channel": self.context.source_channel, "new_status": "received"}
                rec._append(tuple(row))
            except Exception as exc:
                try:
                    rec._internal_error(exc)
                except BaseException:  # strict: the block does not run, so it leaves no context
                    self._tokens.pop()
                    _artifact_var.reset(token)
                    raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        rec = self.recorder
        if not self._tokens:
            return False
        token, start_us, start_ns = self._tokens.pop()
        # as in StageSpec._finish: nothing replaces a propagating exception, and a
        # generator closed early (GeneratorExit) completes its artifact
        propagating = exc is not None
        if isinstance(exc, GeneratorExit):
            exc = None
        try:
            if rec._clock is not None:  # a given (simulated) clock also measures the duration
                end_us = max(rec._now_us(), start_us)
            else:
                end_us = start_us + (time.perf_counter_ns() - start_ns) // 1000
            duration_ms = (end_us - start_us) / 1000
            code, message = rec._error_fields(exc) if exc is not None else (None, None)
            rows: list[Row] = []
            if self.context.is_retry:
                row = rec._base_row("retry_failed" if exc is not None else "retry_succeeded", end_us)
                row[_R_DUR] = duration_ms
                if exc is not None:
                    row[_R_EXTRA] = {"error_code": code, "error_message": message}
                rows.append(tuple(row))
            row = rec._base_row("artifact_failed" if exc is not None else "artifact_completed", end_us)
            extra = _extra(self.fields) or {}
            extra["new_status"] = "failed" if exc is not None else "completed"
            if exc is not None:
                extra["error_code"], extra["error_message"] = code, message
            row[_R_DUR] = duration_ms
            row[_R_EXTRA] = extra
            rows.append(tuple(row))
            for outcome in rows:
                if propagating:
                    _append_unraised(rec, outcome)
                else:
                    rec._append(outcome)
        except Exception as err:
            if propagating:
                _not_raised(rec, err)
            else:
                rec._internal_error(err)
        finally:
            try:
                _artifact_var.reset(token)
            except ValueError:
                _artifact_var.set(None)
        return False

    async def __aenter__(self) -> ArtifactScope:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        return self.__exit__(et, exc, tb)


# ------------------------------------------------------------------ default recorder

_default: Recorder | None = None
_default_lock = threading.Lock()


def configure(root: str | os.PathLike[str] | None = None, **options: Any) -> Recorder:
    """Create (or replace) the module-level default recorder used by ``vp.stage``,
    ``vp.artifact``, ``vp.emit`` and ``vp.annotate``. Takes Recorder's arguments."""
    global _default
    with _default_lock:
        old, _default = _default, Recorder(root, **options)
    if old is not None:
        old.close()
    return _default


def get_recorder() -> Recorder:
    """The default recorder, created on first use from $VOICEPIPE_DATA."""
    global _default
    rec = _default
    if rec is None:
        with _default_lock:
            if _default is None:
                _default = Recorder()
            rec = _default
    return rec


def is_configured() -> bool:
    return _default is not None


def _swap_default(recorder: Recorder | None) -> Recorder | None:
    """Install ``recorder`` as the default without closing the old one; returns the
    old one (``voicepipe_obs.testing.capture`` puts it back afterwards)."""
    global _default
    with _default_lock:
        old, _default = _default, recorder
    return old


def stage(name: str) -> StageSpec:
    """``@vp.stage(name)``: like ``rec.stage`` on the default recorder, bound at call time."""
    return StageSpec(name, None)


def artifact(
    artifact_id: IdValue,
    *,
    organization_id: IdValue | None = None,
    coach_user_id: IdValue | None = None,
    voice_note_id: IdValue | None = None,
    source_channel: str | None = None,
    retry_attempt: int | str | None = None,
) -> ArtifactScope:
    """``with vp.artifact(id, ...)``: :meth:`Recorder.artifact` on the default recorder.

    Binds the artifact's context for everything inside (sync or async); records
    artifact_received on entry and artifact_completed / artifact_failed on exit (with
    ``retry_attempt``: retry_succeeded / retry_failed, and no artifact_received).
    Ids may be given as int or uuid.UUID (stored as ``str(value)``).
    """
    return get_recorder().artifact(
        artifact_id,
        organization_id=organization_id,
        coach_user_id=coach_user_id,
        voice_note_id=voice_note_id,
        source_channel=source_channel,
        retry_attempt=retry_attempt,
    )


def emit(
    event_type: str,
    *,
    timestamp: dt.datetime | float | None = None,
    attributes: Mapping[str, str] | None = None,
    **fields: Any,
) -> str | None:
    """Record one event on the default recorder (:meth:`Recorder.emit`).

    ``fields`` are event columns (``claim_count=3``, ``error_code="Timeout"``, ...);
    context fields not given come from the enclosing artifact. ``timestamp`` (an
    aware datetime or epoch seconds) backdates the event; ``attributes`` are your
    own string labels. Returns the event_id, or None if the event was not recorded.
    """
    return get_recorder().emit(event_type, timestamp=timestamp, attributes=attributes, **fields)


def annotate(**fields: Any) -> None:
    """Attach fields (``claim_count=``, ``confidence_score=``, ``ai_cost=``, ...) to the
    completion or failure event of the innermost running stage, whichever recorder
    runs it; outside a stage the call is counted as invalid (raises when strict)."""
    run = _stage_var.get()
    if run is not None:
        run.annotate(**fields)
    else:
        get_recorder().annotate(**fields)


def flush(timeout: float | None = None) -> bool:
    """Write the default recorder's events as Parquet now (:meth:`Recorder.flush`).
    True when nothing is left over (also when no default recorder exists yet)."""
    return get_recorder().flush(timeout) if _default is not None else True


def retry_handler(
    stage: str, *, deferred: bool = False
) -> Callable[[Callable[[str, int], Any]], Callable[[str, int], Any]]:
    """Register a retry handler that records through the default recorder."""
    from .retry import register_handler

    def decorate(fn: Callable[[str, int], Any]) -> Callable[[str, int], Any]:
        register_handler(stage, fn, recorder=None, deferred=deferred)
        return fn

    return decorate


# ------------------------------------------------------------ fork and exit hooks


#: Held while the writer thread imports pyarrow, and while a recovery writes one
#: segment; the fork hook takes it first, so a child never inherits a half-done import
#: (its module locks would be held forever) or write. A recovery's wait for the
#: recovery lock, and the rest of its run, are outside it: a fork never waits for a
#: whole recovery. Never taken while holding a recorder's lock.
_fork_gate = threading.Lock()


def _before_fork() -> None:
    _fork_gate.acquire()
    for rec in list(_recorders):
        rec._fork_lock.acquire()  # not _write_lock: it is held through a write's fsync
        rec._io_lock.acquire()
        rec._lock.acquire()
        rec._spool_lock.acquire()


def _after_fork_parent() -> None:
    for rec in list(_recorders):
        rec._spool_lock.release()
        rec._lock.release()
        rec._io_lock.release()
        rec._fork_lock.release()
    _fork_gate.release()


def _after_fork_child() -> None:
    global _default_lock, _fork_gate, _recover_lock
    _default_lock = threading.Lock()  # another thread may have held it at the fork
    _fork_gate = threading.Lock()
    _recover_lock = threading.Lock()
    for rec in list(_recorders):
        rec._after_fork_in_child()
    if _recorders:
        _close_at_multiprocessing_exit()


# A multiprocessing child (start method fork, forkserver or spawn) ends with
# os._exit(), skipping atexit; what it runs instead are multiprocessing's finalizers.
# So once per multiprocessing child process that has a recorder, register a finalizer
# that closes (and flushes) every recorder. A child's bootstrap sets its parent
# process, clears the finalizers it inherited or registered while importing the main
# module (spawn, forkserver) and then runs the after-fork callbacks: one of those
# registers ours again. Not in the main process: there atexit closes the recorders,
# and multiprocessing's own exit hook would close them before atexit handlers
# registered earlier than multiprocessing's import (which may still emit) had run.
_mp_finalizer_pid = 0  # the process whose finalizer registry holds ours
_mp_after_fork_set = False  # our after-fork callback is registered (forked children inherit it)


def _close_at_multiprocessing_exit() -> None:
    """Make sure a multiprocessing child's normal exit closes our recorders. Cheap
    after the first call in a process; a no-op while multiprocessing is not imported."""
    global _mp_finalizer_pid, _mp_after_fork_set
    util = sys.modules.get("multiprocessing.util")
    if util is None or (_mp_finalizer_pid == os.getpid() and _mp_after_fork_set):
        return
    try:
        if not _mp_after_fork_set:
            util.register_after_fork(_mp_hook, _mp_after_fork)
            _mp_after_fork_set = True
        if _mp_finalizer_pid != os.getpid() and _in_multiprocessing_child():
            util.Finalize(None, _close_all, exitpriority=100)
            _mp_finalizer_pid = os.getpid()
    except Exception:  # pragma: no cover - best effort
        pass


def _in_multiprocessing_child() -> bool:
    """This process is a multiprocessing child (its bootstrap has begun)."""
    process = sys.modules.get("multiprocessing.process")
    return process is not None and process.parent_process() is not None


def _mp_after_fork(_: object) -> None:
    """multiprocessing's after-fork callback: its finalizer registry was just cleared."""
    global _mp_finalizer_pid
    _mp_finalizer_pid = 0
    _close_at_multiprocessing_exit()


class _MpHook:
    """A weak-referenceable key for multiprocessing's after-fork registry."""


_mp_hook = _MpHook()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child)


def _close_together(recorders: Sequence[Recorder], limit: float | None) -> None:
    """Close ``recorders`` against one deadline, ``limit`` seconds from now (None:
    no bound). Their final writes run at the same time, each on its own helper
    thread, so one recorder's hung storage costs the others none of the time; then
    each is released (what is lost counted, the spool unlocked), all within one
    _RELEASE_GRACE more. Raises the first EmitError of a strict recorder, after
    every recorder is released."""
    deadline = None if limit is None else time.monotonic() + max(float(limit), 0.0)
    closing = [rec for rec in recorders if rec._begin_close()]
    finished = [False] * len(closing)
    shipped: list[Shipped | None] = [None] * len(closing)
    try:
        helpers = [rec._start_final_flush(deadline) for rec in closing]
        for i, (rec, helper) in enumerate(zip(closing, helpers, strict=True)):
            finished[i] = rec._await_final_flush(helper, deadline)
        # object-store roots: what the final writes left in the outbox goes up, in
        # the time that is left (a recorder whose write did not finish has none)
        shipping = [
            rec._start_shipping(deadline) if done and rec._outbox is not None else None
            for rec, done in zip(closing, finished, strict=True)
        ]
        for i, (rec, ship) in enumerate(zip(closing, shipping, strict=True)):
            if ship is not None:
                shipped[i] = rec._await_shipping(*ship, deadline)
    finally:  # also after a KeyboardInterrupt while waiting: the spools are released
        grace = None if deadline is None else time.monotonic() + _RELEASE_GRACE
        error: Exception | None = None
        for rec, done, outcome in zip(closing, finished, shipped, strict=True):
            try:
                rec._release_at_close(done, limit, grace)
            except Exception as exc:  # strict: the first is raised once all are released
                error = error or exc
            if rec._outbox is not None and outcome is None:  # no upload round ran: end its helper
                rec._outbox.close_helper(grace)
            try:
                rec._report_outbox(outcome)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error


@atexit.register
def _close_all() -> None:
    """Close every open recorder at exit (and at a multiprocessing child's end)
    against one deadline: the largest close_timeout, from now (none if any has
    none). N recorders on hung storage hold up exit once, not N times."""
    pid = os.getpid()
    recorders = [rec for rec in list(_recorders) if not rec._closed and rec._pid == pid]
    timeouts = [rec.close_timeout for rec in recorders]
    limit = None if None in timeouts else max((t for t in timeouts if t is not None), default=0.0)
    try:
        _close_together(recorders, limit)
    except Exception:  # pragma: no cover - strict recorders: nothing to raise into at exit
        pass
