"""The reader side: a DuckDB connection over the data root with the views
``events`` (deduplicated by event_id), ``events_raw``, ``artifacts`` (one row per
artifact, status derived from its events, DESIGN §4 and §8), ``snapshots_hourly``,
``snapshots_daily`` and ``alerts`` — and helpers to scan a time range cheaply.

File lists are vetted before DuckDB sees them: DuckDB fails a whole query on one
unreadable file, so a truncated or foreign file is skipped with a warning that
names it. Views are fixed to the files present at :func:`connect` time.

Never writes under the root (an object-store root is read through its local
mirror, which :mod:`voicepipe_obs.mirror` owns and updates).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar

import duckdb

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

from . import store
from .artifact_index import artifacts_sql, per_artifact_sql
from .errors import StoreError
from .events import (
    FAILURE_EVENT_TYPES,
    arrow_schema,
)
from .sql import sql_list, sql_str

log = logging.getLogger("voicepipe_obs.query")


def vetted_files(
    root: Path,
    area: str = store.EVENTS,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[Path]:
    """Complete, readable-looking Parquet files of an area, pruned to [since, until)."""
    return complete(store.list_parquet(root, area, since=since, until=until))


def complete(listed: Sequence[Path]) -> list[Path]:
    """:func:`vetted` ``listed``, with the files compaction wrote in place of any
    that vanished while they were being vetted (:func:`relist`): vetting skips a
    vanished file silently, and without this an hour compacted between listing and
    vetting would be missing from the list altogether."""
    good = vetted(listed)
    if len(good) == len(listed):
        return good
    kept = set(good)
    gone = [p for p in listed if p not in kept and not p.exists()]
    if not gone:
        return good
    return sorted(relist([*good, *gone]))


#: (file, reason) pairs already warned about: once per file per process, however
#: many connections and scans list it.
_warned: set[tuple[str, str]] = set()


def _unreadable_advice(path: Path) -> str:
    """What to do about an unreadable file, by the area of the layout it is in."""
    kind = path.parent.parent.name  # events/date=/hour=/f, snapshots/hourly/date=/f, alerts/date=/f
    if path.parent.name.startswith("hour=") and path.parent.parent.parent.name == store.EVENTS:
        return "`voicepipe compact` moves such files to quarantine/"
    if kind in ("hourly", "daily") and path.parent.parent.parent.name == "snapshots":
        return "`voicepipe aggregate --rebuild` rewrites the snapshots within retention (or delete the file)"
    if kind == store.ALERTS:
        return "move it out of alerts/ (the alert log is read without it meanwhile)"
    return "move it out of the data root"


def vetted(files: Iterable[Path]) -> list[Path]:
    """The readable-looking ``files``; the others are skipped with a warning (once per
    file per process) saying what to do about them."""
    good, bad = store.vet_parquet(files)
    reading(good)
    for path, reason in bad:
        key = (str(path), reason)
        if key in _warned:
            continue
        _warned.add(key)
        log.warning("skipping unreadable file %s (%s); %s", path, reason, _unreadable_advice(path))
    return good


#: Files vetting passed, in the order first handed to readers: DuckDB's error for a
#: file with a valid footer but corrupt data pages does not name the file, so
#: :func:`skip_unreadable` reads these one by one to find it.
_handed_out: dict[str, None] = {}
#: (path, size, mtime_ns, inode) of files :func:`skip_unreadable` read in full
#: without error: a later failure does not read them again.
_read_ok: set[tuple[str, int, int, int]] = set()
#: DuckDB errors a corrupt file can raise (besides the bare ``duckdb.Error`` of
#: "don't know what type"); parser, binder, catalog errors and the like cannot.
_CORRUPTION_ERRORS: Final = (
    duckdb.InvalidInputException,
    duckdb.IOException,
    duckdb.InternalException,
    duckdb.SerializationException,
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def reading(files: Iterable[Path | str]) -> None:
    """Note that a query is about to read ``files`` (the candidates should it fail on
    corrupt data: see :func:`skip_unreadable`). A dict insert per file."""
    for f in files:
        _handed_out[str(f)] = None


def _duckdb_error(exc: BaseException) -> duckdb.Error | None:
    """The DuckDB error ``exc`` is or was raised from (a StoreError wraps it), or None."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, duckdb.Error):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _may_be_corrupt(err: duckdb.Error) -> bool:
    text = str(err)
    if any(m in text for m in (*_MISSING_FILE_ERRORS, "Permission denied")):
        return False  # a vanished file (retry_vanished) or permissions (not ours to skip)
    return type(err) is duckdb.Error or isinstance(err, _CORRUPTION_ERRORS)


def _full_read_failure(path: Path) -> str | None:
    """Why reading every column of every row of ``path`` fails, or None: when it
    reads, is gone, or cannot be opened (permissions are reported, not skipped)."""
    try:
        st = path.stat()
        with open(path, "rb"):
            pass
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _read_ok:
        return None
    con = duckdb.connect()
    try:
        # materialised, so every column is decoded (a count would read none)
        con.execute(f"CREATE TEMP TABLE _vp_probe AS SELECT * FROM read_parquet({sql_str(str(path))})")
    except duckdb.Error as exc:
        if not _may_be_corrupt(exc):
            return None
        first = _CONTROL.sub("", (str(exc).strip().splitlines() or [""])[0]).strip().rstrip(":").strip()
        return f"corrupt data: {first or type(exc).__name__}"
    finally:
        con.close()
    _read_ok.add(key)
    return None


def skip_unreadable(exc: BaseException) -> list[Path]:
    """After a read failed with ``exc``: when it is a DuckDB error that corrupt data
    can cause, the files it may have read (those vetting passed in this process)
    that fail a full read of their own. Each is remembered as unreadable for the
    rest of the process (vetting skips it from now on) and warned about once, naming
    it and what to do, as vetting does — so the caller lists its files again and
    retries. Empty when ``exc`` is no such error or no file is to blame (re-raise
    it then). The happy path pays nothing: files are read only after a failure,
    and each file once.

    A footer can be valid over garbage data pages (a bad disk, a copy gone wrong):
    vetting, which reads footers only, passes such a file, and DuckDB then fails the
    whole query with an error naming no file ("don't know what type")."""
    err = _duckdb_error(exc)
    if err is None or not _may_be_corrupt(err):
        return []
    bad: list[Path] = []
    for name in list(_handed_out):
        path = Path(name)
        reason = _full_read_failure(path)
        if reason is not None and store.mark_unreadable(path, reason):
            bad.append(path)
            _handed_out.pop(name, None)
    vetted(bad)  # the warning, once per file
    return bad


def retried_read(func: Callable[P, T]) -> Callable[P, T]:
    """``func`` — a read that lists its files itself on every call and writes
    nothing — run as :func:`retry_vanished` runs a read: again over a fresh listing
    when a listed file vanished (compaction), or without the files a failure showed
    unreadable (:func:`skip_unreadable`)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return retry_vanished(lambda _attempt: func(*args, **kwargs), what=func.__name__)

    return wrapper


#: How long (seconds, in all) a read is tried again while files it listed keep
#: vanishing under it: compaction removes an hour's sources right after writing
#: their merged file, hour after hour, so a read over many hours can lose one of
#: its files at every attempt until the compaction is done (minutes, for a first
#: compaction of months of small files). Bounded by time, not by a count of tries.
READ_DEADLINE_SECONDS: Final = 600.0
#: The longest pause between two tries (the first ones are shorter).
_RETRY_PAUSE_MAX: Final = 0.5
_QUOTED = re.compile(r'"([^"]+)"')
_MISSING_FILE_ERRORS: Final = ("No files found that match the pattern", "No such file or directory")
T = TypeVar("T")
P = ParamSpec("P")

#: The deadline of the outermost :func:`retry_vanished` running in this thread: a
#: nested one (a read that retries inside a read that retries) shares it rather
#: than starting its own, so the whole read is bounded by one deadline.
_retrying = threading.local()


def vanished_file(exc: BaseException) -> str | None:
    """The file a DuckDB error (or the error it caused, e.g. a StoreError raised
    from it) failed on because it does not exist *now*, or None. That is how a read
    over a listed set of files fails when ``voicepipe compact`` or ``cleanup``
    removed one of them after the listing."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, duckdb.Error):
            text = str(seen)
            if any(m in text for m in _MISSING_FILE_ERRORS):
                for candidate in map(str, _QUOTED.findall(text)):
                    if candidate.endswith(".parquet") and not os.path.exists(candidate):
                        return candidate
            return None
        seen = seen.__cause__ or seen.__context__
    return None


class VanishedError(StoreError):
    """A read kept losing the files it listed (to a running ``voicepipe compact``
    or ``cleanup``) for :data:`READ_DEADLINE_SECONDS`: one line for the user."""


def retry_vanished(read: Callable[[int], T], *, what: str = "read", deadline: float | None = None) -> T:
    """``read(attempt)`` — which lists the files it reads, and lists them again when
    ``attempt`` > 0 — retried while it fails on a file that vanished since it was
    listed (:func:`vanished_file`).

    Compaction writes the merged file before it unlinks the sources, and cleanup
    takes whole partitions out at once, so a fresh listing is complete: the retry
    sees every event (duplicates are deduplicated by every reader). A compaction of
    many hours removes files all the while it runs, so a read over all of them may
    lose one at every try until it is done: the read is tried again for as long as
    its files keep vanishing, up to ``deadline`` seconds in all (default
    :data:`READ_DEADLINE_SECONDS`; a nested call shares its caller's), then fails
    with :class:`VanishedError` (a one-line StoreError). Any other error is raised
    at once. This is how every reader over a fixed file list
    (``connect(live=False)``, aggregation, reports) keeps the promise that a reader
    never misses an event and needs no lock. The first try costs nothing extra.
    """
    outer = getattr(_retrying, "deadline", None)
    until = time.monotonic() + (READ_DEADLINE_SECONDS if deadline is None else deadline)
    if outer is not None:
        until = min(until, outer)
    _retrying.deadline = until
    attempt = 0
    try:
        while True:
            try:
                return read(attempt)
            except VanishedError:
                raise
            except Exception as exc:
                # a file gone since the listing, or one with corrupt data pages that
                # a full read has now found (it is skipped from now on)
                gone = vanished_file(exc) or ", ".join(map(str, skip_unreadable(exc))) or None
                if gone is None:
                    raise
                attempt += 1
                pause = min(_RETRY_PAUSE_MAX, 0.02 * 2**attempt)
                if time.monotonic() + pause >= until:
                    raise VanishedError(
                        f"{what}: the files it read kept vanishing (last {gone}) for {attempt} tries: "
                        "a `voicepipe compact` or `cleanup` is replacing them; try again once it has finished"
                    ) from exc
                log.debug("%s: %s gone or found unreadable since it was listed; listing again", what, gone)
                time.sleep(pause)
    finally:
        _retrying.deadline = outer


def relist(files: Iterable[Path | str]) -> list[Path]:
    """``files`` as they are now: the ones still present, plus — for a directory
    that lost one — its current (vetted) Parquet files not already among them (what
    compaction wrote in their place)."""
    present: list[Path] = []
    lost_dirs: dict[Path, None] = {}
    for f in files:
        path = Path(f)
        if path.exists():
            present.append(path)
        else:
            lost_dirs[path.parent] = None
    if store.has_failed_reads():  # drop the files a failed read showed unreadable
        present = vetted(present)
    if not lost_dirs:
        return present
    have = set(present)
    fresh = [p for d in lost_dirs for p in store.parquet_files(d) if p not in have]
    return present + vetted(fresh)


def session_defaults(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Set what the library's own queries assume on ``con`` (session settings: each
    cursor needs them again): timestamps in UTC, and no progress bar drawn on stderr
    (it would end up in cron mail). Returns ``con``."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    return con


def duck_type(arrow_type: pa.DataType) -> str:
    """The DuckDB type of an Arrow type (those the library's schemas use)."""
    import pyarrow as pa

    t = arrow_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "VARCHAR"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz is not None else "TIMESTAMP"
    if pa.types.is_map(t):
        return f"MAP({duck_type(t.key_type)}, {duck_type(t.item_type)})"
    if pa.types.is_list(t):
        return f"{duck_type(t.value_type)}[]"
    simple = {
        pa.int8(): "TINYINT",
        pa.int16(): "SMALLINT",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE",
        pa.bool_(): "BOOLEAN",
        pa.date32(): "DATE",
    }
    if t in simple:
        return simple[t]
    raise TypeError(f"no DuckDB type for {t}")


def empty_view(con: duckdb.DuckDBPyConnection, name: str, schema: pa.Schema) -> None:
    """Temp view ``name``: no rows, the columns and types of ``schema``. Made in SQL:
    an empty Arrow table (``schema.empty_table()``, ``con.register``) makes pyarrow
    or DuckDB import pandas when it is installed, ~0.7 s on every command."""
    cols = ", ".join(f"NULL::{duck_type(f.type)} AS {f.name}" for f in schema)
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {cols} LIMIT 0")


def drop_duplicates(con: duckdb.DuckDBPyConnection, table: str, rows: str = "true") -> None:
    """Keep one row per event_id among the ``rows`` (an SQL condition) of the temp
    table ``table``, in place: duplicates are normally none or a few, and replacing
    them measured much cheaper than copying every row into a deduplicated table. A
    duplicate is normally the same row written twice; the rare event_id seen with
    different contents keeps one of its rows."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _vp_dup AS SELECT event_id FROM {table} WHERE {rows} "
        "GROUP BY event_id HAVING count(*) > 1"
    )
    if con.execute("SELECT count(*) FROM _vp_dup").fetchall()[0][0]:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _vp_one AS SELECT DISTINCT ON (event_id) * FROM {table} "
            f"WHERE ({rows}) AND event_id IN (SELECT event_id FROM _vp_dup)"
        )
        con.execute(f"DELETE FROM {table} WHERE ({rows}) AND event_id IN (SELECT event_id FROM _vp_dup)")
        con.execute(f"INSERT INTO {table} SELECT * FROM _vp_one")
        con.execute("DROP TABLE _vp_one")
    con.execute("DROP TABLE _vp_dup")


def parquet_scan(files: Sequence[Path]) -> str:
    """A FROM-clause source reading exactly these event files (or an empty typed relation)."""
    if not files:
        return "_voicepipe_empty_events"
    reading(files)
    return f"read_parquet([{', '.join(sql_str(str(f)) for f in files)}], hive_partitioning=false)"


def _in(types: Iterable[str]) -> str:
    return sql_list(sorted(types))


#: One row per artifact over the ``events`` view; the status derivation of DESIGN §4
#: (defined once, in :mod:`voicepipe_obs.artifact_index`, which also computes these
#: rows from its index).
ARTIFACTS_SQL = artifacts_sql(per_artifact_sql("events"))

FAILURE_TYPES_SQL = _in(FAILURE_EVENT_TYPES)


def connect(
    root: str | os.PathLike[str] | None = None,
    *,
    database: str = ":memory:",
    live: bool = True,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views events, events_raw, artifacts,
    snapshots_hourly, snapshots_daily, alerts and alert_log over the data root.

    ``live`` (the default, for notebooks and long-lived connections): each query
    reads the files present when it runs, so new events and snapshots show up
    (also in a root that had none when you connected) and the connection keeps
    working after ``voicepipe compact``, ``aggregate`` and ``cleanup`` replace or
    remove files, down to none. A file that is not valid Parquet then fails the
    query with DuckDB's error naming it (``voicepipe compact`` moves such files to
    ``quarantine/``); one that is already there when you connect is skipped with a
    warning, and that area's view lists the files present now. ``live=False``
    fixes the views to the files present now, skipping unreadable ones with a
    warning (what voicepipe's own commands use): connect again after compaction.

    A missing root gives empty views (not an error): check with
    ``SELECT count(*) FROM events``.

    An object-store root (``s3://bucket/prefix``, also from ``$VOICEPIPE_DATA``) is
    first pulled into its local mirror (:mod:`voicepipe_obs.mirror`), which the
    views read: connect again (or call ``Mirror(url).pull()``) to see newer files.
    """
    rootp = _local_root(root)
    con = duckdb.connect(database)
    con.execute("SET enable_progress_bar = false")  # never draw on stderr (cron mail)
    register_views(con, rootp, live=live)
    return con


def _local_root(root: str | os.PathLike[str] | None) -> Path:
    """The local directory to read: ``root``, or an object-store root's freshly
    pulled mirror."""
    from . import remote

    given = store.given_root(root)
    if remote.is_remote(given):
        from .mirror import mirrored

        return mirrored(os.fspath(given))
    return store.resolve_root(root)


#: The files of each area, relative to the area (what :func:`area_source` globs).
AREA_PATTERNS: Final = {
    store.EVENTS: "date=*/hour=*/*.parquet",
    store.SNAPSHOTS_HOURLY: "date=*/*.parquet",
    store.SNAPSHOTS_DAILY: "date=*/*.parquet",
    store.ALERTS: "date=*/*.parquet",
}


def area_source(
    root: Path,
    area: str,
    *,
    empty: str,
    columns: Sequence[str],
    live: bool = False,
    by_name: bool = False,
) -> str:
    """A FROM-source over an area's Parquet files with exactly ``columns``; ``empty``
    names a registered empty table of the area's schema (the source when there are
    no files). ``by_name`` matches columns by name (files written before a column was
    added lack it: NULL there).

    With ``live`` the source is a glob DuckDB expands again at every query, typed by
    a union with ``empty`` (so an area emptied by cleanup, or filled after connecting,
    still works; see :func:`connect`), except when a file is unreadable now (it would
    fail every query) or the root's path holds glob characters. Otherwise it reads
    exactly the vetted files present now."""
    listed = store.list_parquet(root, area)
    files = vetted(listed)
    opts = "hive_partitioning = false" + (", union_by_name = true" if by_name else "")
    cols = ", ".join(columns)
    if live and len(files) == len(listed) and not any(c in str(root) for c in "*?[]{}"):
        glob = sql_str(str(root / area / AREA_PATTERNS[area]))
        # an empty glob reads as one column named "empty": the projection drops it
        return (
            f"(SELECT {cols} FROM (SELECT * FROM read_parquet({glob}, {opts}, allow_empty = true) "
            f"UNION ALL BY NAME SELECT * FROM {empty}))"
        )
    if not files:
        return empty
    return f"read_parquet([{', '.join(sql_str(str(f)) for f in files)}], {opts})"


def register_views(con: duckdb.DuckDBPyConnection, root: Path, *, live: bool = False) -> None:
    """(Re)create every view on ``con`` over the files under ``root`` (``live``: see
    :func:`connect`)."""
    schema = arrow_schema()
    empty_view(con, "_voicepipe_empty_events", schema)
    src = area_source(root, store.EVENTS, empty="_voicepipe_empty_events", columns=schema.names, live=live)
    con.execute(f"CREATE OR REPLACE VIEW events_raw AS SELECT * FROM {src}")
    con.execute("CREATE OR REPLACE VIEW events AS SELECT DISTINCT ON (event_id) * FROM events_raw")
    con.execute(f"CREATE OR REPLACE VIEW artifacts AS {ARTIFACTS_SQL}")
    from . import aggregate, alerts

    aggregate.register_views(con, root, live=live)
    alerts.register_views(con, root, live=live)
