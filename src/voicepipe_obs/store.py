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
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .errors import StoreError

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
    """The data root: the argument, else $VOICEPIPE_DATA, else ./voicepipe-data."""
    if root is None or str(root) == "":
        root = os.environ.get(ENV_ROOT) or DEFAULT_ROOT
    return Path(root).expanduser()


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


def write_table(
    path: Path,
    table: pa.Table,
    *,
    sort_by: Sequence[tuple[str, str]] | None = None,
    row_group_size: int | None = None,
    statistics: bool | Sequence[str] = True,
    compression: str = "zstd",
    dictionary: bool = True,
) -> Path:
    """Write ``table`` to ``path`` atomically: a temporary name no ``*.parquet`` glob
    matches, page checksums, fsync, then rename. Replaces an existing file.

    Encoded in memory and written with one call (pyarrow writing page by page
    through a Python file object cost more CPU than encoding a small file);
    dictionary encoding for string columns only (ids, types and names repeat,
    measured numbers do not; none without ``dictionary``); min/max statistics for
    every column or only the ``statistics`` named; zstd unless ``compression`` says
    otherwise.

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
            os.fsync(fh.fileno())
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
    start with a dot); none when the directory is gone."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
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
    and footer magic, footer length), so one truncated file cannot fail a query."""
    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for path in paths:
        reason = _check_parquet(path)
        if reason is None:
            good.append(path)
        else:
            bad.append((path, reason))
    return good, bad


def _check_parquet(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 12:
                return "too small to be Parquet"
            if fh.read(4) != _MAGIC:
                return "no Parquet header"
            fh.seek(size - 8)
            tail = fh.read(8)
    except FileNotFoundError:
        return "vanished while listing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if tail[4:] != _MAGIC:
        return "truncated (no Parquet footer)"
    footer_len = int.from_bytes(tail[:4], "little")
    if footer_len <= 0 or footer_len > size - 12:
        return "corrupt footer"
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
