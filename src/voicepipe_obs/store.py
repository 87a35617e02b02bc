"""The storage layout (DESIGN §5): paths, partitions, file names, atomic Parquet
writes, listing and vetting of files, and quarantine.

Every file under the root is written by :func:`write_table` (temporary name, then
rename), so a ``*.parquet`` glob only ever sees complete files. This module knows
where bytes go and how they are named; it does not decide *when* to write (that is
the Recorder's batching in ``emit.py``) and it runs no queries (``query.py``).

Imports pyarrow lazily: the Recorder's hot path imports this module, pyarrow is
only needed once a batch is written.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import functools
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .errors import BusyError, StoreError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

log = logging.getLogger("voicepipe_obs.store")

DEFAULT_ROOT: Final = "./voicepipe-data"
ENV_ROOT: Final = "VOICEPIPE_DATA"

EVENTS: Final = "events"
SNAPSHOTS_HOURLY: Final = "snapshots/hourly"
SNAPSHOTS_DAILY: Final = "snapshots/daily"
ALERTS: Final = "alerts"
QUARANTINE: Final = "quarantine"
SPOOL: Final = "_spool"
STATE: Final = "_state"

TMP_SUFFIX: Final = ".tmp"
US_PER_HOUR: Final = 3_600_000_000
US_PER_DAY: Final = 24 * US_PER_HOUR

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_HOST = socket.gethostname().replace("-", "_").replace("/", "_")[:32] or "host"


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: the argument, else $VOICEPIPE_DATA, else ./voicepipe-data.

    A local directory only: an object-store URI (``s3://bucket/prefix``) raises
    :class:`StoreError` saying what to use instead (``Path("s3://b/p")`` would be a
    local directory named ``s3:``)."""
    return local_root(given_root(root)).expanduser()


def given_root(root: str | os.PathLike[str] | None = None) -> str | os.PathLike[str]:
    """The data root as given, not yet made a Path: the argument, else
    $VOICEPIPE_DATA, else ./voicepipe-data — a directory or an object-store URI
    (which the callers that accept one look for, :func:`voicepipe_obs.remote.is_remote`)."""
    if root is None or os.fspath(root) == "":
        return os.environ.get(ENV_ROOT) or DEFAULT_ROOT
    return root


def local_root(root: str | os.PathLike[str]) -> Path:
    """``root`` as a local directory's Path; an object-store URI raises
    :class:`StoreError` naming what to use instead (its local mirror)."""
    from .remote import display, is_remote

    if is_remote(root):
        url = display(os.fspath(root))
        raise StoreError(
            f"{url} is an object-store root; this function works on a local data root: use "
            f"voicepipe_obs.connect({url!r}) to query it, or voicepipe_obs.mirror.mirrored(url) / "
            "synced(url) for a local mirror to pass here"
        )
    return Path(root)


def root_problem(root: Path) -> str | None:
    """Why ``root`` cannot be used as an existing data root ("does not exist", "is
    not a directory"), or None when it is a directory."""
    if root.is_dir():
        return None
    return "is not a directory" if root.exists() or root.is_symlink() else "does not exist"


PERMISSION_ERRNOS: Final = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def write_error(root: Path, exc: OSError) -> StoreError:
    """The :class:`StoreError` for an ``OSError`` raised while writing under ``root``:
    ``cannot write under ROOT (Read-only file system: ROOT/_state/x.lock): check
    permissions`` (or what else to do for a full disk or a path that is not a
    directory)."""
    reason = exc.strerror or type(exc).__name__
    if exc.filename is not None:
        reason += f": {exc.filename}"
    if exc.errno in PERMISSION_ERRNOS:
        advice = "check permissions"
    elif exc.errno in _SPACE_ERRNOS:
        advice = "free some disk space"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        advice = "a path in the storage layout is of the wrong kind; move it away"
    else:
        advice = "check the path and its permissions"
    return StoreError(f"cannot write under {root} ({reason}): {advice}")


def cannot_access(exc: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """The one-line message for a path that could not be read or listed:
    ``cannot access PATH (Permission denied): check permissions`` (``path``: the
    error's own filename by default)."""
    where = path if path is not None else exc.filename
    advice = "check permissions" if exc.errno in PERMISSION_ERRNOS else "check the path and the disk"
    return f"cannot access{f' {os.fspath(where)}' if where is not None else ''} ({exc.strerror or exc}): {advice}"


def host_name() -> str:
    return _HOST


def unique_name(stem: str | None = None) -> str:
    """A file stem unique across processes and hosts: time, host, pid, randomness."""
    now = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    tail = stem if stem is not None else secrets.token_hex(4)
    return f"{now}-{_HOST}-{os.getpid()}-{tail}"


def partition_key(ts_us: int) -> tuple[str, int]:
    """(date 'YYYY-MM-DD', hour 0-23) of a UTC microsecond timestamp."""
    d = _EPOCH + dt.timedelta(microseconds=ts_us - ts_us % US_PER_HOUR)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}", d.hour  # strftime does not pad years < 1000


def hour_dir(root: Path, date: str, hour: int) -> Path:
    return root / EVENTS / f"date={date}" / f"hour={hour:02d}"


def to_us(value: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


# ------------------------------------------------------------------------- writing


def ensure_dir(path: Path, mode: int | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if mode is not None:
        os.chmod(path, mode)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file (state, bookkeeping) atomically: fsynced under a
    temporary name, then renamed over ``path``."""
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:  # no temporary file left behind (a directory in the way, a full disk, Ctrl-C)
            tmp.unlink()
        except OSError:
            pass
        if (
            isinstance(exc, OSError)
            and exc.filename is not None
            and os.fspath(exc.filename) == os.fspath(tmp)
        ):
            # the error names the file the caller asked for, not our temporary name
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc
        raise


def write_table(
    path: Path,
    table: pa.Table,
    *,
    sort_by: Sequence[tuple[str, str]] | None = None,
    row_group_size: int | None = None,
    statistics: bool | Sequence[str] = True,
    compression: str = "zstd",
    dictionary: bool = True,
    sync: Callable[[int], None] | None = None,
) -> Path:
    """Write ``table`` to ``path`` atomically: a temporary name no ``*.parquet`` glob
    matches, page checksums, fsync, then rename. Replaces an existing file.

    Encoded in memory and written with one call (pyarrow writing page by page
    through a Python file object cost more CPU than encoding a small file);
    dictionary encoding for string columns only (ids, types and names repeat,
    measured numbers do not; none without ``dictionary``); min/max statistics for
    every column or only the ``statistics`` named; zstd unless ``compression`` says
    otherwise. ``sync`` makes the temporary file durable before the rename (given
    its descriptor; default :func:`os.fsync`): the Recorder's writer passes one that
    runs outside the lock a fork waits for.

    This is the single writer path for every Parquet file the library makes; an
    object-store backend replaces this function (a single PUT needs no rename).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    ensure_dir(path.parent)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        if sort_by:
            table = table.sort_by(list(sort_by))
        buf = pa.BufferOutputStream()
        strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
        pq.write_table(
            table,
            buf,
            compression=compression,
            write_page_checksum=True,
            row_group_size=row_group_size,
            use_dictionary=strings if dictionary else False,
            write_statistics=statistics if isinstance(statistics, bool) else list(statistics),
        )
        with open(tmp, "wb") as fh:
            fh.write(memoryview(buf.getvalue()))
            fh.flush()
            (sync or os.fsync)(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return path


def rows_to_table(rows: Sequence[Sequence[Any]]) -> pa.Table:
    """Turn event rows (columns in :data:`events.COLUMNS` order, timestamps as int
    microseconds) into an Arrow table.

    Transposes to per-column lists first: building each column from a plain list is
    several times faster than converting row objects. (The Recorder formats its
    event ids itself: see ``emit.format_event_id``.)
    """
    from .events import COLUMN_NAMES

    if not rows:
        return columns_to_table({}, 0)
    return columns_to_table(dict(zip(COLUMN_NAMES, zip(*rows, strict=True), strict=True)), len(rows))


def _event_ids(values: Sequence[Any]) -> pa.Array:
    import pyarrow as pa

    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):  # not all strings
        return pa.array([v if v is None or isinstance(v, str) else str(v) for v in values], type=pa.string())


def columns_to_table(columns: Mapping[str, Any], n: int) -> pa.Table:
    """An event table from {column name: n values} (sequences; timestamps as int
    microseconds). Absent columns are all null; event ids that are not strings are
    stored as ``str(value)``."""
    import pyarrow as pa

    from .events import COLUMNS, arrow_schema

    schema = arrow_schema()
    arrays = []
    for (name, kind), field in zip(COLUMNS, schema, strict=True):
        values = columns.get(name)
        if values is None:
            arrays.append(pa.nulls(n, type=field.type))
        elif name == "event_id":
            arrays.append(_event_ids(values))
        elif kind == "ts":
            arrays.append(pa.array(values, type=pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def split_by_hour(rows: Iterable[Sequence[Any]]) -> dict[int, list[Sequence[Any]]]:
    """Group event rows by the UTC hour (as an hour number since the epoch)."""
    buckets: dict[int, list[Sequence[Any]]] = {}
    for row in rows:
        key = row[2] // US_PER_HOUR
        bucket = buckets.get(key)
        if bucket is None:
            buckets[key] = [row]
        else:
            bucket.append(row)
    return buckets


def event_file(root: Path, hour_number: int, stem: str) -> Path:
    date, hour = partition_key(hour_number * US_PER_HOUR)
    return hour_dir(root, date, hour) / f"{stem}.parquet"


def write_event_rows(root: Path, rows: Sequence[Sequence[Any]], stem: str) -> list[Path]:
    """Write rows into their hour partitions, one file per hour named ``<stem>.parquet``.

    Names are deterministic for a given stem: writing the same stem again is a no-op
    for hours already written, which is what makes spool recovery exactly-once.
    """
    written = []
    for hour_number, bucket in sorted(split_by_hour(rows).items()):
        path = event_file(root, hour_number, stem)
        if path.exists():
            continue
        write_table(path, rows_to_table(bucket))
        written.append(path)
    return written


# ------------------------------------------------------------------------- run locks

#: How long a maintenance run waits for another run of the same command to finish
#: before it gives up with :class:`BusyError` (exit 5).
LOCK_TIMEOUT: Final = 60.0


@contextmanager
def run_lock(root: Path, name: str, *, command: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """One ``command`` run at a time per root: hold ``<root>/_state/<name>`` (an
    fcntl lock, released when the process dies), waiting up to ``timeout`` seconds
    for the holder. The lock file names its holder (pid, host, start), which the
    :class:`BusyError` raised on timeout repeats. Raises OSError when the lock
    cannot be created (the caller turns it into a :class:`StoreError`)."""
    if math.isnan(timeout):  # it compares false with everything: the wait would never end
        raise UsageError(f"the lock timeout for `voicepipe {command}` must be a number of seconds, not nan")
    path = root / STATE / name
    ensure_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            if time.monotonic() >= deadline:
                holder = _lock_holder(fd)
                raise BusyError(
                    f"another `voicepipe {command}` ({holder or 'holder unknown'}) still holds {path} after "
                    f"{timeout:g}s; nothing done: the next run catches up"
                )
            time.sleep(min(0.2, max(0.01, deadline - time.monotonic())))
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        except OSError:  # who holds it is only for the message
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _lock_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


# ------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class Partition:
    date: str
    hour: int | None
    path: Path

    @property
    def start(self) -> dt.datetime | None:
        """Start (UTC) of the partition's hour, or of its day when it has no hour;
        None for a directory whose date does not parse."""
        try:
            day = dt.datetime.fromisoformat(self.date).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            return None
        return day + dt.timedelta(hours=self.hour or 0)


def parquet_files(directory: Path) -> list[Path]:
    """The complete Parquet files directly in ``directory``, sorted (temporary files
    start with a dot); none when the directory is gone. One that cannot be listed
    (permissions) raises: skipping it would leave its events out without a word."""
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [directory / n for n in names if n.endswith(".parquet") and not n.startswith(".")]


def iter_partitions(root: Path, area: str = EVENTS) -> Iterator[Partition]:
    """date= (and, for events, hour=) partition directories under an area, sorted."""
    base = root / area
    if not base.is_dir():
        return
    for ddir in sorted(base.iterdir()):
        if not ddir.name.startswith("date=") or not ddir.is_dir():
            continue
        date = ddir.name[5:]
        if area != EVENTS:
            yield Partition(date, None, ddir)
            continue
        for hdir in sorted(ddir.iterdir()):
            if hdir.name.startswith("hour=") and hdir.is_dir():
                try:
                    yield Partition(date, int(hdir.name[5:]), hdir)
                except ValueError:
                    continue


def list_parquet(
    root: Path,
    area: str = EVENTS,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[Path]:
    """Complete Parquet files of an area, pruned by partition to [since, until)."""
    lo = to_us(since) // US_PER_HOUR if since is not None else None
    hi = to_us(until) if until is not None else None
    files: list[Path] = []
    for part in iter_partitions(root, area):
        if part.start is None:
            continue
        start = to_us(part.start)
        span = US_PER_HOUR if part.hour is not None else US_PER_DAY
        if lo is not None and start + span <= lo * US_PER_HOUR:
            continue
        if hi is not None and start >= hi:
            continue
        files.extend(parquet_files(part.path))
    return files


_MAGIC = b"PAR1"


def vet_parquet(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Split files into readable-looking and bad ones with a reason, cheaply (header
    and footer magic, footer length; for an event file — one in an ``hour=``
    directory — also its schema, from the footer: see :func:`event_schema_problem`),
    so one truncated or foreign file cannot fail a query.

    A file that is gone is in neither list: compaction replaces files (writing the
    merged one first), and cleanup removes whole partitions, so a file that vanished
    since it was listed is no problem to report (a debug log). Verdicts are cached
    per process by (path, size, mtime, inode): a retrying reader vets again cheaply.
    """
    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for path in paths:
        reason = _check_parquet(path)
        if reason is None:
            good.append(path)
        elif reason is _GONE:
            log.debug("%s vanished since it was listed (compacted or cleaned up)", path)
        else:
            bad.append((path, reason))
    return good, bad


_GONE: Final = "gone"
_FOOTER_READ: Final = 16 * 1024
#: (path, size, mtime_ns, inode) -> the verdict of :func:`_check_parquet` (None: fine)
_VERDICTS: dict[tuple[str, int, int, int], str | None] = {}
_MAX_VERDICTS: Final = 200_000


def _check_parquet(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
            if key in _FAILED_READS:
                return _FAILED_READS[key]
            if key in _VERDICTS:
                return _VERDICTS[key]
            reason = _read_check(fh, st.st_size, path.parent.name.startswith("hour="))
    except FileNotFoundError:
        return _GONE
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if len(_VERDICTS) >= _MAX_VERDICTS:
        _VERDICTS.clear()
    _VERDICTS[key] = reason
    return reason


def _read_check(fh: Any, size: int, event_file: bool) -> str | None:
    if size < 12:
        return "too small to be Parquet"
    if fh.read(4) != _MAGIC:
        return "no Parquet header"
    # an event file's footer is read too: one read of the end (usually all of it)
    end = min(size - 4, _FOOTER_READ if event_file else 8)
    fh.seek(size - end)
    chunk = fh.read(end)
    tail = chunk[-8:]
    if tail[4:] != _MAGIC:
        return "truncated (no Parquet footer)"
    footer_len = int.from_bytes(tail[:4], "little")
    if footer_len <= 0 or footer_len > size - 12:
        return "corrupt footer"
    if not event_file:
        return None
    if footer_len + 8 <= len(chunk):
        footer = chunk[len(chunk) - 8 - footer_len : -8]
    else:
        fh.seek(size - 8 - footer_len)
        footer = fh.read(footer_len)
    for length in _SCHEMA_LENGTHS:  # files written alike share their schema's bytes
        known = _SCHEMA_VERDICTS.get(footer[:length], _GONE)
        if known is not _GONE:
            return known
    try:
        columns, end = footer_columns(footer)
    except (IndexError, ValueError, KeyError) as exc:
        return f"corrupt footer ({exc or type(exc).__name__})"
    verdict = event_schema_problem(columns)
    if len(_SCHEMA_VERDICTS) < 1000:
        _SCHEMA_VERDICTS[footer[:end]] = verdict
        _SCHEMA_LENGTHS.add(end)
    return verdict


#: (path, size, mtime_ns, inode) -> why a full read of the file failed, though its
#: footer looked fine (corrupt data pages, found only when a query fails: see
#: ``query.skip_unreadable``). Kept apart from the verdicts, which are cleared when
#: they grow: such a file must stay skipped for the rest of the process.
_FAILED_READS: dict[tuple[str, int, int, int], str] = {}


def has_failed_reads() -> bool:
    """Whether :func:`mark_unreadable` marked any file in this process."""
    return bool(_FAILED_READS)


def mark_unreadable(path: Path, reason: str) -> bool:
    """Remember that reading ``path`` in full failed (``reason``): vetting skips it
    from now on, in this process, for as long as it is the same file. False when
    it is gone."""
    try:
        st = path.stat()
    except OSError:
        return False
    _FAILED_READS[(str(path), st.st_size, st.st_mtime_ns, st.st_ino)] = reason
    return True


#: verdicts by the footer bytes up to the end of the schema (a version and a
#: self-delimiting list of schema elements: the bytes determine the schema), and
#: those bytes' lengths
_SCHEMA_VERDICTS: dict[bytes, str | None] = {}
_SCHEMA_LENGTHS: set[int] = set()


# --------------------------------------------------------------- footer schema
#
# The schema is the second field of a Parquet footer (FileMetaData, Thrift compact
# protocol), before the row groups: reading just that part in Python costs tens of
# microseconds a file, where opening it with pyarrow costs milliseconds.

#: Parquet physical types
_INT32, _INT64, _INT96, _FLOAT, _DOUBLE, _BYTE_ARRAY, _FIXED = 1, 2, 3, 4, 5, 6, 7
_PHYSICAL_NAMES: Final = {
    0: "boolean",
    1: "int32",
    2: "int64",
    3: "int96",
    4: "float",
    5: "double",
    6: "binary",
    7: "fixed_len_byte_array",
}
#: ConvertedType values (legacy annotations)
_C_UTF8, _C_MAP, _C_MAP_KV, _C_ENUM, _C_DECIMAL, _C_JSON = 0, 1, 2, 4, 5, 19
_C_TIMESTAMP: Final = frozenset({9, 10})
_C_INTS: Final = frozenset(range(11, 19))  # UINT_8 .. INT_64
#: LogicalType union members
_L_STRING, _L_MAP, _L_ENUM, _L_DECIMAL, _L_TIMESTAMP, _L_INTEGER, _L_NULL, _L_JSON = 1, 2, 4, 5, 8, 10, 11, 12


@dataclass(frozen=True)
class FooterColumn:
    """A top-level column of a Parquet file, as its footer describes it."""

    name: str
    physical: int | None  # None for a group (a nested column)
    converted: int | None
    logical: int | None  # the LogicalType member set, if any
    children: int
    repeated: bool

    def describe(self) -> str:
        kind = _kind_of(self)
        if kind != "other":
            return {"null": "all null", "num": "a number"}.get(kind, f"a {_KIND_NAMES.get(kind, kind)}")
        if self.physical is None or self.repeated:
            return "a nested column"
        return _PHYSICAL_NAMES.get(self.physical, f"of type {self.physical}")


class _Thrift:
    """Just enough of the Thrift compact protocol to read a footer's schema."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise ValueError("bad varint")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def binary(self) -> bytes:
        n = self.varint()
        out = self.data[self.pos : self.pos + n]
        if len(out) != n:
            raise IndexError("binary past the end")
        self.pos += n
        return out

    def fields(self) -> Iterator[tuple[int, int]]:
        """(field id, compact type) of a struct's fields; the caller reads or skips each value."""
        fid = 0
        while True:
            head = self.byte()
            if head == 0:
                return
            delta, kind = head >> 4, head & 0x0F
            fid = fid + delta if delta else self.zigzag()
            yield fid, kind

    def skip(self, kind: int) -> None:
        if kind in (1, 2):  # bool in a field header
            return
        if kind == 3:
            self.pos += 1
        elif kind in (4, 5, 6):
            self.varint()
        elif kind == 7:
            self.pos += 8
        elif kind == 8:
            self.binary()
        elif kind in (9, 10):
            size, elem = self.list_header()
            for _ in range(size):
                if elem in (1, 2):
                    self.pos += 1
                else:
                    self.skip(elem)
        elif kind == 11:
            size = self.varint()
            if size:
                kv = self.byte()
                for _ in range(size):
                    self.skip(kv >> 4)
                    self.skip(kv & 0x0F)
        elif kind == 12:
            for _fid, k in self.fields():
                self.skip(k)
        else:
            raise ValueError(f"unknown thrift type {kind}")

    def list_header(self) -> tuple[int, int]:
        head = self.byte()
        size = head >> 4
        if size == 15:
            size = self.varint()
        return size, head & 0x0F

    def union_member(self) -> int | None:
        member = None
        for fid, kind in self.fields():
            member = fid
            self.skip(kind)
        return member


def footer_columns(footer: bytes) -> tuple[list[FooterColumn], int]:
    """The top-level columns of a Parquet footer (FileMetaData, without the trailing
    length and magic), and the offset where its schema ends. Raises
    ValueError/IndexError on a footer that does not parse."""
    t = _Thrift(footer)
    elements: list[FooterColumn] | None = None
    for fid, kind in t.fields():
        if fid == 2 and kind == 9:
            size, _elem = t.list_header()
            elements = [_schema_element(t) for _ in range(size)]
            end = t.pos
            break
        t.skip(kind)
    if not elements:
        raise ValueError("no schema")
    # elements are the schema tree depth-first; keep the root's direct children
    out: list[FooterColumn] = []
    i, remaining = 1, elements[0].children
    while remaining and i < len(elements):
        col = elements[i]
        out.append(col)
        i = _skip_subtree(elements, i)
        remaining -= 1
    return out, end


def _skip_subtree(elements: Sequence[FooterColumn], i: int) -> int:
    pending = elements[i].children
    i += 1
    while pending:
        pending -= 1
        pending += elements[i].children
        i += 1
    return i


def _schema_element(t: _Thrift) -> FooterColumn:
    physical = converted = logical = None
    name = ""
    children = 0
    repeated = False
    for fid, kind in t.fields():
        if fid == 1 and kind == 5:
            physical = t.zigzag()
        elif fid == 3 and kind == 5:
            repeated = t.zigzag() == 2
        elif fid == 4 and kind == 8:
            name = t.binary().decode("utf-8", "replace")
        elif fid == 5 and kind == 5:
            children = t.zigzag()
        elif fid == 6 and kind == 5:
            converted = t.zigzag()
        elif fid == 10 and kind == 12:
            logical = t.union_member()
        else:
            t.skip(kind)
    return FooterColumn(name, physical, converted, logical, children, repeated)


def _kind_of(col: FooterColumn) -> str:
    """What a column can be read as: str, ts, num (int or float), map, null or other."""
    if col.repeated:
        return "other"
    if col.physical is None:
        is_map = col.converted in (_C_MAP, _C_MAP_KV) or col.logical == _L_MAP
        return "map" if is_map else "other"
    if col.logical == _L_NULL:
        return "null"
    if col.physical == _BYTE_ARRAY:
        text = col.converted in (_C_UTF8, _C_ENUM, _C_JSON) or col.logical in (_L_STRING, _L_ENUM, _L_JSON)
        return "str" if text else "other"
    if col.physical == _INT96 or col.converted in _C_TIMESTAMP or col.logical == _L_TIMESTAMP:
        return "ts" if col.physical in (_INT64, _INT96) else "other"
    if col.physical in (_INT32, _INT64):
        plain = col.converted is None or col.converted in _C_INTS or col.converted == _C_DECIMAL
        return "num" if plain and col.logical in (None, _L_INTEGER, _L_DECIMAL) else "other"
    if col.physical in (_FLOAT, _DOUBLE):
        return "num"
    return "other"


#: event column kind (events.COLUMNS) -> the stored kinds readers can cast to it:
#: any timestamp unit, with or without a time zone (naive is taken as UTC); any
#: integer or floating type for numbers (a pandas round trip makes int columns
#: float); a column of nulls only for an optional column.
_COMPATIBLE: Final = {
    "str": frozenset({"str"}),
    "ts": frozenset({"ts"}),
    "f64": frozenset({"num"}),
    "i32": frozenset({"num"}),
    "map": frozenset({"map"}),
}
_KIND_NAMES: Final = {"str": "string", "ts": "timestamp", "f64": "number", "i32": "integer", "map": "map"}


@functools.cache
def _required_columns() -> tuple[str, ...]:
    """The non-nullable columns of ``events.arrow_schema`` (event_id, event_type, timestamp)."""
    from .events import arrow_schema

    return tuple(f.name for f in arrow_schema() if not f.nullable)


def event_schema_problem(columns: Sequence[FooterColumn]) -> str | None:
    """Why a file with these columns is not an event file readers can use, or None.

    The required columns (event_id, event_type, timestamp: non-nullable in
    ``events.arrow_schema``) must be present; every event column present must have
    a type readers cast to the schema's (see :data:`_COMPATIBLE`); an optional
    column may be missing (files written before it was added: NULL there) or all
    null. Columns outside the event schema are ignored."""
    from .events import COLUMN_KINDS

    required = _required_columns()
    by_name = {c.name: c for c in columns}
    missing = [n for n in required if n not in by_name]
    if missing:
        return f"not an event file: no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}"
    for name, kind in COLUMN_KINDS.items():
        col = by_name.get(name)
        if col is None:
            continue
        got = _kind_of(col)
        if got in _COMPATIBLE[kind] or (got == "null" and name not in required):
            continue
        return f"not an event file: column {name} is {col.describe()}, not a {_KIND_NAMES[kind]}"
    return None


def quarantine(root: Path, path: Path, reason: str) -> Path:
    """Move an unreadable file to <root>/quarantine/, keeping its relative path."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    target = root / QUARANTINE / rel
    if target.exists():
        target = target.with_name(f"{target.stem}-{secrets.token_hex(3)}{target.suffix}")
    try:
        ensure_dir(target.parent)
        os.replace(path, target)
    except OSError as exc:
        raise write_error(root, exc) from exc
    log.warning("quarantined unreadable file (%s): %s", reason, target)
    return target
