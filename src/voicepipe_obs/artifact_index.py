"""The artifact index: each artifact's state (the ``artifacts`` view of DESIGN §4
and §8) without reading every event file.

An artifact's row in ``artifacts`` is a fold over its events — first or last
non-NULL values by time, minima, maxima, sums and counts — and every one of those
combines: the row over all events equals the combination of rows over any split of
them. So the index keeps, per hour partition of ``events/``, one *partial* row per
artifact with events in it (plus the time behind each first/last value, which is
what combining needs), and a reader combines the partial rows of every hour:
~1.4 million rows for a month of 10 million events instead of the events
themselves. Most artifacts live within one hour, so most partial rows are already
final; only artifacts with rows in several hours are combined.

Layout, under ``<root>/_state/artifacts/`` (derived state: deleting it costs one
rebuild, never data):

* ``part-YYYYMMDD-<unique>.parquet``: partial rows of some hours of one day, column
  ``hour`` (the partition's start, epoch µs) first. A refresh writes the hours it
  recomputed to a new file (an incremental run rewrites one hour, not its day);
  a day spread over more than :data:`MAX_DAY_FILES` files is merged into one;
* ``index.json``: per hour, the event files (names in the partition) its rows were
  computed from and the file holding them. Written atomically after the files; a
  file no hour points to any more is deleted :data:`RETIRE_SECONDS` later (a
  reader may still be reading it).

An hour's rows are used only while its partition holds exactly the files they were
computed from and their file is sound; every other hour (new files, or an index that
never saw it) is computed from its events by the reader (:func:`partials`), so the
index is never wrong, only sometimes slower. ``voicepipe aggregate`` brings it up to
date (:func:`refresh`) on every run, under its run lock: hours whose files changed
are recomputed, an hour that compaction rewrote into one file made of the indexed
files is carried over as is, and hours removed by cleanup are dropped.

Retry generations: an event of a retry carries its ``retry_attempt`` (the
pipeline's own run none: generation 0). Every "last" value, and the times the status
compares, are ordered by (generation, timestamp) — a *key* — not by time alone:
the outcome of a stale run (a queued retry taken for lost and re-queued with
``--force``, or the original run of a stuck artifact retried with ``--force``,
turning up late) is its own events, in the audit trail, but never the artifact's
state once a newer attempt exists; and attempts written by hosts whose clocks
disagree still order by attempt. Keys are maxima, so they combine as times do.

Duplicates: an event's copies share its timestamp, hence its hour partition, and an
hour's partial rows are computed from its events deduplicated by event_id, so sums
and counts combined across hours are exact.

Imports duckdb: the reader side only (never imported by the pipeline's recorder).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import duckdb

from . import store
from .events import DISAMBIGUATION_EVENT, STAGE_COMPLETION_EVENTS, STAGE_EVENT_TYPES, STAGE_FAILURE_EVENTS
from .sql import sql_list, sql_str

log = logging.getLogger("voicepipe_obs.artifact_index")

INDEX_DIR: Final = "artifacts"
MANIFEST: Final = "index.json"
VERSION: Final = 5
#: an index file no hour points to any more is deleted this long after it was replaced
RETIRE_SECONDS: Final = 600
#: hours computed by one query while refreshing (bounds memory)
REFRESH_HOURS: Final = 48
#: a day's rows spread over more index files than this are merged into one (each
#: refresh writes the hours it recomputed to a new file, not the whole day again)
MAX_DAY_FILES: Final = 6


def _in(types: Iterable[str]) -> str:
    return sql_list(sorted(types))


_STAGE_EVENTS: Final = _in(STAGE_EVENT_TYPES)
_STAGE_FAILURES: Final = _in(STAGE_FAILURE_EVENTS.values())
_ER_DONE: Final = _in(STAGE_COMPLETION_EVENTS["entity_resolution"])

#: An event's key: its retry generation (``retry_attempt``, 0 for the pipeline's own
#: run; attempts past :data:`MAX_GENERATION` count as that), then its time, packed
#: into one BIGINT (generation above bit 52, epoch µs below: times from 1970 to
#: 2112) so that keys compare as (generation, time) pairs. Measured: a STRUCT key
#: made the fold ~40% slower than by time alone, the packed one ~3%. A time outside
#: that range (a broken clock: the recorder takes years 1 to 9999) counts as its
#: nearest end, so it can neither borrow from the generation nor overflow.
KEY_SHIFT: Final = 52
MAX_GENERATION: Final = 2000
KEY: Final = (
    f"((least(greatest(coalesce(retry_attempt, 0), 0), {MAX_GENERATION})::BIGINT << {KEY_SHIFT}) "
    f"+ least(greatest(epoch_us(timestamp), 0), {(1 << KEY_SHIFT) - 1}))"
)
KEY_TYPE: Final = "BIGINT"


def key_generation(key: str) -> str:
    """SQL: the generation of the key ``key`` (an SQL expression)."""
    return f"({key} >> {KEY_SHIFT})"


def key_time(key: str) -> str:
    """SQL: the time (TIMESTAMPTZ) of the key ``key``."""
    return f"('epoch'::TIMESTAMPTZ + to_microseconds({key} & {(1 << KEY_SHIFT) - 1}))"


@dataclass(frozen=True)
class _Col:
    """One column of an artifact's row: ``how`` it folds its events' ``value`` (an SQL
    expression; None for counts) over the events where ``where`` holds (None: all).

    first: the value of the earliest event with a non-NULL value; last: that of the
    event with the greatest :data:`KEY` (latest generation, then latest time);
    min, max, sum, count: as in SQL (a count of events; partial counts add up)."""

    name: str
    how: str
    value: str | None = None
    where: str | None = None
    kind: str = ""  # SQL type of the column
    #: event columns ``where`` reads (event_type is always read)
    where_reads: tuple[str, ...] = ()

    @property
    def reads(self) -> set[str]:
        """The event columns the fold of this column reads."""
        cols = {"retry_attempt", "timestamp"} if self.value == KEY else {self.value} if self.value else set()
        return cols | set(self.where_reads) | ({"retry_attempt"} if self.how == "last" else set())


_COLUMNS: Final = (
    _Col("organization_id", "first", "organization_id", kind="VARCHAR"),
    _Col("coach_user_id", "first", "coach_user_id", kind="VARCHAR"),
    _Col("voice_note_id", "first", "voice_note_id", kind="VARCHAR"),
    _Col("source_channel", "first", "source_channel", kind="VARCHAR"),
    _Col("received_at", "min", "timestamp", "event_type = 'artifact_received'", kind="TIMESTAMPTZ"),
    _Col("first_event_at", "min", "timestamp", kind="TIMESTAMPTZ"),
    _Col("last_event_at", "max", "timestamp", kind="TIMESTAMPTZ"),
    # the keys of the latest outcome, retry and retry end (completed_at and failed_at
    # are their times)
    _Col("completed_key", "max", KEY, "event_type = 'artifact_completed'", kind=KEY_TYPE),
    _Col("failed_key", "max", KEY, "event_type = 'artifact_failed'", kind=KEY_TYPE),
    _Col("retry_key", "max", KEY, "event_type = 'retry_initiated'", kind=KEY_TYPE),
    _Col("retry_end_key", "max", KEY, "event_type IN ('retry_succeeded', 'retry_failed')", kind=KEY_TYPE),
    _Col(
        "last_step",
        "last",
        "event_type",
        f"event_type IN {_STAGE_EVENTS} OR event_type = 'artifact_status_changed'",
        kind="VARCHAR",
    ),
    _Col("last_new_status", "last", "new_status", "event_type = 'artifact_status_changed'", kind="VARCHAR"),
    _Col("current_stage", "last", "pipeline_stage", f"event_type IN {_STAGE_EVENTS}", kind="VARCHAR"),
    # the time of the event current_stage comes from (the same events, the same key),
    # not the latest stage event's: a stale run's late stage event must not pair its
    # time with the newer attempt's stage (the time in stage a report shows)
    _Col(
        "current_stage_at",
        "last",
        "timestamp",
        f"event_type IN {_STAGE_EVENTS} AND pipeline_stage IS NOT NULL",
        kind="TIMESTAMPTZ",
        where_reads=("pipeline_stage",),
    ),
    _Col("failed_stage", "last", "pipeline_stage", f"event_type IN {_STAGE_FAILURES}", kind="VARCHAR"),
    _Col("error_code", "last", "error_code", kind="VARCHAR"),
    _Col("error_message", "last", "error_message", kind="VARCHAR"),
    _Col("claim_count", "last", "claim_count", "event_type = 'claims_extracted'", kind="INTEGER"),
    _Col("entity_count", "last", "entity_count", f"event_type IN {_ER_DONE}", kind="INTEGER"),
    _Col("resolution_runs", "count", None, f"event_type IN {_ER_DONE}", "BIGINT"),
    _Col("flagged", "sum", "disambiguation_count", f"event_type = '{DISAMBIGUATION_EVENT}'", "BIGINT"),
    _Col("resolved", "sum", "disambiguation_count", "event_type = 'entity_user_resolved'", "BIGINT"),
    _Col("draft_count", "last", "draft_count", "event_type = 'drafts_generated'", kind="INTEGER"),
    _Col("total_ai_cost", "sum", "ai_cost", None, "DOUBLE"),
    _Col("retry_count", "count", None, "event_type = 'retry_initiated'", "BIGINT"),
    _Col("last_retry_attempt", "max", "retry_attempt", kind="INTEGER"),
    _Col("event_count", "count", None, None, "BIGINT"),
)

FOLD_COLUMNS: Final = tuple(c.name for c in _COLUMNS)
#: what the ``status`` of :func:`artifacts_sql` and ``received_at`` read (queue depth
#: and stuck artifacts need no more)
STATUS_FOLD: Final = (
    "received_at",
    "first_event_at",
    "completed_key",
    "failed_key",
    "retry_key",
    "retry_end_key",
    "last_step",
    "last_new_status",
)


def _cols(names: Sequence[str] | None) -> list[_Col]:
    if names is None:
        return list(_COLUMNS)
    unknown = set(names) - set(FOLD_COLUMNS)
    if unknown:
        raise ValueError(f"not a column of the artifact fold: {', '.join(sorted(unknown))}")
    return [c for c in _COLUMNS if c.name in names]


def event_columns(names: Sequence[str] | None = None) -> list[str]:
    """The event columns the fold's columns ``names`` (all: None) read."""
    read = {"event_id", "event_type", "timestamp", "artifact_id"}
    return sorted(read.union(*(c.reads for c in _cols(names))))


def partial_columns(names: Sequence[str] | None = None) -> list[str]:
    """A partial row's columns after ``hour`` and ``artifact_id``: the fold's columns,
    each first/last one followed by its time, or key for a last one (``<name>__t``)."""
    return [
        n
        for c in _cols(names)
        for n in ((c.name, f"{c.name}__t") if c.how in ("first", "last") else (c.name,))
    ]


def _filter(*conds: str | None) -> str:
    parts = [f"({c})" for c in conds if c]
    return f" FILTER (WHERE {' AND '.join(parts)})" if parts else ""


def _partial_exprs(*, times: bool, names: Sequence[str] | None = None) -> list[str]:
    """The partial aggregates over events (``times``: with each first/last value's
    time, which combining partial rows needs)."""
    out = []
    for c in _cols(names):
        if c.how in ("first", "last"):
            fn, tfn, by = ("arg_min", "min", "timestamp") if c.how == "first" else ("arg_max", "max", KEY)
            f = _filter(c.where, f"{c.value} IS NOT NULL")
            out.append(f"{fn}({c.value}, {by}){f} AS {c.name}")
            if times:
                out.append(f"{tfn}({by}){f} AS {c.name}__t")
        elif c.how == "count":
            out.append(f"count(*){_filter(c.where)} AS {c.name}")
        elif c.how == "sum":
            out.append(f"CAST(sum({c.value}){_filter(c.where)} AS {c.kind}) AS {c.name}")
        else:
            out.append(f"{c.how}({c.value}){_filter(c.where)} AS {c.name}")
    return out


def partial_sql(events: str, *, hour: str | None = None, names: Sequence[str] | None = None) -> str:
    """Partial rows over ``events`` (a FROM-source of deduplicated events): one per
    artifact, or with ``hour`` (an SQL expression) one per (hour, artifact), with
    the times (keys, for "last" columns) combining needs (see :func:`partial_columns`), of the fold's columns
    ``names`` (None: all)."""
    key = f"{hour} AS hour, artifact_id" if hour is not None else "artifact_id"
    return (
        f"SELECT {key}, {', '.join(_partial_exprs(times=True, names=names))} FROM {events} "
        "WHERE artifact_id IS NOT NULL GROUP BY ALL"
    )


def _combine_exprs(names: Sequence[str] | None) -> list[str]:
    out = []
    for c in _cols(names):
        if c.how == "first":
            out.append(f"arg_min({c.name}, {c.name}__t) AS {c.name}")
        elif c.how == "last":
            out.append(f"arg_max({c.name}, {c.name}__t) AS {c.name}")
        elif c.how in ("sum", "count"):
            out.append(f"CAST(sum({c.name}) AS {c.kind}) AS {c.name}")
        else:
            out.append(f"{c.how}({c.name}) AS {c.name}")
    return out


def combine(
    con: duckdb.DuckDBPyConnection, partials: str, into: str, names: Sequence[str] | None = None
) -> None:
    """Temp table ``into``: one row per artifact (the fold's columns) from the partial
    rows in the table ``partials``. An artifact with a single partial row takes it as
    it is; only the others are combined (measured: combining every row costs ~10×
    the grouping that finds the few artifacts with several)."""
    cols = ", ".join(c.name for c in _cols(names))
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _vp_ix_multi AS SELECT artifact_id FROM {partials} "
        "GROUP BY artifact_id HAVING count(*) > 1"
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {into} AS
        SELECT artifact_id, {cols} FROM {partials} ANTI JOIN _vp_ix_multi USING (artifact_id)
        UNION ALL
        SELECT artifact_id, {", ".join(_combine_exprs(names))} FROM {partials} SEMI JOIN _vp_ix_multi USING (artifact_id)
        GROUP BY artifact_id"""
    )
    con.execute("DROP TABLE _vp_ix_multi")


def per_artifact_sql(events: str) -> str:
    """One row per artifact (the fold's columns) straight from ``events``."""
    return (
        f"SELECT artifact_id, {', '.join(_partial_exprs(times=False))} FROM {events} "
        "WHERE artifact_id IS NOT NULL GROUP BY artifact_id"
    )


def _ended(retry: str, end: str) -> str:
    """SQL: the retry whose key is ``retry`` has ended, given ``end``, the greatest key
    of an outcome or retry end (NULL: none). An outcome of a later generation ends
    it, one of an earlier generation never does (a stale run turning up late); one
    of its own generation does whatever its time — the retry_initiated (the CLI's
    clock) and the worker's outcome (another host's) may disagree by minutes. Keys
    of generation 0 (events emitted without an attempt) compare by time."""
    g_end, g_retry = key_generation(end), key_generation(retry)
    return f"coalesce({g_end} > {g_retry} OR ({g_end} = {g_retry} AND ({g_retry} > 0 OR {end} >= {retry})), false)"


def artifacts_sql(per: str) -> str:
    """The ``artifacts`` rows (DESIGN §4's derived status) from ``per``, a query or
    table of one fold row per artifact (:func:`per_artifact_sql`,
    :func:`combine`). Outcomes count by generation first (see the module's
    docstring): the latest attempt's outcome is the artifact's."""
    return f"""
WITH per AS (SELECT *, greatest(completed_key, failed_key, retry_end_key) AS _end_key FROM ({per})),
derived AS (
SELECT
  artifact_id,
  organization_id,
  coach_user_id,
  voice_note_id,
  source_channel,
  CASE
    -- a retry runs from retry_initiated until an outcome or the retry's own end
    -- (retry_succeeded / retry_failed) of its attempt or a later one; after that the
    -- artifact's outcomes decide, the latest attempt's first
    WHEN retry_key IS NOT NULL AND NOT {_ended("retry_key", "_end_key")} THEN 'retrying'
    WHEN completed_key IS NOT NULL AND (failed_key IS NULL OR completed_key >= failed_key) THEN 'completed'
    WHEN failed_key IS NOT NULL THEN 'failed'
    WHEN last_step IS NULL AND received_at IS NOT NULL THEN 'received'
    -- only events that do not move the status are known (reviews, costs; or a time
    -- window / retention that cut off the rest): the status is unknown, not in flight
    WHEN last_step IS NULL THEN NULL
    WHEN last_step = 'artifact_status_changed' THEN coalesce(last_new_status, 'processing')
    WHEN last_step = 'transcription_started' THEN 'transcribing'
    WHEN last_step = 'transcription_completed' THEN 'transcribed'
    WHEN last_step IN {_STAGE_FAILURES} THEN 'failed'
    ELSE 'processing'
  END AS status,
  current_stage,
  current_stage_at,
  failed_stage,
  error_code,
  error_message,
  coalesce(received_at, first_event_at) AS received_at,
  last_event_at,
  {key_time("completed_key")} AS completed_at,
  {key_time("failed_key")} AS failed_at,
  CASE WHEN completed_key IS NOT NULL AND received_at IS NOT NULL
       THEN ((completed_key & {(1 << KEY_SHIFT) - 1}) - epoch_us(received_at)) / 1000.0 END
    AS end_to_end_latency_ms,
  claim_count,
  entity_count,
  -- entities still awaiting review: flagged − resolved by reviewers, at least 0 (the
  -- artifact's share of DESIGN §6's disambiguation backlog); NULL before entity resolution
  CASE WHEN resolution_runs > 0 THEN greatest(0, coalesce(flagged, 0) - coalesce(resolved, 0)) END
    AS disambiguation_count,
  draft_count,
  total_ai_cost,
  retry_count,
  last_retry_attempt,
  event_count
FROM per
)
-- the failure fields describe the current failure: a completed retry clears them
SELECT * REPLACE (
  CASE WHEN status IN ('failed', 'retrying') THEN failed_stage END AS failed_stage,
  CASE WHEN status IN ('failed', 'retrying') THEN error_code END AS error_code,
  CASE WHEN status IN ('failed', 'retrying') THEN error_message END AS error_message
)
FROM derived
"""


# ------------------------------------------------------------------ the files


@dataclass
class Manifest:
    """``index.json``: per indexed hour, the event files (names in the partition) its
    rows were computed from and the index file holding them (None: the hour has no
    artifact events); replaced index files awaiting deletion, with when."""

    hours: dict[int, list[str]]
    homes: dict[int, str | None]
    retired: dict[str, float]

    @classmethod
    def empty(cls) -> Manifest:
        return cls({}, {}, {})

    @classmethod
    def load(cls, root: Path) -> Manifest:
        path = index_dir(root) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls.empty()
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (%s): the artifact index is rebuilt", path, exc)
            return cls.empty()
        try:
            if data.get("version") != VERSION:
                return cls.empty()
            hours = {int(h): [str(n) for n in entry["files"]] for h, entry in data["hours"].items()}
            homes = {int(h): (None if e["in"] is None else str(e["in"])) for h, e in data["hours"].items()}
            retired = {str(n): float(t) for n, t in data.get("retired", {}).items()}
            return cls(hours, homes, retired)
        except (AttributeError, KeyError, TypeError, ValueError):
            log.warning("ignoring malformed %s: the artifact index is rebuilt", path)
            return cls.empty()

    def save(self, root: Path) -> None:
        data = {
            "version": VERSION,
            "hours": {str(h): {"files": self.hours[h], "in": self.homes[h]} for h in sorted(self.hours)},
            "retired": self.retired,
        }
        path = index_dir(root) / MANIFEST
        store.ensure_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}{store.TMP_SUFFIX}")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def live_files(self) -> set[str]:
        return {name for name in self.homes.values() if name is not None}


def index_dir(root: Path) -> Path:
    return root / store.STATE / INDEX_DIR


def _hour_of(directory: Path) -> int | None:
    """The start (epoch µs) of an ``…/date=YYYY-MM-DD/hour=HH`` partition, or None."""
    date, hour = directory.parent.name, directory.name
    if not (date.startswith("date=") and hour.startswith("hour=")):
        return None
    try:
        start = store.Partition(date[5:], int(hour[5:]), directory).start
    except ValueError:
        return None
    return None if start is None else store.to_us(start)


def by_hour(files: Iterable[Path]) -> dict[int, list[Path]]:
    """Event files grouped by their hour partition (files outside one are left out)."""
    dirs: dict[Path, list[Path]] = {}
    for path in files:
        dirs.setdefault(path.parent, []).append(path)
    out: dict[int, list[Path]] = {}
    for directory, paths in dirs.items():
        hour = _hour_of(directory)
        if hour is not None:
            out.setdefault(hour, []).extend(paths)
    return out


def _day(hour_us: int) -> int:
    return hour_us - hour_us % store.US_PER_DAY


def _files_sql(files: Sequence[Path | str]) -> str:
    return f"read_parquet([{', '.join(sql_str(str(f)) for f in files)}], hive_partitioning = false)"


def _events_sql(files: Sequence[Path], names: Sequence[str] | None = None, *, dedup: bool = True) -> str:
    """The events of ``files`` (``dedup``: deduplicated by event_id) with the columns
    the fold's columns ``names`` read, and ``_hour``: the start of the file's hour
    partition (epoch µs; from the path, a constant per file)."""
    listed = ", ".join(sql_str(str(f)) for f in files)
    return (
        f"(SELECT {'DISTINCT ON (event_id) ' if dedup else ''}{', '.join(event_columns(names))}, "
        f"epoch_us(CAST(date AS DATE)::TIMESTAMP) + hour * {store.US_PER_HOUR} AS _hour "
        f"FROM read_parquet([{listed}], hive_partitioning = true, "
        "hive_types = {'date': VARCHAR, 'hour': BIGINT}))"
    )


def _load_events(con: duckdb.DuckDBPyConnection, hours: dict[int, list[Path]]) -> None:
    """Temp table _vp_ix_ev: the deduplicated events of these hours' files (as
    :func:`_events_sql`). An hour that is one compacted file holds no duplicates
    (compaction drops them); the others are checked after loading
    (:func:`~voicepipe_obs.query.drop_duplicates`: measured ~3× cheaper than
    DISTINCT ON while loading)."""
    from .maintenance import compacted_alone
    from .query import drop_duplicates

    paths = [p for ps in hours.values() for p in ps]
    con.execute(f"CREATE OR REPLACE TEMP TABLE _vp_ix_ev AS SELECT * FROM {_events_sql(paths, dedup=False)}")
    mixed = [h for h, ps in hours.items() if not compacted_alone(ps)]
    if mixed:
        drop_duplicates(con, "_vp_ix_ev", f"_hour IN ({', '.join(map(str, mixed))})")


# ------------------------------------------------------------------ reading


@dataclass
class _Coverage:
    """Which hours of a file listing the index answers: its files with their hours,
    and the event files of the other hours (read from the events)."""

    index: dict[Path, list[int]]
    events: list[Path]
    computed: int  # hours read from their events


def _coverage(root: Path, files: Sequence[Path]) -> _Coverage:
    manifest = Manifest.load(root)
    hours = by_hour(files)
    base = index_dir(root)
    present = _sound(base, manifest.live_files())
    index: dict[Path, list[int]] = {}
    done: set[int] = set()
    for hour, paths in hours.items():
        home = manifest.homes.get(hour)
        if (home is None or home in present) and manifest.hours.get(hour) == sorted(p.name for p in paths):
            done.add(hour)
            if home is not None:  # None: indexed, no artifact events
                index.setdefault(base / home, []).append(hour)
    events = [p for hour, paths in sorted(hours.items()) if hour not in done for p in paths]
    return _Coverage({f: sorted(hs) for f, hs in sorted(index.items())}, events, len(hours) - len(done))


def _index_sql(con: duckdb.DuckDBPyConnection, cov: _Coverage, cols: str, where: str = "true") -> str | None:
    """The index rows of the covered hours (``cols``, rows where ``where``), or None.
    One scan of the index files, kept to each file's covered hours by a semi join
    on (filename, hour) (temp table ``_vp_ix_cov``, made here): measured ~2.5×
    cheaper than a filtered scan per file."""
    if not cov.index:
        return None
    names = [str(path) for path, hs in cov.index.items() for _ in hs]
    hours = [h for hs in cov.index.values() for h in hs]
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _vp_ix_cov AS SELECT unnest([{', '.join(map(sql_str, names))}]) AS filename, "
        f"unnest([{', '.join(map(str, hours))}]::BIGINT[]) AS hour"
    )
    listed = ", ".join(sql_str(str(p)) for p in cov.index)
    return (
        f"SELECT {cols} FROM read_parquet([{listed}], hive_partitioning = false, filename = true) "
        f"SEMI JOIN _vp_ix_cov USING (filename, hour) WHERE {where}"
    )


def _read_or_events(
    con: duckdb.DuckDBPyConnection, cov: _Coverage, read: Callable[[_Coverage], None], every: Sequence[Path]
) -> int:
    """``read(cov)``; when an index file cannot be read after all (sound-looking but
    not index rows), ``read`` again with every hour from the events. Returns how
    many hours were computed from events. A file that vanished since it was listed
    (an event file compaction replaced, an index file a refresh retired) is no
    damage: that error is the caller's to list again for
    (:func:`~voicepipe_obs.query.retry_vanished`)."""
    from .query import vanished_file

    try:
        read(cov)
    except duckdb.Error as exc:
        if not cov.index or vanished_file(exc) is not None:
            raise
        log.warning("artifact index unreadable (%s): reading the events instead", str(exc).splitlines()[0])
        cov = _Coverage({}, list(every), len(by_hour(every)))
        read(cov)
    return cov.computed


def partials(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    files: Sequence[Path],
    into: str,
    names: Sequence[str] | None = None,
) -> int:
    """Temp table ``into``: partial rows (``hour``, ``artifact_id``, then
    :func:`partial_columns` of the fold's columns ``names``, None: all) covering
    exactly the events of ``files`` (every event file, normally): the index's rows
    for each hour whose partition holds exactly the files they came from, and rows
    computed now from the events of the other hours. Returns how many hours were
    computed now."""
    cols = ", ".join(("hour", "artifact_id", *partial_columns(names)))

    def read(cov: _Coverage) -> None:
        parts = [sql for sql in (_index_sql(con, cov, cols),) if sql is not None]
        if cov.events:
            parts.append(partial_sql(_events_sql(cov.events, names), hour="_hour", names=names))
        if not parts:
            parts.append(f"SELECT {cols} FROM ({_empty_partials_sql(names)})")
        con.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS {' UNION ALL '.join(parts)}")

    return _read_or_events(con, _coverage(root, files), read, files)


def _empty_partials_sql(names: Sequence[str] | None = None) -> str:
    """A typed empty relation of partial rows."""
    from .events import arrow_schema
    from .query import duck_type

    schema = arrow_schema()
    cols = ", ".join(f"NULL::{duck_type(schema.field(c).type)} AS {c}" for c in event_columns(names))
    events = f"(SELECT {cols}, NULL::BIGINT AS _hour LIMIT 0)"
    return partial_sql(events, hour="_hour", names=names)


def artifacts_table(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    files: Sequence[Path],
    into: str,
    fold: Sequence[str] | None = None,
) -> int:
    """Temp table ``into``: the ``artifacts`` rows (:func:`artifacts_sql`) over
    exactly the events of ``files``, from the index where it is current (see
    :func:`partials`). With ``fold`` only those of the fold's columns are read (the
    others are NULL, and so is what derives from them; :data:`STATUS_FOLD` gives a
    right ``status`` and ``received_at``). Returns how many hours were computed
    from their events."""
    computed = partials(con, root, files, "_vp_ix_partials", fold)
    combine(con, "_vp_ix_partials", "_vp_ix_per", fold)
    con.execute("DROP TABLE _vp_ix_partials")
    chosen = set(FOLD_COLUMNS if fold is None else fold)
    per = ", ".join(c.name if c.name in chosen else f"NULL::{c.kind} AS {c.name}" for c in _COLUMNS)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {into} AS {artifacts_sql(f'SELECT artifact_id, {per} FROM _vp_ix_per')}"
    )
    con.execute("DROP TABLE _vp_ix_per")
    return computed


#: the outcome events, whose greatest key decides completed or failed (artifacts_sql)
_OUTCOMES: Final = "('artifact_completed', 'artifact_failed')"


def deciding_outcome_keys(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    files: Sequence[Path],
    into: str,
    among: str,
    *,
    until: dt.datetime,
) -> int:
    """Temp table ``into`` (artifact_id, ``key``): for each artifact of ``among`` (a
    table with an artifact_id column) with an outcome, the greatest :data:`KEY` of
    its ``artifact_completed`` / ``artifact_failed`` events among ``files`` at or
    before ``until`` — the key of the outcome that decides whether it is
    completed or failed (:func:`artifacts_sql`), as of ``until``. An outcome with a
    smaller key (an older attempt's, however late it came) decides nothing.

    The hours that end by ``until`` come from the index where it is current (two
    key columns of its rows, no event read), the others from their events; the
    hour ``until`` falls in is read from its events up to ``until``, later hours
    not at all. Returns how many hours were read from their events."""
    none = f"SELECT NULL::VARCHAR AS artifact_id, NULL::{KEY_TYPE} AS key LIMIT 0"
    found = con.execute(f"SELECT count(artifact_id) > 0 FROM {among}").fetchone()
    if not (found and found[0]):  # nothing to look up (a quiet window): no index read
        con.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS {none}")
        return 0
    until_us = store.to_us(until)
    whole: dict[int, list[Path]] = {}
    current: list[Path] = []
    for hour, paths in by_hour(files).items():
        if hour + store.US_PER_HOUR - 1 <= until_us:
            whole[hour] = paths
        elif hour <= until_us:
            current += paths
    wanted = f"artifact_id IN (SELECT artifact_id FROM {among})"
    outcome_key = "greatest(completed_key, failed_key)"
    names = ("completed_key", "failed_key")

    def from_events(paths: Sequence[Path], *, up_to: bool) -> str:
        bound = f" AND epoch_us(timestamp) <= {until_us}" if up_to else ""
        return (
            f"SELECT artifact_id, {KEY} AS key FROM {_events_sql(paths, names, dedup=False)} "
            f"WHERE event_type IN {_OUTCOMES} AND {wanted}{bound}"
        )

    def read(cov: _Coverage) -> None:
        index = _index_sql(
            con, cov, f"artifact_id, {outcome_key} AS key", f"{wanted} AND {outcome_key} IS NOT NULL"
        )
        parts = [] if index is None else [index]
        if cov.events:
            parts.append(from_events(cov.events, up_to=False))
        if current:
            parts.append(from_events(current, up_to=True))
        union = " UNION ALL ".join(parts) or none
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {into} AS SELECT artifact_id, max(key) AS key FROM ({union}) "
            "GROUP BY artifact_id"
        )

    every = [p for paths in whole.values() for p in paths]
    computed = _read_or_events(con, _coverage(root, every), read, every)
    return computed + (1 if current else 0)


#: a partial row that alone leaves its artifact completed or failed (see
#: :func:`open_artifacts_table`)
_SETTLED: Final = (
    "(completed_key IS NOT NULL OR failed_key IS NOT NULL) AND (retry_key IS NULL OR "
    f"{_ended('retry_key', 'greatest(completed_key, failed_key, retry_end_key)')})"
)


def open_artifacts_table(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    files: Sequence[Path],
    into: str,
    fold: Sequence[str] = STATUS_FOLD,
    *,
    keep_partials: str | None = None,
    include: str | None = None,
) -> int:
    """Temp table ``into``: the ``artifacts`` rows (as :func:`artifacts_table`, with
    the fold's columns ``fold`` plus :data:`STATUS_FOLD`) of the artifacts whose
    status is neither completed nor failed — queue depth, stuck artifacts, the
    dashboard's active artifacts. Returns how many hours were computed from events.
    With ``keep_partials`` the partial rows read are kept as that temp table: the
    candidates' (below) and those of the artifacts of ``include`` (a table with an
    artifact_id column), for a caller that needs more of those artifacts
    (without reading the index twice).

    Only candidates are read in full and combined: an artifact is in flight only if
    it has no outcome or a retry after its latest outcome and retry end, so one of
    its partial rows, taken alone, has no outcome or a retry after its own. The
    artifacts with such a row (a superset: in flight, plus those whose outcome came
    in a later hour; "ended" is monotone in the end key, so a key comparison keeps
    it one) are found from four key columns of the index first; then
    only their rows are
    read with every column asked for (measured on 10 million events: ~0.5 s instead
    of ~2.5 s for reading and filtering every row)."""
    names = sorted(set(fold) | set(STATUS_FOLD))
    cols = ", ".join(("hour", "artifact_id", *partial_columns(names)))
    parts = keep_partials or "_vp_ix_candidates"
    extra = f" UNION SELECT artifact_id FROM {include}" if include is not None else ""

    def read(cov: _Coverage) -> None:
        if cov.events:  # hours the index does not cover: their partial rows, in full
            con.execute(
                "CREATE OR REPLACE TEMP TABLE _vp_ix_live AS "
                f"{partial_sql(_events_sql(cov.events, names), hour='_hour', names=names)}"
            )
        live = "SELECT * FROM _vp_ix_live" if cov.events else None
        open_rows = [
            sql
            for sql in (
                _index_sql(con, cov, "artifact_id", f"NOT ({_SETTLED})"),
                live and f"{live} WHERE NOT ({_SETTLED})",
            )
            if sql is not None
        ]
        ids = (
            " UNION ".join(f"SELECT artifact_id FROM ({sql})" for sql in open_rows)
            or "SELECT NULL AS artifact_id LIMIT 0"
        )
        con.execute(f"CREATE OR REPLACE TEMP TABLE _vp_ix_ids AS {ids}{extra}")
        chosen = "artifact_id IN (SELECT artifact_id FROM _vp_ix_ids)"
        rows = [
            sql
            for sql in (
                _index_sql(con, cov, cols, chosen),
                live and f"SELECT {cols} FROM _vp_ix_live WHERE {chosen}",
            )
            if sql
        ]
        if not rows:
            rows.append(f"SELECT {cols} FROM ({_empty_partials_sql(names)})")
        con.execute(f"CREATE OR REPLACE TEMP TABLE {parts} AS {' UNION ALL '.join(rows)}")
        con.execute("DROP TABLE IF EXISTS _vp_ix_live")
        con.execute("DROP TABLE _vp_ix_ids")

    started = time.perf_counter()
    computed = _read_or_events(con, _coverage(root, files), read, files)
    _hint_stale(root, computed, time.perf_counter() - started)
    candidates = parts
    if include is not None:  # the included artifacts are no candidates of their own
        candidates = "_vp_ix_cand"
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _vp_ix_cand AS SELECT p.* FROM {parts} p SEMI JOIN "
            f"(SELECT artifact_id FROM {parts} WHERE NOT ({_SETTLED})) USING (artifact_id)"
        )
    combine(con, candidates, "_vp_ix_per", names)
    if include is not None:
        con.execute("DROP TABLE _vp_ix_cand")
    if keep_partials is None:
        con.execute(f"DROP TABLE {parts}")
    per = ", ".join(c.name if c.name in names else f"NULL::{c.kind} AS {c.name}" for c in _COLUMNS)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {into} AS SELECT * FROM "
        f"({artifacts_sql(f'SELECT artifact_id, {per} FROM _vp_ix_per')}) "
        "WHERE status NOT IN ('completed', 'failed')"
    )
    con.execute("DROP TABLE _vp_ix_per")
    return computed


#: roots already told that their index is missing or behind (once per process)
_hinted: set[str] = set()


#: a read slower than this that folded hours from their events names the remedy
HINT_SECONDS: Final = 3.0


def _hint_stale(root: Path, computed: int, seconds: float) -> None:
    """Say (a warning, once per root and process) that the index is missing or far
    behind when a read had to fold more than :data:`REFRESH_HOURS` hours from their
    events and it took a while (:data:`HINT_SECONDS`): the report is right but slow
    (~20 s on 10 million events instead of ~1 s), and only a `voicepipe aggregate`
    run (cron's job) brings the index up to date. A store aggregated every few
    minutes is an hour or two behind at most; a small one (the demo's week) is read
    in a second either way, and is not told."""
    if computed <= REFRESH_HOURS or seconds < HINT_SECONDS or str(root) in _hinted:
        return
    _hinted.add(str(root))
    log.warning(
        "the artifact index lacks %d hours of events under %s, so they were read in full "
        "(slow); `voicepipe aggregate` brings it up to date (cron runs it every few minutes)",
        computed,
        root,
    )


# ------------------------------------------------------------------ refreshing


@dataclass
class RefreshResult:
    hours_computed: int = 0
    hours_carried: int = 0  # compacted: the same events under a new file
    hours_dropped: int = 0
    files_written: int = 0
    seconds: float = 0.0


def refresh(
    root: Path,
    files: Sequence[Path] | dict[int, list[Path]],
    *,
    con: duckdb.DuckDBPyConnection | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RefreshResult:
    """Bring the index up to date with ``files`` (every readable event file, or
    those grouped by hour partition start as :func:`by_hour` gives them): compute
    the hours whose files changed since they were indexed (one new index file per
    day for them), carry over those that compaction only rewrote, drop the hours
    that are gone, and merge a day's rows into one file once they are spread over
    more than :data:`MAX_DAY_FILES`. The caller holds the aggregate run lock (one
    writer). ``con`` is used when there is something to compute (else one is made,
    only then: a run that finds nothing to do opens no DuckDB). ``progress`` is
    called with (hours computed, hours to compute) when more than one batch of
    :data:`REFRESH_HOURS` hours is to be computed (the first build after upgrading:
    ~30 s for a month of 10 million events), not for the hour or two of a cron run."""
    started = time.perf_counter()
    result = RefreshResult()
    manifest = Manifest.load(root)
    base = index_dir(root)
    hours = files if isinstance(files, dict) else by_hour(files)
    before = manifest.live_files()
    present = _sound(base, before)
    stale: set[int] = set()
    changed = False
    for hour, paths in hours.items():
        names = sorted(p.name for p in paths)
        old, home = manifest.hours.get(hour), manifest.homes.get(hour)
        intact = old is not None and (home is None or home in present)
        if intact and old == names:
            continue
        if intact and old is not None and _only_compacted(paths, set(old)):
            manifest.hours[hour] = names
            result.hours_carried += 1
            changed = True
        else:
            stale.add(hour)
    for hour in [h for h in manifest.hours if h not in hours]:
        del manifest.hours[hour], manifest.homes[hour]
        result.hours_dropped += 1
        changed = True
    crowded = _crowded(manifest, stale)
    if stale or crowded:
        own = con is None
        if own:
            from .aggregate import _connect

            con = _connect(root)
        assert con is not None
        try:
            _compute(
                con, base, manifest, hours, stale, result, progress if len(stale) > REFRESH_HOURS else None
            )
            for day in sorted(_crowded(manifest, set())):
                _merge_day(con, base, manifest, day, result)
        except duckdb.Error as exc:
            from .query import vanished_file

            if vanished_file(exc) is not None:  # compaction meanwhile: the caller lists again
                raise
            # derived state only: start again rather than fail the run (readers compute
            # unindexed hours from their events meanwhile)
            log.warning("artifact index: cannot update it (%s); the next aggregate run rebuilds it", exc)
            (base / MANIFEST).unlink(missing_ok=True)
            result.seconds = time.perf_counter() - started
            return result
        finally:
            if own:
                con.close()
        changed = True
    _retire(base, manifest, root, before=before, changed=changed)
    result.seconds = time.perf_counter() - started
    if changed:
        log.info(
            "artifact index: %d hours computed, %d carried over (compacted), %d dropped, %d files written",
            result.hours_computed,
            result.hours_carried,
            result.hours_dropped,
            result.files_written,
        )
    return result


def _sound(base: Path, names: Iterable[str]) -> set[str]:
    """The index files among ``names`` that are there and look like Parquet
    (:func:`~voicepipe_obs.store.vet_parquet`): the hours of the others are computed
    from their events (readers) and again (refresh)."""
    good, bad = store.vet_parquet(base / name for name in names)
    for path, reason in bad:
        log.warning("artifact index: %s is damaged (%s); its hours are computed again", path.name, reason)
    return {p.name for p in good}


def _crowded(manifest: Manifest, stale: set[int]) -> set[int]:
    """Days whose indexed hours (after ``stale`` hours get a new file each day) are
    spread over more than :data:`MAX_DAY_FILES` files."""
    files: dict[int, set[str]] = {}
    for hour, home in manifest.homes.items():
        if home is not None and hour not in stale:
            files.setdefault(_day(hour), set()).add(home)
    for hour in stale:
        files.setdefault(_day(hour), set()).add("<new>")
    return {day for day, names in files.items() if len(names) > MAX_DAY_FILES}


def _new_file(day: int) -> str:
    return f"part-{store.from_us(day):%Y%m%d}-{store.unique_name()}.parquet"


def _compute(
    con: duckdb.DuckDBPyConnection,
    base: Path,
    manifest: Manifest,
    hours: dict[int, list[Path]],
    stale: set[int],
    result: RefreshResult,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Compute the ``stale`` hours from their events: one new index file per day
    (none for hours without artifact events), recorded in ``manifest``; ``progress``
    is called with (hours done, len(stale)) once the first batch is done and after each."""
    for group in _hour_groups(sorted(stale)):
        _load_events(con, {h: hours[h] for h in group})
        con.execute(f"CREATE OR REPLACE TEMP TABLE _vp_ix_new AS {partial_sql('_vp_ix_ev', hour='_hour')}")
        con.execute("DROP TABLE _vp_ix_ev")
        for day in sorted({_day(h) for h in group}):
            table = con.sql(
                f"SELECT * FROM _vp_ix_new WHERE hour - hour % {store.US_PER_DAY} = {day}"
            ).to_arrow_table()
            name = None
            if table.num_rows:
                name = _new_file(day)
                store.write_table(base / name, table)
                result.files_written += 1
            with_rows = set(table.column("hour").to_pylist()) if table.num_rows else set()
            for hour in (h for h in group if _day(h) == day):
                manifest.hours[hour] = sorted(p.name for p in hours[hour])
                manifest.homes[hour] = name if hour in with_rows else None
        con.execute("DROP TABLE _vp_ix_new")
        result.hours_computed += len(group)
        if progress is not None:
            progress(result.hours_computed, len(stale))


def _merge_day(
    con: duckdb.DuckDBPyConnection, base: Path, manifest: Manifest, day: int, result: RefreshResult
) -> None:
    """Rewrite a day's rows, spread over several index files, as one."""
    homes: dict[str, list[int]] = {}
    for hour, home in manifest.homes.items():
        if home is not None and _day(hour) == day:
            homes.setdefault(home, []).append(hour)
    parts = [
        f"SELECT * FROM {_files_sql([base / name])} WHERE hour IN ({', '.join(map(str, sorted(hs)))})"
        for name, hs in sorted(homes.items())
    ]
    table = con.sql(" UNION ALL BY NAME ".join(parts)).to_arrow_table()
    name = _new_file(day)
    store.write_table(base / name, table)
    result.files_written += 1
    for hs in homes.values():
        for hour in hs:
            manifest.homes[hour] = name


def _only_compacted(paths: Sequence[Path], indexed: set[str]) -> bool:
    """Whether ``paths`` (an hour's files now) hold exactly the events of the
    ``indexed`` files: each is one of them or a compacted file made of them only,
    and every indexed file that is gone was compacted into one of them."""
    from .aggregate import _compacted_sources
    from .maintenance import COMPACTED_PREFIX

    replaced: set[str] = set()
    for path in paths:
        if path.name in indexed:
            continue
        if not path.name.startswith(COMPACTED_PREFIX):
            return False
        sources = _compacted_sources(path)  # read once per process (snapshot bookkeeping asks too)
        if sources is None or not set(sources) <= indexed:
            return False
        replaced |= set(sources)
    gone = indexed - {p.name for p in paths}
    return gone <= replaced


def _hour_groups(hours: Sequence[int], size: int = REFRESH_HOURS) -> list[list[int]]:
    return [list(hours[i : i + size]) for i in range(0, len(hours), size)]


def _retire(base: Path, manifest: Manifest, root: Path, *, before: set[str], changed: bool) -> None:
    """Record the index files no hour points to any more (``before``: those that
    did), save the manifest when ``changed``, then delete the files retired at least
    :data:`RETIRE_SECONDS` ago (readers have had that long to finish with them) and
    stray ones no manifest names (left by a crash between writing and saving)."""
    now = time.time()
    live = manifest.live_files()
    for name in before - live:
        manifest.retired[name] = now
        changed = True
    expired = [n for n, t in manifest.retired.items() if now - t >= RETIRE_SECONDS]
    for name in expired:
        del manifest.retired[name]
    if changed or expired:
        manifest.save(root)
    for name in expired:
        (base / name).unlink(missing_ok=True)
    named = live | set(manifest.retired)
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        if (
            entry.name.startswith("part-")
            and entry.name.endswith(".parquet")
            and entry.name not in named
            and now - entry.stat().st_mtime >= RETIRE_SECONDS
        ):
            os.unlink(entry.path)
