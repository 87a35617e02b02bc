"""Store maintenance operations run by cron: compaction of closed hours, the spool
recovery sweep, quarantine of unreadable event files, and retention (cleanup).

Builds on the primitives of ``store.py`` (layout, atomic ``write_table``, listing,
vetting, ``quarantine``) and on ``emit.recover_spools``; it never runs aggregation
(``aggregate.py``) and never writes into an hour that is still open.

Compaction rewrites an hour's files into one file sorted by (artifact_id, timestamp)
with duplicate event_ids dropped, *writes it first* and only then deletes the
sources, so a reader listing the directory at any moment sees every event (possibly
twice — readers deduplicate). The compacted file's Parquet metadata names its
sources (:data:`COMPACTED_FROM_KEY`), which lets incremental aggregation treat it as
already aggregated when its sources were.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from . import store
from .errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from .config import RetentionSettings

log = logging.getLogger("voicepipe_obs.maintenance")

#: Parquet key-value metadata of a compacted file: JSON list of its source file names.
COMPACTED_FROM_KEY: Final = b"voicepipe.compacted_from"
COMPACTED_PREFIX: Final = "compact-"
COMPACT_LOCK: Final = "compact.lock"
CLEANUP_LOCK: Final = "cleanup.lock"
#: files younger than this (by mtime) are left alone: a live writer may still be settling
DEFAULT_GRACE: Final = dt.timedelta(minutes=5)
#: hours compacted in parallel (reading, encoding and fsync release the GIL)
WORKERS: Final = 4
SORT_KEYS: Final = (("artifact_id", "ascending"), ("timestamp", "ascending"))


# ---------------------------------------------------------------------- compaction


@dataclass
class CompactResult:
    """What a compaction run did."""

    hours: int = 0
    files_in: int = 0
    files_out: int = 0
    events_in: int = 0
    events_out: int = 0
    spool_events: int = 0
    spool_segments: int = 0
    quarantined: list[tuple[Path, str]] = field(default_factory=list)
    skipped_young: int = 0
    #: what interrupted runs had left (removed)
    leftovers: Leftovers | None = None

    @property
    def duplicates_dropped(self) -> int:
        return self.events_in - self.events_out

    @property
    def did_something(self) -> bool:
        return bool(self.files_in or self.spool_segments or self.quarantined)


def compacted_alone(hour_files: Sequence[Path | str]) -> bool:
    """Whether an hour partition's files are one compacted file: it holds no
    duplicates (compaction dropped them, and an event's copies share its hour), so
    readers need not check that hour for them."""
    return len(hour_files) == 1 and os.path.basename(hour_files[0]).startswith(COMPACTED_PREFIX)


def recover(root: str | os.PathLike[str]) -> tuple[int, int]:
    """The spool recovery sweep: write dead processes' spools as Parquet, exactly
    once. Returns (events, segments) recovered. Raises :class:`StoreError` when the
    root cannot be written."""
    from .emit import recover_spools

    try:
        return recover_spools(root)
    except OSError as exc:
        raise store.write_error(store.resolve_root(root), exc) from exc


def _conform(table: pa.Table) -> pa.Table:
    """A table in the event schema: columns by name, missing ones null, cast to the
    schema's types (raises on a column that cannot be cast, or on nulls in a
    required one)."""
    import pyarrow as pa

    from .events import arrow_schema

    schema = arrow_schema()
    arrays = []
    for fld in schema:
        if fld.name in table.column_names:
            if not fld.nullable and table[fld.name].null_count:
                raise ValueError(f"column {fld.name} has nulls")
            arrays.append(table[fld.name].cast(fld.type))
        else:
            arrays.append(pa.nulls(table.num_rows, fld.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _dedup(table: pa.Table) -> pa.Table:
    """First row of each event_id, then sorted by (artifact_id, timestamp)."""
    import pyarrow as pa

    idx = pa.array(range(table.num_rows), pa.int64())
    keep = (
        table.select(["event_id"])
        .append_column("_i", idx)
        .group_by("event_id", use_threads=False)
        .aggregate([("_i", "min")])["_i_min"]
    )
    return table.take(keep).sort_by(list(SORT_KEYS))


def _read_file(path: Path) -> pa.Table:
    """One event file, whole. ``ParquetFile.read`` rather than ``pq.read_table``:
    the dataset machinery behind the latter costs ~3× more on small files."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as fh:
        table: pa.Table = fh.read()
    return table


def _read_failure(exc: BaseException) -> str:
    """The quarantine reason of a file whose full read raised ``exc``."""
    return f"unreadable ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]})"


def _unreadable_reason(path: Path) -> str | None:
    """Why ``path`` cannot be read in full (as compaction reads it), or None.
    Raises FileNotFoundError when it is gone."""
    try:
        _conform(_read_file(path))
    except FileNotFoundError:
        raise
    except Exception as exc:
        return _read_failure(exc)
    return None


@dataclass
class _HourResult:
    files_in: int = 0
    events_in: int = 0
    events_out: int = 0
    skipped_young: int = 0
    quarantined: list[tuple[Path, str]] = field(default_factory=list)
    #: the merged files' sources, and when it was written (time.monotonic)
    sources: list[Path] = field(default_factory=list)
    written_at: float = 0.0


def _compact_hour(root: Path, part: store.Partition, young: float) -> _HourResult:
    """Compact one closed hour's directory (see :func:`compact`)."""
    import pyarrow as pa

    from .events import SCHEMA_VERSION, SCHEMA_VERSION_KEY

    out = _HourResult()
    try:
        names = sorted(n for n in os.listdir(part.path) if n.endswith(".parquet") and not n.startswith("."))
    except FileNotFoundError:
        return out
    good, bad = store.vet_parquet([part.path / n for n in names])
    for path, reason in bad:
        out.quarantined.append((store.quarantine(root, path, reason), reason))
    settled = []
    for path in good:
        try:
            if path.stat().st_mtime > young:
                # left for the next run, but read in full now: a file whose data
                # pages are corrupt behind a valid footer is unreadable, not young
                # (readers skip it; only quarantine makes that stop)
                failure = _unreadable_reason(path)
                if failure is None:
                    out.skipped_young += 1
                else:
                    out.quarantined.append((store.quarantine(root, path, failure), failure))
                continue
        except FileNotFoundError:
            continue
        settled.append(path)
    if not settled or compacted_alone(settled):
        return out
    tables = []
    sources = []
    for path in settled:
        try:
            tables.append(_conform(_read_file(path)))
            sources.append(path)
        except FileNotFoundError:
            continue  # another compactor got there first
        except Exception as exc:  # unreadable beyond the footer check
            reason = _read_failure(exc)
            out.quarantined.append((store.quarantine(root, path, reason), reason))
    if not sources:
        return out
    merged = pa.concat_tables(tables)
    table = _dedup(merged).replace_schema_metadata(
        {
            SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode(),
            COMPACTED_FROM_KEY: json.dumps([p.name for p in sources]).encode(),
        }
    )
    target = part.path / f"{COMPACTED_PREFIX}{store.unique_name()}.parquet"
    store.write_table(target, table, row_group_size=128 * 1024)
    log.debug("compact: wrote %s (%d files, %d events)", target, len(sources), table.num_rows)
    out.written_at = time.monotonic()
    out.sources = sources  # removed by the caller, UNLINK_DELAY after this
    out.files_in, out.events_in, out.events_out = len(sources), merged.num_rows, table.num_rows
    return out


#: How long an hour's sources outlive its merged file. A reader lists an hour's
#: directory while compaction renames the merged file in and unlinks the sources;
#: a directory read concurrently with both may return neither (POSIX leaves entries
#: added or removed during a readdir unspecified), and the hour would look empty
#: without any file having vanished from the listing — nothing to retry on. With
#: the sources kept a moment after the merged file appears, any listing sees one or
#: the other in full (copies are fine: readers drop duplicate event ids).
UNLINK_DELAY: Final = 1.0


def _unlink_sources(pending: deque[tuple[float, list[Path]]], *, wait: bool) -> None:
    """Remove the sources of merged files written at least :data:`UNLINK_DELAY`
    ago (``wait``: all of them, sleeping until they are)."""
    while pending:
        written_at, sources = pending[0]
        left = written_at + UNLINK_DELAY - time.monotonic()
        if left > 0:
            if not wait:
                return
            time.sleep(left)
        pending.popleft()
        for path in sources:  # the merged file is complete, and has been for a while
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def compact(
    root: str | os.PathLike[str],
    *,
    now: dt.datetime,
    grace: dt.timedelta = DEFAULT_GRACE,
    progress: Callable[[int, int], None] | None = None,
    lock_timeout: float = store.LOCK_TIMEOUT,
) -> CompactResult:
    """Recover dead processes' spools, then merge each closed hour's files (hours
    before ``now``'s hour) into one sorted, deduplicated file. Files modified less
    than ``grace`` ago (wall clock) are left for the next run; unreadable files and
    files that are not event files move to ``quarantine/`` whatever their age.
    Idempotent: an hour already in one compacted file is skipped. Also finishes what
    an interrupted run left: stale temporary files and cleanup's trash.

    One run at a time per root (``<root>/_state/compact.lock``): a second waits up
    to ``lock_timeout`` seconds, then raises :class:`~voicepipe_obs.errors.BusyError`
    (exit 5) having done nothing.
    """
    if now.tzinfo is None:
        raise UsageError("now must be timezone-aware")
    rootp = store.local_root(root)
    try:
        with store.run_lock(rootp, COMPACT_LOCK, command="compact", timeout=lock_timeout):
            return _compact(rootp, now, grace, progress)
    except OSError as exc:
        raise store.write_error(rootp, exc) from exc


def _compact(
    rootp: Path, now: dt.datetime, grace: dt.timedelta, progress: Callable[[int, int], None] | None
) -> CompactResult:
    result = CompactResult()
    result.leftovers = remove_leftovers(rootp)
    result.spool_events, result.spool_segments = recover(rootp)
    open_hour = store.to_us(now) - store.to_us(now) % store.US_PER_HOUR
    young = time.time() - grace.total_seconds()
    parts = [p for p in store.iter_partitions(rootp) if p.hour is not None]
    todo = []
    for part in parts:
        try:
            day = dt.datetime.fromisoformat(part.date).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
        if store.to_us(day) + (part.hour or 0) * store.US_PER_HOUR >= open_hour:
            continue
        todo.append(part)
    log.info(
        "compact: %d hour partitions under %s, %d closed (before %s)",
        len(parts),
        rootp / store.EVENTS,
        len(todo),
        store.from_us(open_hour).strftime("%Y-%m-%d %H:00 UTC"),
    )
    done = 0
    pending: deque[tuple[float, list[Path]]] = deque()
    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for hour in pool.map(lambda part: _compact_hour(rootp, part, young), todo):
                result.quarantined += hour.quarantined
                result.skipped_young += hour.skipped_young
                if hour.files_in:
                    result.hours += 1
                    result.files_in += hour.files_in
                    result.files_out += 1
                    result.events_in += hour.events_in
                    result.events_out += hour.events_out
                    pending.append((hour.written_at, hour.sources))
                _unlink_sources(pending, wait=False)
                done += 1
                if progress is not None:
                    progress(done, len(todo))
    finally:  # also when interrupted: what was merged loses its sources (copies otherwise)
        _unlink_sources(pending, wait=True)
    log.info(
        "compacted %d files into %d in %d hours (%d duplicate events dropped; "
        "%d files younger than the grace period left for the next run)",
        result.files_in,
        result.files_out,
        result.hours,
        result.duplicates_dropped,
        result.skipped_young,
    )
    return result


# ---------------------------------------------------------------------- leftovers

#: A temporary file (see ``store.write_table``) older than this is a killed
#: writer's: a live writer renames its file within seconds of creating it.
STALE_TMP: Final = dt.timedelta(hours=1)
TRASH: Final = "trash"
#: where temporary files can be left (the recorder's spool is its own business)
_TMP_AREAS: Final = (store.EVENTS, "snapshots", store.ALERTS, store.STATE)


@dataclass(frozen=True)
class Leftovers:
    """What killed runs left behind: partitions cleanup had moved to its trash but
    not deleted yet, and temporary files of interrupted writes."""

    trash: list[Path]
    tmp_files: list[Path]
    bytes: int

    def __bool__(self) -> bool:
        return bool(self.trash or self.tmp_files)


def leftovers(root: str | os.PathLike[str], *, stale: dt.timedelta = STALE_TMP) -> Leftovers:
    """The trash directories under ``<root>/_state/trash/`` and the temporary files
    (``.<name>.<random>.tmp``) older than ``stale`` by mtime — never a live writer's
    file in progress."""
    rootp = store.local_root(root)
    trash_dir = rootp / store.STATE / TRASH
    try:
        trash = sorted(p for p in trash_dir.iterdir())
    except OSError:
        trash = []
    size = sum(_tree_size(p) for p in trash)
    cutoff = time.time() - stale.total_seconds()
    tmp: list[Path] = []
    for area in _TMP_AREAS:
        for dirpath, dirs, names in os.walk(rootp / area):
            if Path(dirpath) == trash_dir.parent:
                dirs[:] = [d for d in dirs if d != TRASH]
            for name in names:
                if not (name.startswith(".") and name.endswith(store.TMP_SUFFIX)):
                    continue
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except OSError:
                    continue
                if st.st_mtime < cutoff:
                    tmp.append(path)
                    size += st.st_size
    return Leftovers(trash, sorted(tmp), size)


def remove_leftovers(root: str | os.PathLike[str], found: Leftovers | None = None) -> Leftovers:
    """Delete what :func:`leftovers` finds (or ``found``) and return it. An events
    partition in the trash also resets the receipts index (as cleanup does once it
    has deleted one)."""
    rootp = store.local_root(root)
    found = found if found is not None else leftovers(rootp)
    for path in found.tmp_files:
        try:
            path.unlink()
            log.info("removed the stale temporary file %s (an interrupted write)", path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise store.write_error(rootp, exc) from exc
    for path in found.trash:
        problems = _rmtree(path)
        if problems:
            log.warning("could not delete everything in %s (%s): delete it by hand", path, problems[0])
        else:
            log.info("removed %s (left by an interrupted cleanup)", path)
    if any(p.name.startswith(f"{store.EVENTS}-") for p in found.trash):
        from .aggregate import reset_receipts

        reset_receipts(rootp)
    return found


def _tree_size(path: Path) -> int:
    size = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return size


# ---------------------------------------------------------------------- retention


@dataclass(frozen=True)
class DroppedPartition:
    area: str  # events | snapshots/hourly | snapshots/daily | alerts
    date: str
    path: Path
    files: int
    bytes: int


def _retention_days(retention: RetentionSettings) -> dict[str, int]:
    return {
        store.EVENTS: retention.events_days,
        store.SNAPSHOTS_HOURLY: retention.hourly_snapshots_days,
        store.SNAPSHOTS_DAILY: retention.daily_snapshots_days,
        store.ALERTS: retention.alerts_days,
    }


def expired_partitions(
    root: str | os.PathLike[str], retention: RetentionSettings, *, now: dt.datetime
) -> list[DroppedPartition]:
    """The date= partitions entirely older than their area's retention: a day is
    past retention when it ended at least ``days`` days before ``now``."""
    if now.tzinfo is None:
        raise UsageError("now must be timezone-aware")
    rootp = store.local_root(root)
    out = []
    for area, days in _retention_days(retention).items():
        cutoff = now - dt.timedelta(days=days)
        base = rootp / area
        if not base.is_dir():
            continue
        for ddir in sorted(base.iterdir()):
            if not ddir.is_dir() or not ddir.name.startswith("date="):
                continue
            try:
                day = dt.datetime.fromisoformat(ddir.name[5:]).replace(tzinfo=dt.timezone.utc)
            except ValueError:
                continue
            if day + dt.timedelta(days=1) > cutoff:
                continue
            files = size = 0
            for dirpath, _dirs, names in os.walk(ddir):
                for name in names:
                    files += 1
                    try:
                        size += os.stat(os.path.join(dirpath, name)).st_size
                    except OSError:
                        pass
            out.append(DroppedPartition(area, ddir.name[5:], ddir, files, size))
    return out


def cleanup(
    root: str | os.PathLike[str],
    retention: RetentionSettings,
    *,
    now: dt.datetime,
    dry_run: bool = False,
    lock_timeout: float = store.LOCK_TIMEOUT,
) -> list[DroppedPartition]:
    """Drop every date= partition past retention (see :func:`expired_partitions`)
    and return them; with ``dry_run`` only return them. A partition is first renamed
    out of the layout (so it vanishes from globs at once), then deleted.

    One run at a time per root (``_state/cleanup.lock``). Dropping event partitions
    also waits for any ``compact`` run (which could write a compacted file back into
    a partition being dropped) and ``aggregate`` run (whose receipts index it resets:
    an aggregate run that saved its receipts after the reset would leave the index
    without every older receipt, and end-to-end latency unknown for their
    completions until a ``--rebuild``). Each lock is waited for up to
    ``lock_timeout`` seconds, all of them before anything is dropped, then
    :class:`~voicepipe_obs.errors.BusyError` (exit 5) with nothing done."""
    rootp = store.local_root(root)
    if dry_run:
        return _cleanup(rootp, retention, now=now, dry_run=True)
    try:
        with store.run_lock(rootp, CLEANUP_LOCK, command="cleanup", timeout=lock_timeout):
            return _cleanup(rootp, retention, now=now, dry_run=False, lock_timeout=lock_timeout)
    except OSError as exc:
        raise store.write_error(rootp, exc) from exc


def _cleanup(
    rootp: Path,
    retention: RetentionSettings,
    *,
    now: dt.datetime,
    dry_run: bool,
    lock_timeout: float = store.LOCK_TIMEOUT,
) -> list[DroppedPartition]:
    expired = expired_partitions(rootp, retention, now=now)
    log.info(
        "cleanup: %d partitions under %s past retention (events %d days, hourly snapshots %d, "
        "daily snapshots %d, alerts %d)",
        len(expired),
        rootp,
        retention.events_days,
        retention.hourly_snapshots_days,
        retention.daily_snapshots_days,
        retention.alerts_days,
    )
    if dry_run:
        return expired
    remove_leftovers(rootp)
    if not expired:
        return expired
    drops_events = any(p.area == store.EVENTS for p in expired)
    with ExitStack() as locks:
        if drops_events:
            from .aggregate import LOCK_FILE

            # in this order (compact, then aggregate) wherever both are taken
            locks.enter_context(store.run_lock(rootp, COMPACT_LOCK, command="compact", timeout=lock_timeout))
            locks.enter_context(store.run_lock(rootp, LOCK_FILE, command="aggregate", timeout=lock_timeout))
        _carry_active_alert_records(rootp, [p for p in expired if p.area == store.ALERTS], now)
        trash = rootp / store.STATE / TRASH
        try:
            store.ensure_dir(trash)
        except OSError as exc:
            raise store.write_error(rootp, exc) from exc
        for part in expired:
            target = trash / f"{part.area.replace('/', '_')}-{part.date}-{secrets.token_hex(3)}"
            try:
                os.replace(part.path, target)
            except OSError as exc:
                raise store.write_error(rootp, exc) from exc
            shutil.rmtree(target, ignore_errors=True)
            log.info("cleanup: dropped %s (%d files, %d bytes)", part.path, part.files, part.bytes)
        if drops_events:
            from .aggregate import reset_receipts

            reset_receipts(rootp)  # receipts of dropped events must not outlive them
    log.info("dropped %d partitions past retention", len(expired))
    return expired


#: Name prefix of the alert-log files :func:`_carry_active_alert_records` writes.
CARRIED_PREFIX: Final = "carried-"


def _carry_active_alert_records(root: Path, parts: Sequence[DroppedPartition], now: dt.datetime) -> int:
    """Before expired alert-log partitions are dropped, copy every record of a
    still-active (unresolved) alert they hold — its raise, escalations, acks and
    notification attempts — unchanged (same ``record_id`` and times) into one new
    file under ``alerts/date=<now>/``; returns how many were copied.

    Dropping them would leave an active alert without a raise: ``check`` would
    "escalate" it from no severity, or forget it and page a new alert. Copying
    rather than keeping the whole partition lets the rest of the day expire on
    time. Crash-safe and idempotent: the copy is written atomically before anything
    is dropped; records already present outside the expired partitions (an earlier
    run that stopped before dropping) are not copied again, and readers
    deduplicate by ``record_id`` anyway. A file that cannot be read is not
    carried (it is unreadable to ``check`` as well).
    """
    if not parts:
        return 0
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .alerts import LOG_COLUMN_NAMES, log_schema

    expired_dirs = {p.path for p in parts}
    keys = ["record_id", "record_type", "alert_id"]
    resolved: set[str] = set()
    kept_ids: set[str] = set()
    candidates: dict[str, dict[str, object]] = {}
    for path in store.list_parquet(root, store.ALERTS):
        expired = path.parent in expired_dirs
        try:
            with pq.ParquetFile(path) as fh:
                names = set(fh.schema_arrow.names)
                table = fh.read(columns=None if expired else [k for k in keys if k in names])
        except Exception as exc:  # unreadable: the readers skip it too
            log.warning("cleanup: cannot read alert-log file %s (%s); not carried forward", path, exc)
            continue
        for rec in table.to_pylist():
            if rec.get("record_type") == "resolved" and rec.get("alert_id") is not None:
                resolved.add(str(rec["alert_id"]))
            if expired:
                if rec.get("alert_id") is not None:
                    candidates.setdefault(str(rec["record_id"]), rec)
            else:
                kept_ids.add(str(rec["record_id"]))
    carry = [
        {name: rec.get(name) for name in LOG_COLUMN_NAMES}
        for rid, rec in sorted(candidates.items(), key=lambda kv: (str(kv[1].get("timestamp")), kv[0]))
        if str(rec["alert_id"]) not in resolved and rid not in kept_ids
    ]
    if not carry:
        return 0
    table = pa.Table.from_pylist(carry, schema=log_schema())
    target = root / store.ALERTS / f"date={now:%Y-%m-%d}" / f"{CARRIED_PREFIX}{store.unique_name()}.parquet"
    try:
        store.write_table(target, table)
    except OSError as exc:
        raise store.write_error(root, exc) from exc
    log.info(
        "cleanup: carried %d records of %d still-active alerts forward into %s",
        len(carry),
        len({r["alert_id"] for r in carry}),
        target,
    )
    return len(carry)


# ---------------------------------------------------------------------- reset

#: Prefix of the directory :func:`reset_layout` moves the layout into (hidden: no
#: glob of the layout matches it).
TRASH_PREFIX: Final = ".voicepipe-trash-"


def reset_layout(root: str | os.PathLike[str], names: Sequence[str]) -> list[str]:
    """Remove the layout directories ``names`` (``events``, ``snapshots``, ...) under
    ``root``, all or nothing: each is first renamed into one trash directory inside
    the root — a rename fails on a read-only or foreign file system before anything
    is lost, and the renames already done are then rolled back — and only then is
    the trash deleted. Returns the names removed; the root itself and other files in
    it are never touched.

    Raises :class:`StoreError` (nothing changed) when a rename fails. A trash that
    cannot be deleted completely (a read-only directory deep inside) is left in
    place with a warning: the layout is empty either way.
    """
    rootp = store.local_root(root)
    present = [n for n in names if (rootp / n).exists() or (rootp / n).is_symlink()]
    if not rootp.is_dir() or not present:
        return []
    trash = rootp / f"{TRASH_PREFIX}{secrets.token_hex(4)}"
    moved: list[str] = []
    try:
        trash.mkdir()
        for name in present:
            os.rename(rootp / name, trash / name.replace("/", "_"))
            moved.append(name)
    except OSError as exc:
        for name in reversed(moved):
            try:
                os.rename(trash / name.replace("/", "_"), rootp / name)
            except OSError:  # pragma: no cover - the rename just worked the other way
                log.error("could not move %s back from %s", name, trash)
        try:
            trash.rmdir()
        except OSError:
            pass
        raise store.write_error(rootp, exc) from exc
    log.info("reset: moved %s under %s into %s", ", ".join(moved), rootp, trash.name)
    leftovers = [trash, *sorted(p for p in rootp.glob(f"{TRASH_PREFIX}*") if p != trash)]
    for path in leftovers:  # this run's trash, and any an earlier interrupted reset left
        problems = _rmtree(path)
        if problems:
            log.warning(
                "could not delete everything in %s (%s); the layout is empty, delete it by hand",
                path,
                problems[0],
            )
    return moved


def _rmtree(path: Path) -> list[str]:
    """Delete a tree as far as possible; the errors met ("path: reason")."""
    problems: list[str] = []

    def note(_func: object, failed: str, exc: BaseException) -> None:
        problems.append(f"{failed}: {getattr(exc, 'strerror', None) or exc}")

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=note)
    else:  # Python 3.10, 3.11
        shutil.rmtree(path, onerror=lambda f, p, info: note(f, p, info[1]))
    return problems
