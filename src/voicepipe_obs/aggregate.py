"""Hourly and daily snapshots (DESIGN §6), and the live metric queries reports and
alerts use — all from one SQL builder (:func:`metrics_sql`), so a snapshot row and a
"last 30 minutes" figure can never disagree on what a metric means.

Owns:

* the snapshot schema (:func:`snapshot_schema`) and the ``snapshots_hourly`` /
  ``snapshots_daily`` views (always present, empty and typed when there are no files);
* :func:`aggregate`: one Parquet file per bucket under ``snapshots/hourly`` and
  ``snapshots/daily``, written atomically, computed by DuckDB from the raw events
  deduplicated by event_id; incremental by *file* (late and backfilled events are
  picked up wherever their timestamps fall);
* the bookkeeping under ``<root>/_state/``: ``aggregate.json`` (the event files already
  aggregated; :func:`pending_hours` lists the hours of those that are not), ``receipts/`` (each artifact's earliest ``artifact_received``, so
  end-to-end latency can look receipts up outside the buckets being computed) and
  ``orphan-completions.parquet`` (completions aggregated before their receipt was
  seen, recomputed when it arrives); and, every run, the artifact index
  (:mod:`voicepipe_obs.artifact_index`, ``artifacts/``);
* window queries returning plain Python data: :func:`window_metrics`,
  :func:`window_latency` (the figures a long range cannot combine from its days),
  :func:`live_metrics`, :func:`stage_breakdown`, :func:`organization_breakdown`,
  :func:`read_snapshots`.

Crash safety: a run writes the receipts chunk, then the buckets, then the bookkeeping.
A crash anywhere leaves the new files unrecorded, so the next run recomputes the same
buckets and converges. Compaction (``maintenance.py``) renames files: a compacted file
whose sources were all aggregated is recognised from its Parquet metadata and is not
recomputed. Deleted files (compaction sources, cleanup) never trigger a recompute.

Never writes event files; every time-dependent function takes ``now``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import duckdb

from . import store
from .errors import StoreError, UsageError
from .events import (
    DISAMBIGUATION_EVENT,
    EVENT_TYPES,
    STAGE_COMPLETION_EVENTS,
    STAGE_FAILURE_EVENTS,
    STAGE_STARTED_EVENTS,
    TIMED_STAGES,
)
from .maintenance import COMPACTED_FROM_KEY, COMPACTED_PREFIX, compacted_alone
from .query import (
    area_source,
    drop_duplicates,
    empty_view,
    reading,
    relist,
    retry_vanished,
    session_defaults,
    vetted,
    vetted_files,
)
from .sql import sql_list, sql_str

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from .config import RetentionSettings

log = logging.getLogger("voicepipe_obs.aggregate")

PeriodType = Literal["hourly", "daily"]
Progress = Callable[[int, int], None]

STATE_FILE: Final = "aggregate.json"
RECEIPTS_DIR: Final = "receipts"
#: completions aggregated without a receipt: (artifact_id, hour) — see :func:`_late_receipt_hours`
ORPHANS_FILE: Final = "orphan-completions.parquet"
LOCK_FILE: Final = "aggregate.lock"
STATE_VERSION: Final = 1
#: merge receipt chunks into one when there are more than this many
MAX_RECEIPT_CHUNKS: Final = 24
#: snapshot files written in parallel
WRITERS: Final = 4
#: days computed by one query (bounds memory: ~330k events a day at 10M a month)
CHUNK_DAYS: Final = 8
#: how far before a live window :func:`window_metrics` looks for receipts not yet indexed
RECEIPT_LOOKBACK: Final = dt.timedelta(hours=6)

_PERIOD_US: Final[dict[str, int]] = {"hourly": store.US_PER_HOUR, "daily": store.US_PER_DAY}
_AREA: Final[dict[str, str]] = {"hourly": store.SNAPSHOTS_HOURLY, "daily": store.SNAPSHOTS_DAILY}
_UTC = dt.timezone.utc

#: The event columns the metrics need (the projection every scan reads).
EVENT_PROJECTION: Final = (
    "event_id",
    "event_type",
    "timestamp",
    "artifact_id",
    "organization_id",
    "duration_ms",
    "confidence_score",
    "claim_count",
    "entity_count",
    "disambiguation_count",
    "draft_count",
    "ai_cost",
    "error_code",
)

# ------------------------------------------------------------------- definitions


def _eq(event_type: str) -> str:
    return f"event_type = {sql_str(event_type)}"


def _in(types: Iterable[str]) -> str:
    return f"event_type IN {sql_list(sorted(types))}"


def _count(cond: str) -> str:
    return f"count(*) FILTER (WHERE {cond})"


def _ratio(num: str, den: str) -> str:
    return f"CAST({num} AS DOUBLE) / NULLIF(CAST({den} AS DOUBLE), 0)"


def _metric_exprs() -> list[tuple[str, str, str]]:
    """(column, kind, SQL aggregate) in snapshot column order: DESIGN §6, verbatim.

    Sums and means use DuckDB's compensated ``fsum``/``favg`` so that a recomputed
    bucket is bit-for-bit the same whatever order the rows were read in."""
    out: list[tuple[str, str, str]] = [
        ("artifacts_received", "i64", _count(_eq("artifact_received"))),
        ("artifacts_completed", "i64", _count(_eq("artifact_completed"))),
        ("artifacts_failed", "i64", _count(_eq("artifact_failed"))),
    ]
    for stage in TIMED_STAGES:
        done = _in(STAGE_COMPLETION_EVENTS[stage])
        out.append((f"avg_{stage}_latency_ms", "f64", f"favg(duration_ms) FILTER (WHERE {done})"))
        out.append(
            (f"p95_{stage}_latency_ms", "f64", f"quantile_cont(duration_ms, 0.95) FILTER (WHERE {done})")
        )
    # e2e_ms is set on artifact_completed rows only (see _with_latency)
    out += [
        ("avg_end_to_end_latency_ms", "f64", "favg(e2e_ms)"),
        ("p50_end_to_end_latency_ms", "f64", "quantile_cont(e2e_ms, [0.5, 0.95, 0.99])[1]"),
        ("p95_end_to_end_latency_ms", "f64", "quantile_cont(e2e_ms, [0.5, 0.95, 0.99])[2]"),
        ("p99_end_to_end_latency_ms", "f64", "quantile_cont(e2e_ms, [0.5, 0.95, 0.99])[3]"),
    ]
    for stage in TIMED_STAGES:
        failed = _count(_eq(STAGE_FAILURE_EVENTS[stage]))
        attempts = _count(_in((*STAGE_COMPLETION_EVENTS[stage], STAGE_FAILURE_EVENTS[stage])))
        out.append((f"{stage}_failure_rate", "f64", _ratio(failed, attempts)))
    er_rows = f"{_in(STAGE_COMPLETION_EVENTS['entity_resolution'])} AND entity_count IS NOT NULL"
    entities = f"sum(entity_count) FILTER (WHERE {er_rows})"
    out += [
        (
            "overall_failure_rate",
            "f64",
            _ratio(_count(_eq("artifact_failed")), _count(_in(("artifact_completed", "artifact_failed")))),
        ),
        (
            "avg_transcript_confidence",
            "f64",
            f"favg(confidence_score) FILTER (WHERE {_eq('transcription_completed')})",
        ),
        ("avg_claim_confidence", "f64", f"favg(confidence_score) FILTER (WHERE {_eq('claims_extracted')})"),
        (
            "auto_resolution_rate",
            "f64",
            _ratio(
                f"sum(entity_count - coalesce(disambiguation_count, 0)) FILTER (WHERE {er_rows})", entities
            ),
        ),
        (
            "disambiguation_rate",
            "f64",
            _ratio(f"sum(coalesce(disambiguation_count, 0)) FILTER (WHERE {er_rows})", entities),
        ),
        (
            "total_claims_extracted",
            "i64",
            f"coalesce(sum(claim_count) FILTER (WHERE {_eq('claims_extracted')}), 0)",
        ),
        ("total_entities_resolved", "i64", f"coalesce({entities}, 0)"),
        (
            "total_drafts_generated",
            "i64",
            f"coalesce(sum(draft_count) FILTER (WHERE {_eq('drafts_generated')}), 0)",
        ),
        ("total_ai_cost", "f64", "coalesce(fsum(ai_cost), 0.0)"),
        (
            "avg_cost_per_artifact",
            "f64",
            _ratio("fsum(ai_cost)", "count(DISTINCT artifact_id) FILTER (WHERE ai_cost IS NOT NULL)"),
        ),
        ("retries_initiated", "i64", _count(_eq("retry_initiated"))),
        ("retries_succeeded", "i64", _count(_eq("retry_succeeded"))),
        ("retries_failed", "i64", _count(_eq("retry_failed"))),
        # not DESIGN §6 columns but its disambiguation backlog's two terms, so the
        # backlog over a month reads daily snapshots instead of every raw event
        (
            "disambiguations_flagged",
            "i64",
            f"coalesce(sum(disambiguation_count) FILTER (WHERE {_eq(DISAMBIGUATION_EVENT)}), 0)",
        ),
        (
            "disambiguations_resolved",
            "i64",
            f"coalesce(sum(disambiguation_count) FILTER (WHERE {_eq('entity_user_resolved')}), 0)",
        ),
    ]
    return out


METRICS: Final = tuple((name, kind) for name, kind, _ in _metric_exprs())
METRIC_NAMES: Final = tuple(name for name, _ in METRICS)
SNAPSHOT_KEYS: Final = ("period_type", "period_start", "period_end", "organization_id", "created_at")
SNAPSHOT_COLUMNS: Final = SNAPSHOT_KEYS + METRIC_NAMES


def snapshot_schema() -> pa.Schema:
    """The Arrow schema of a snapshot file (a contract: DESIGN §6 column names)."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    fields = [
        pa.field("period_type", pa.string(), nullable=False),
        pa.field("period_start", ts, nullable=False),
        pa.field("period_end", ts, nullable=False),
        pa.field("organization_id", pa.string()),
        pa.field("created_at", ts, nullable=False),
    ]
    fields += [pa.field(name, pa.int64() if kind == "i64" else pa.float64()) for name, kind in METRICS]
    return pa.schema(fields, metadata={b"voicepipe.snapshot_version": b"2"})


def metrics_sql(source: str, *, names: Sequence[str] | None = None, per_org: bool = True) -> str:
    """The one definition of every metric: a SELECT over ``source`` (a table with
    the :data:`EVENT_PROJECTION` columns, ``ts`` in epoch microseconds, ``bucket`` and
    ``e2e_ms``) giving a row per bucket for all organisations (``organization_id``
    NULL) and a row per (bucket, organization), ordered by bucket, all-orgs row first.
    ``names``: only these metric columns (in :data:`METRICS` order); ``per_org=False``:
    the all-organisations rows only.

    Two plain GROUP BYs under UNION ALL: measurably faster in DuckDB than one
    GROUPING SETS query with these holistic aggregates. Used for live windows;
    snapshot runs use :func:`_snapshot_rows`, which computes the same columns from
    the same rows piecewise (several times faster over millions of events).
    """
    wanted = None if names is None else set(names)
    cols = ",\n  ".join(
        f"CAST({expr} AS {'BIGINT' if kind == 'i64' else 'DOUBLE'}) AS {name}"
        for name, kind, expr in _metric_exprs()
        if wanted is None or name in wanted
    )
    orgs = f"""
UNION ALL
SELECT bucket, organization_id,
  {cols}
FROM {source}
WHERE organization_id IS NOT NULL
GROUP BY bucket, organization_id"""
    return f"""
SELECT bucket, NULL::VARCHAR AS organization_id,
  {cols}
FROM {source}
GROUP BY bucket{orgs if per_org else ""}
ORDER BY bucket, organization_id NULLS FIRST
"""


# --------------------------------------------------------------------- DuckDB


def _connect(root: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB for one computation: bounded memory (spilling under
    ``<root>/_state/tmp`` when given), all cores up to 8, UTC."""
    threads = max(1, min(os.cpu_count() or 1, 8))
    config: dict[str, Any] = {"threads": threads, "memory_limit": "1GB"}
    if root is not None:
        config["temp_directory"] = str(root / store.STATE / "tmp")
    con = session_defaults(duckdb.connect(config=config))
    # every result that needs an order says so (ORDER BY): loading and grouping in
    # parallel without keeping scan order measured ~30% faster on a month of events
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"CREATE TYPE {_ET} AS ENUM {sql_list(EVENT_TYPES)}")
    return con


def _cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A second connection to ``con``'s database (sees its main-schema tables, not its
    temp tables) with the same session settings."""
    return session_defaults(con.cursor())


def _rows_on(cursor: duckdb.DuckDBPyConnection, tag: str, period: PeriodType, created_at_us: int) -> pa.Table:
    """:func:`_snapshot_rows` on ``cursor`` (closed afterwards): for a worker thread."""
    try:
        return _snapshot_rows(cursor, tag, period, created_at_us)
    finally:
        cursor.close()


def _files_sql(files: Sequence[Path | str], *, by_name: bool = False) -> str:
    """read_parquet of exactly ``files``; ``by_name`` matches columns by name (snapshot
    files written before a column was added lack it: NULL there)."""
    reading(files)
    names = ", ".join(sql_str(str(f)) for f in files)
    return f"read_parquet([{names}], hive_partitioning = false{', union_by_name = true' if by_name else ''})"


def _dedup_sql(files: Sequence[Path], lo_us: int | None, hi_us: int | None) -> str:
    """Projected events of ``files`` with timestamps in [lo, hi) (duplicates
    included: :func:`_load_events` drops them)."""
    cols = ", ".join(c for c in EVENT_PROJECTION if c != "timestamp")
    where = []
    if lo_us is not None:
        where.append(f"timestamp >= make_timestamptz({int(lo_us)})")
    if hi_us is not None:
        where.append(f"timestamp < make_timestamptz({int(hi_us)})")
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {cols}, epoch_us(timestamp) AS ts FROM {_files_sql(files)} {cond}"


def _load_events(con: duckdb.DuckDBPyConnection, files: Sequence[Path], lo_us: int, hi_us: int) -> None:
    """Temp table _vp_ev: the deduplicated (:func:`~voicepipe_obs.query.drop_duplicates`),
    projected events of [lo, hi) in ``files``; their first receipts are added to _vp_rc."""
    if files:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _vp_ev AS {_dedup_sql(files, lo_us, hi_us)}")
        drop_duplicates(con, "_vp_ev")
    else:
        con.execute("CREATE OR REPLACE TEMP TABLE _vp_ev AS SELECT * EXCLUDE (e2e_ms) FROM _vp_empty_ev")
    con.execute(
        "INSERT INTO _vp_rc SELECT artifact_id, min(ts) FROM _vp_ev "
        "WHERE event_type = 'artifact_received' AND artifact_id IS NOT NULL GROUP BY artifact_id"
    )


def _with_latency(con: duckdb.DuckDBPyConnection, receipts: str) -> None:
    """Temp table _vp_src: _vp_ev plus ``e2e_ms`` on artifact_completed rows (the
    completion − the artifact's earliest receipt in ``receipts``, NULL without one).

    Materialised once per chunk: measured cheaper than an in-place UPDATE and than
    joining inside each metrics query.
    """
    _first_receipts(con, receipts)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _vp_src AS
        SELECT e.*, CASE WHEN e.event_type = 'artifact_completed'
                         THEN (e.ts - r.first_us) / 1000.0 END AS e2e_ms
        FROM _vp_ev e
        LEFT JOIN _vp_first r ON e.event_type = 'artifact_completed' AND r.artifact_id = e.artifact_id
        """
    )


def _first_receipts(con: duckdb.DuckDBPyConnection, receipts: str, events: str = "_vp_ev") -> None:
    """Temp table _vp_first: the earliest receipt in ``receipts`` of each artifact
    completed in ``events``."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _vp_first AS
        SELECT artifact_id, min(first_us) AS first_us FROM {receipts}
        WHERE artifact_id IN (SELECT artifact_id FROM {events} WHERE event_type = 'artifact_completed')
        GROUP BY artifact_id
        """
    )


def _completions(con: duckdb.DuckDBPyConnection, receipts: str, into: str, *, first: bool = False) -> None:
    """Table ``into``: the artifact_completed rows of _vp_ev with ``e2e_ms`` as in
    :func:`_with_latency` (NULL without a receipt) — all :func:`_snapshot_rows` needs
    of end-to-end latency, and the completions still missing a receipt, without
    scanning every event again. ``first``: ``receipts`` already holds one row per
    artifact, its earliest receipt (see :func:`_earliest_receipts`)."""
    if not first:
        _first_receipts(con, receipts)
        receipts = "_vp_first"
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {into} AS
        SELECT e.ts, e.organization_id, e.artifact_id, (e.ts - r.first_us) / 1000.0 AS e2e_ms
        FROM _vp_ev e LEFT JOIN {receipts} r ON r.artifact_id = e.artifact_id
        WHERE e.event_type = 'artifact_completed'
        """
    )


def _earliest_receipts(con: duckdb.DuckDBPyConnection, receipts: str) -> str:
    """Temp table _vp_rc_first: the earliest receipt of every artifact in ``receipts``,
    for a run whose receipts do not change while it computes several chunks: grouped
    once, then joined per chunk (measured ~40% less CPU than finding each chunk's
    artifacts' receipts anew)."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _vp_rc_first AS "
        f"SELECT artifact_id, min(first_us) AS first_us FROM {receipts} GROUP BY artifact_id"
    )
    return "_vp_rc_first"


def _receipts_view(con: duckdb.DuckDBPyConnection, chunks: Sequence[Path], *, load: bool = False) -> str:
    """A view of first receipts: this run's (_vp_rc) plus the index ``chunks``
    (with ``load``, read once into a table: for runs that look up more than once)."""
    if not chunks:
        return "_vp_rc"
    index = f"SELECT artifact_id, first_us FROM {_files_sql(chunks)}"
    if load:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _vp_rc_index AS {index}")
        index = "SELECT artifact_id, first_us FROM _vp_rc_index"
    else:
        con.execute(f"CREATE OR REPLACE TEMP VIEW _vp_rc_index AS {index}")
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW _vp_receipts AS SELECT artifact_id, first_us FROM _vp_rc UNION ALL {index}"
    )
    return "_vp_receipts"


def _prepare(con: duckdb.DuckDBPyConnection) -> None:
    _empty_events(con)
    con.execute("CREATE OR REPLACE TEMP TABLE _vp_rc (artifact_id VARCHAR, first_us BIGINT)")


def _empty_events(con: duckdb.DuckDBPyConnection) -> None:
    cols = [
        "event_id VARCHAR",
        "event_type VARCHAR",
        "artifact_id VARCHAR",
        "organization_id VARCHAR",
        "duration_ms DOUBLE",
        "confidence_score DOUBLE",
        "claim_count INTEGER",
        "entity_count INTEGER",
        "disambiguation_count INTEGER",
        "draft_count INTEGER",
        "ai_cost DOUBLE",
        "error_code VARCHAR",
        "ts BIGINT",
        "e2e_ms DOUBLE",
    ]
    con.execute(f"CREATE OR REPLACE TEMP TABLE _vp_empty_ev ({', '.join(cols)})")


def _query_metrics(
    con: duckdb.DuckDBPyConnection, table: str, bucket_expr: str, *, per_org: bool = True
) -> pa.Table:
    src = f"(SELECT *, {bucket_expr} AS bucket FROM {table})"
    result: pa.Table = con.sql(metrics_sql(src, per_org=per_org)).to_arrow_table()
    return result


#: the event types some snapshot column reads; any other event counts only for its
#: ai_cost and for giving its bucket and organisation a row
SNAPSHOT_EVENT_TYPES: Final = frozenset(
    {"artifact_received", "artifact_completed", "artifact_failed"}
    | {"retry_initiated", "retry_succeeded", "retry_failed"}
    | {ev for evs in STAGE_COMPLETION_EVENTS.values() for ev in evs}
    | set(STAGE_FAILURE_EVENTS.values())
    | {"entity_user_resolved"}
)
#: DuckDB ENUM of the vocabulary: snapshot runs compare small integers, not strings
_ET: Final = "_vp_event_type"
_SNAPSHOT_TABLE: Final = (
    ("event_id", "VARCHAR"),
    ("event_type", _ET),
    ("artifact_id", "VARCHAR"),
    ("organization_id", "VARCHAR"),
    ("duration_ms", "DOUBLE"),
    ("confidence_score", "DOUBLE"),
    ("claim_count", "INTEGER"),
    ("entity_count", "INTEGER"),
    ("disambiguation_count", "INTEGER"),
    ("draft_count", "INTEGER"),
    ("ai_cost", "DOUBLE"),
)


def _snapshot_scan_sql(files: Sequence[Path | str], lo_us: int, hi_us: int, *, event_ids: bool) -> str:
    """The rows of ``files`` in [lo, hi), event_type as :data:`_ET` (NULL outside the
    vocabulary); without ``event_ids`` event_id is NULL (materialising strings is
    most of what a load costs)."""
    cols = ", ".join(name for name, _ in _SNAPSHOT_TABLE[2:])
    return (
        f"SELECT {'event_id' if event_ids else 'NULL'}, TRY_CAST(event_type AS {_ET}), {cols}, "
        f"epoch_us(timestamp) FROM {_files_sql(files)} "
        f"WHERE timestamp >= make_timestamptz({int(lo_us)}) AND timestamp < make_timestamptz({int(hi_us)})"
    )


def _load_snapshot_events(
    con: duckdb.DuckDBPyConnection, files: Sequence[_EventFile], lo_us: int, hi_us: int, *, receipts: bool
) -> None:
    """Temp table _vp_ev for a snapshot run: the deduplicated rows of
    :func:`_snapshot_scan_sql`; with ``receipts`` their first receipts are added to
    _vp_rc (runs with a receipts index take only the new files' receipts instead).

    An event's copies share its timestamp, hence its hour partition, and a compacted
    file holds no duplicates: an hour that is one compacted file needs no check. The
    other hours are loaded first and checked (:func:`~voicepipe_obs.query.drop_duplicates`)."""
    cols = ", ".join(f"{name} {kind}" for name, kind in _SNAPSHOT_TABLE)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _vp_ev ({cols}, ts BIGINT)")
    per_hour: dict[int, list[_EventFile]] = {}
    for f in files:
        per_hour.setdefault(f.hour_us, []).append(f)
    clean: list[str] = []
    mixed: list[str] = []
    for group in per_hour.values():
        if compacted_alone([g.file for g in group]):
            clean.append(group[0].file)
        else:
            mixed.extend(f.file for f in group)
    if mixed:
        con.execute(f"INSERT INTO _vp_ev {_snapshot_scan_sql(mixed, lo_us, hi_us, event_ids=True)}")
        # a copy of any other event changes nothing (its bucket and organisation have
        # a row either way), so only these are checked: ~40% of a store are
        # ``*_started`` events no metric reads
        drop_duplicates(
            con, "_vp_ev", f"event_type IN {sql_list(sorted(SNAPSHOT_EVENT_TYPES))} OR ai_cost IS NOT NULL"
        )
    if clean:
        con.execute(f"INSERT INTO _vp_ev {_snapshot_scan_sql(clean, lo_us, hi_us, event_ids=False)}")
    if receipts:
        con.execute(
            "INSERT INTO _vp_rc SELECT artifact_id, min(ts) FROM _vp_ev "
            "WHERE event_type = 'artifact_received' AND artifact_id IS NOT NULL GROUP BY artifact_id"
        )


def _snapshot_counts() -> tuple[dict[str, str], dict[str, str]]:
    """The additive figures per (hour, organization) — name → aggregate over _vp_ev —
    and, per stage, the SQL adding up its completion counts (``p.<name>`` terms)."""
    er_rows = f"{_in(STAGE_COMPLETION_EVENTS['entity_resolution'])} AND entity_count IS NOT NULL"
    counts: dict[str, str] = {
        "c_recv": _eq("artifact_received"),
        "c_done": _eq("artifact_completed"),
        "c_fail": _eq("artifact_failed"),
        "c_retry_i": _eq("retry_initiated"),
        "c_retry_s": _eq("retry_succeeded"),
        "c_retry_f": _eq("retry_failed"),
    }
    # a count per event type (equality on the ENUM is the cheapest filter); a
    # stage's completions add its types up in the final expressions
    ok: dict[str, str] = {}
    for stage in TIMED_STAGES:
        names = [f"c_ok_{stage}_{i}" for i in range(len(STAGE_COMPLETION_EVENTS[stage]))]
        counts |= {name: _eq(ev) for name, ev in zip(names, STAGE_COMPLETION_EVENTS[stage], strict=True)}
        ok[stage] = " + ".join(f"p.{name}" for name in names)
        counts[f"c_bad_{stage}"] = _eq(STAGE_FAILURE_EVENTS[stage])
    sums: dict[str, str] = {name: f"count_if({cond})" for name, cond in counts.items()}
    # Σ(entity_count − disambiguation_count) = s_ent − s_dis over the same rows
    sums |= {
        "s_ent": f"sum(entity_count) FILTER (WHERE {er_rows})",
        "s_dis": f"sum(coalesce(disambiguation_count, 0)) FILTER (WHERE {er_rows})",
        "s_claims": f"sum(claim_count) FILTER (WHERE {_eq('claims_extracted')})",
        "s_drafts": f"sum(draft_count) FILTER (WHERE {_eq('drafts_generated')})",
        "s_flagged": f"sum(disambiguation_count) FILTER (WHERE {_eq(DISAMBIGUATION_EVENT)})",
        "s_resolved": f"sum(disambiguation_count) FILTER (WHERE {_eq('entity_user_resolved')})",
    }
    return sums, ok


def _snapshot_inputs(con: duckdb.DuckDBPyConnection, tag: str) -> None:
    """Everything :func:`_snapshot_rows` needs of _vp_ev (see
    :func:`_load_snapshot_events`), as tables of the main schema named
    ``<name>_<tag>`` (so another cursor can compute the rows while this connection
    loads the next days): counts and sums per (hour, organization), the stage
    completion rows, and the (hour, organization, artifact) triples with a cost.
    _vp_done_<tag> comes from :func:`_completions`."""
    hour = store.US_PER_HOUR
    sums, _ = _snapshot_counts()
    con.execute(
        f"CREATE OR REPLACE TABLE _vp_pre_hourly_{tag} AS SELECT ts - ts % {hour} AS bucket, organization_id, "
        + ", ".join(f"{expr} AS {name}" for name, expr in sums.items())
        + ", fsum(ai_cost) AS s_cost FROM _vp_ev GROUP BY ALL"
    )
    stage_of = " ".join(
        f"WHEN {sql_str(ev)} THEN {i}"
        for i, stage in enumerate(TIMED_STAGES)
        for ev in STAGE_COMPLETION_EVENTS[stage]
    )
    completions = sorted(ev for evs in STAGE_COMPLETION_EVENTS.values() for ev in evs)
    con.execute(
        f"CREATE OR REPLACE TABLE _vp_stg_{tag} AS SELECT ts, organization_id, "
        f"CASE event_type {stage_of} END AS st, duration_ms, confidence_score FROM _vp_ev "
        f"WHERE event_type IN {sql_list(completions)}"
    )
    con.execute(
        f"CREATE OR REPLACE TABLE _vp_art_{tag} AS SELECT DISTINCT ts - ts % {hour} AS bucket, "
        "organization_id, artifact_id FROM _vp_ev WHERE ai_cost IS NOT NULL AND artifact_id IS NOT NULL"
    )


_INPUTS: Final = ("_vp_pre_hourly", "_vp_stg", "_vp_art", "_vp_done")


def _drop_inputs(con: duckdb.DuckDBPyConnection, tag: str) -> None:
    for name in _INPUTS:
        con.execute(f"DROP TABLE IF EXISTS {name}_{tag}")


def _snapshot_rows(
    con: duckdb.DuckDBPyConnection, tag: str, period: PeriodType, created_at_us: int
) -> pa.Table:
    """The snapshot rows of ``period`` from the tables of :func:`_snapshot_inputs`
    (read only: hourly and daily rows can be computed at the same time; see
    :func:`_drop_inputs`): the rows :func:`metrics_sql` gives over the same events
    (same groups, columns, order and values), computed the way a rebuild over
    millions of events can afford. Instead of ~45 FILTERed aggregates (six holistic)
    per group over every row:

    * counts and sums from one GROUP BY (hour, organization) over the event_type ENUM;
      days, and all organisations, sum those up (exact: a sum of counts is the count;
      the cost stays compensated with ``fsum``);
    * stage latency averages/p95 and the confidences from the completion rows only,
      one group per (bucket, scope) with a FILTER per stage, over the raw rows for
      days too;
    * end-to-end latency from _vp_done (the artifact_completed rows with ``e2e_ms``,
      see :func:`_completions`), raw rows per bucket;
    * distinct artifacts with a cost from a pre-deduplicated (hour, organization,
      artifact) set.

    Each piece applies DESIGN §6 to exactly the rows :func:`metrics_sql` filters for
    that column. ``tests/test_aggregate_property.py`` checks the snapshots (this path)
    against a plain-Python reference, and ``tests/test_aggregate.py`` checks live
    windows (:func:`metrics_sql`) against the snapshots.
    """
    hour, day = store.US_PER_HOUR, store.US_PER_DAY
    sums, ok = _snapshot_counts()
    temps: list[str] = []
    rolled = ", ".join(f"sum({name}) AS {name}" for name in sums) + ", fsum(s_cost) AS s_cost"
    if period == "daily":
        temps.append(f"_vp_pre_daily_{tag}")
        con.execute(
            f"CREATE OR REPLACE TABLE _vp_pre_daily_{tag} AS SELECT bucket - bucket % {day} AS bucket, "
            f"organization_id, {rolled} FROM _vp_pre_hourly_{tag} GROUP BY ALL"
        )
    conf_stage = {
        "conf_t": TIMED_STAGES.index("transcription"),
        "conf_c": TIMED_STAGES.index("claims_extraction"),
    }
    stage_cols = [
        f"{fn}(duration_ms{arg}) FILTER (WHERE st = {i}) AS {name}_{stage}"
        for i, stage in enumerate(TIMED_STAGES)
        for fn, arg, name in (("favg", "", "avg"), ("quantile_cont", ", 0.95", "p95"))
    ]
    stage_cols += [
        f"favg(confidence_score) FILTER (WHERE st = {i}) AS {alias}" for alias, i in conf_stage.items()
    ]

    def stages(bucket: str, extra: str, where: str) -> str:
        # one group per (bucket, scope) with a FILTER per stage: measured faster
        # than grouping by stage too and pivoting
        return f"SELECT {bucket} AS bucket{extra}, {', '.join(stage_cols)} FROM _vp_stg_{tag} {where} GROUP BY ALL"

    e2e_aggs = "favg(e2e_ms) AS avg_ms, quantile_cont(e2e_ms, [0.5, 0.95, 0.99]) AS q"
    org = "organization_id IS NOT NULL"

    def n(name: str) -> str:
        return f"p.{name}"

    final: dict[str, str] = {
        "artifacts_received": n("c_recv"),
        "artifacts_completed": n("c_done"),
        "artifacts_failed": n("c_fail"),
        "overall_failure_rate": _ratio(n("c_fail"), f"{n('c_done')} + {n('c_fail')}"),
        "avg_transcript_confidence": "s.conf_t",
        "avg_claim_confidence": "s.conf_c",
        "auto_resolution_rate": _ratio(f"{n('s_ent')} - {n('s_dis')}", n("s_ent")),
        "disambiguation_rate": _ratio(n("s_dis"), n("s_ent")),
        "total_claims_extracted": f"coalesce({n('s_claims')}, 0)",
        "total_entities_resolved": f"coalesce({n('s_ent')}, 0)",
        "total_drafts_generated": f"coalesce({n('s_drafts')}, 0)",
        "total_ai_cost": f"coalesce({n('s_cost')}, 0.0)",
        "avg_cost_per_artifact": _ratio(n("s_cost"), "a.n"),
        "retries_initiated": n("c_retry_i"),
        "retries_succeeded": n("c_retry_s"),
        "retries_failed": n("c_retry_f"),
        "disambiguations_flagged": f"coalesce({n('s_flagged')}, 0)",
        "disambiguations_resolved": f"coalesce({n('s_resolved')}, 0)",
        "avg_end_to_end_latency_ms": "e.avg_ms",
    }
    for i, pct in enumerate((50, 95, 99), start=1):
        final[f"p{pct}_end_to_end_latency_ms"] = f"e.q[{i}]"
    for stage in TIMED_STAGES:
        final[f"avg_{stage}_latency_ms"] = f"s.avg_{stage}"
        final[f"p95_{stage}_latency_ms"] = f"s.p95_{stage}"
        bad = n(f"c_bad_{stage}")
        final[f"{stage}_failure_rate"] = _ratio(bad, f"{ok[stage]} + {bad}")
    cols = ", ".join(
        f"CAST({final[name]} AS {'BIGINT' if kind == 'i64' else 'DOUBLE'}) AS {name}"
        for name, kind in METRICS
    )

    def scope(per_org: bool) -> str:
        span = hour if period == "hourly" else day
        bucket = f"ts - ts % {span}"
        art_bucket = "bucket" if period == "hourly" else f"bucket - bucket % {day}"
        suffix = f"{period}_{'org' if per_org else 'all'}_{tag}"
        extra = ", organization_id" if per_org else ""
        if per_org:
            keys, where = "bucket, organization_id", f"WHERE {org}"
            art_n = "count(*)" if period == "hourly" else "count(DISTINCT artifact_id)"
            pre = f"_vp_pre_{period}_{tag}"
        else:
            keys, where = "bucket", ""
            art_n = "count(DISTINCT artifact_id)"
            pre = f"(SELECT bucket, {rolled} FROM _vp_pre_{period}_{tag} GROUP BY bucket)"
        parts = {
            "s": stages(bucket, extra, where),
            "e": f"SELECT {bucket} AS bucket{extra}, {e2e_aggs} FROM _vp_done_{tag} "
            f"WHERE e2e_ms IS NOT NULL {'AND ' + org if per_org else ''} GROUP BY ALL",
            "a": f"SELECT {art_bucket} AS bucket{extra}, {art_n} AS n FROM _vp_art_{tag} {where} GROUP BY ALL",
        }
        # each part materialised first: measured faster than joining the subqueries
        for alias, sql in parts.items():
            temps.append(f"_vp_part_{alias}_{suffix}")
            con.execute(f"CREATE OR REPLACE TABLE {temps[-1]} AS {sql}")
        joins = " ".join(
            f"LEFT JOIN _vp_part_{alias}_{suffix} {alias} ON "
            + " AND ".join(f"{alias}.{k} = p.{k}" for k in keys.split(", "))
            for alias in parts
        )
        org_expr = "p.organization_id" if per_org else "NULL::VARCHAR"
        return (
            f"SELECT p.bucket, {org_expr} AS organization_id, {cols} FROM {pre} p {joins} "
            f"{'WHERE p.' + org if per_org else ''}"
        )

    try:
        rows = f"{scope(False)} UNION ALL {scope(True)}"
        span = hour if period == "hourly" else day
        return _as_snapshot(
            con.sql(_snapshot_sql(rows, period, f"bucket + {span}", created_at_us)).to_arrow_table()
        )
    finally:
        for tmp in temps:
            con.execute(f"DROP TABLE IF EXISTS {tmp}")


def _snapshot_sql(rows: str, period_type: str, end: str, created_at_us: int) -> str:
    """A SELECT of the snapshot columns over ``rows`` (a query giving bucket,
    organization_id and the metrics), plus ``_has_org`` for :func:`_as_snapshot`.

    Every column is made here, none in Python: converting a Python value to Arrow
    makes pyarrow import pandas when it is installed (~0.4 s, as much as a small
    incremental run costs)."""
    return (
        f"SELECT {sql_str(period_type)} AS period_type, make_timestamptz(bucket) AS period_start, "
        f"make_timestamptz({end}) AS period_end, organization_id, "
        f"make_timestamptz({int(created_at_us)}) AS created_at, {', '.join(METRIC_NAMES)}, "
        f"organization_id IS NOT NULL AS _has_org FROM ({rows})"
    )


def _as_snapshot(table: pa.Table) -> pa.Table:
    """Rows of :func:`_snapshot_sql` → the snapshot schema, ordered by period_start
    and organization_id, all-organisations row first (sorted in Arrow: measured
    cheaper than DuckDB sorting these wide rows)."""
    import pyarrow.compute as pc

    keys = [("period_start", "ascending"), ("_has_org", "ascending"), ("organization_id", "ascending")]
    table = table.take(pc.sort_indices(table, sort_keys=keys)).drop_columns(["_has_org"])
    return table.cast(snapshot_schema())


# ------------------------------------------------------------------ bookkeeping


@dataclass
class _State:
    seen: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, root: Path) -> _State:
        path = root / store.STATE / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (%s): recomputing from scratch", path, exc)
            return cls()
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return cls()
        seen = data.get("seen", [])
        if not isinstance(seen, list) or not all(isinstance(name, str) for name in seen):
            # valid JSON of the wrong shape (`"seen": 5`) is as unreadable as invalid JSON
            log.warning(
                'ignoring unreadable %s ("seen" is not a list of file names): recomputing from scratch',
                path,
            )
            return cls()
        return cls(set(seen))

    def save(self, root: Path) -> None:
        path = root / store.STATE / STATE_FILE
        store.write_text_atomic(path, json.dumps({"version": STATE_VERSION, "seen": sorted(self.seen)}))


def _run_lock(root: Path, timeout: float = store.LOCK_TIMEOUT) -> AbstractContextManager[None]:
    """One aggregate run at a time per root (a second cron run waits up to ``timeout``
    seconds, then raises :class:`~voicepipe_obs.errors.BusyError`: exit 5)."""
    return store.run_lock(root, LOCK_FILE, command="aggregate", timeout=timeout)


@dataclass(frozen=True)
class _EventFile:
    rel: str  # relative to the root, "/"-separated
    file: str  # the full path as text (what the SQL needs)
    hour_us: int  # start of the partition's hour, epoch µs

    @property
    def path(self) -> Path:
        return Path(self.file)

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1]


def _list_event_files(root: Path, seen: set[str], *, vet: bool = True) -> list[_EventFile]:
    """Every event file (sorted); files not aggregated before are vetted (a bad one
    is skipped with a warning and stays unrecorded), seen ones were vetted already.
    ``vet=False``: the listing alone (no file is opened).

    ``os.scandir`` and strings rather than pathlib per file: a month is ~11,000 files
    and this runs on every (incremental) run, most often to find nothing new
    (pathlib made listing ~0.3 s of a ~0.6 s run)."""
    base = os.path.join(os.fspath(root), store.EVENTS)
    listed: list[_EventFile] = []
    fresh: list[Path] = []
    for date in _subdirs(base, "date="):
        for hour in _subdirs(os.path.join(base, date), "hour="):
            parent = f"{store.EVENTS}/{date}/{hour}"
            hour_us = _partition_hour(parent)
            if hour_us is None:
                continue
            directory = os.path.join(base, date, hour)
            try:
                names = sorted(os.listdir(directory))
            except (FileNotFoundError, NotADirectoryError):  # removed meanwhile (cleanup)
                continue
            except OSError as exc:
                raise _unreadable_dir(directory, exc) from exc
            for name in names:
                # temporary files start with a dot (see store.write_table)
                if not name.endswith(".parquet") or name.startswith("."):
                    continue
                f = _EventFile(f"{parent}/{name}", os.path.join(directory, name), hour_us)
                listed.append(f)
                if f.rel not in seen:
                    fresh.append(f.path)
    if not vet:
        return listed
    # Vetting passes over a file that vanished meanwhile (compaction merged its
    # hour): it stays listed, so that reading it fails and the read lists again
    # (:func:`_reading`) and finds the merged file. Dropping it would lose the hour.
    skip = {str(p) for p in set(fresh) - set(vetted(fresh)) if p.exists()}
    return [f for f in listed if f.file not in skip] if skip else listed


def _settled(new: Sequence[_EventFile], seen: set[str]) -> set[str]:
    """The compacted files among ``new`` whose sources were all aggregated (read from
    their Parquet metadata): they carry nothing new."""
    settled = set()
    for f in new:
        if f.name.startswith(COMPACTED_PREFIX):
            sources = _compacted_sources(f.path)
            parent = f.rel.rsplit("/", 1)[0]
            if sources is not None and all(f"{parent}/{s}" in seen for s in sources):
                settled.add(f.rel)
    return settled


def pending_hours(root: str | os.PathLike[str]) -> dict[dt.datetime, int]:
    """Hour partitions (start, UTC) holding event files that the next incremental
    :func:`aggregate` run would read — files that arrived since the last run, by
    ``_state/aggregate.json`` — with how many each; every hour with files when
    aggregate never ran. Snapshots of these hours (and their days) are behind.

    Cheap: a directory listing, plus the Parquet footer of any compacted file not yet
    aggregated (whose sources may all have been); no event is read."""
    rootp = store.local_root(root)
    seen = _State.load(rootp).seen
    new = [f for f in _list_event_files(rootp, seen, vet=False) if f.rel not in seen]
    settled = _settled(new, seen) if seen else set()  # never aggregated: all of them
    out: dict[dt.datetime, int] = {}
    for f in new:
        if f.rel not in settled:
            hour = store.from_us(f.hour_us)
            out[hour] = out.get(hour, 0) + 1
    return out


def _subdirs(directory: str, prefix: str) -> list[str]:
    """Names of the subdirectories of ``directory`` starting with ``prefix``, sorted
    (none when it is gone: cleanup removed it meanwhile). One that cannot be read is
    an error (:func:`_unreadable_dir`), never skipped: its events would be missing
    from the snapshots without a word."""
    try:
        with os.scandir(directory) as it:
            return sorted(e.name for e in it if e.name.startswith(prefix) and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise _unreadable_dir(directory, exc) from exc


def _unreadable_dir(directory: str, exc: OSError) -> StoreError:
    """The error for an event directory aggregate cannot list (as the reports say it)."""
    return StoreError(store.cannot_access(exc, directory))


def _partition_hour(parent: str) -> int | None:
    """Start (epoch µs) of an ``events/date=YYYY-MM-DD/hour=HH`` directory's hour."""
    try:
        _area, date_part, hour_part = parent.split("/")
        day = dt.datetime.fromisoformat(date_part.removeprefix("date=")).replace(tzinfo=_UTC)
        return store.to_us(day) + int(hour_part.removeprefix("hour=")) * store.US_PER_HOUR
    except ValueError:
        return None


def _compacted_sources(path: Path) -> list[str] | None:
    """Relative names of the files a compacted file replaced (its Parquet metadata).
    Remembered per path for the process: a compacted file is written once under a
    unique name, never rewritten (and a run asks twice: :func:`_settled`, then the
    artifact index's refresh)."""
    key = str(path)
    if key not in _SOURCES:
        _SOURCES[key] = _read_compacted_sources(path)
        if len(_SOURCES) > 100_000:  # a long-lived process: forget the oldest
            del _SOURCES[next(iter(_SOURCES))]
    sources = _SOURCES[key]
    return None if sources is None else list(sources)


_SOURCES: dict[str, tuple[str, ...] | None] = {}


def _read_compacted_sources(path: Path) -> tuple[str, ...] | None:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path).metadata or {}
        raw = meta.get(COMPACTED_FROM_KEY)
        return tuple(json.loads(raw)) if raw else None
    except (OSError, ValueError):
        return None


def _receipt_chunks(root: Path) -> list[Path]:
    base = root / store.STATE / RECEIPTS_DIR
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))


def _receipts_sql(files: Sequence[Path | str]) -> str:
    return (
        f"SELECT artifact_id, min(epoch_us(timestamp)) AS first_us FROM {_files_sql(files)} "
        "WHERE event_type = 'artifact_received' AND artifact_id IS NOT NULL GROUP BY artifact_id"
    )


def _save_receipts(con: duckdb.DuckDBPyConnection, root: Path, *, full: bool) -> None:
    """Write this run's receipts (_vp_rc) as an index chunk; ``full`` replaces the
    index (it then covers every event file). Too many chunks are merged into one."""
    old = _receipt_chunks(root)
    merge = full or len(old) >= MAX_RECEIPT_CHUNKS
    sql = "SELECT artifact_id, min(first_us) AS first_us FROM _vp_rc GROUP BY artifact_id"
    if merge and not full and old:
        sql = (
            "SELECT artifact_id, min(first_us) AS first_us FROM (SELECT artifact_id, first_us FROM _vp_rc "
            f"UNION ALL SELECT artifact_id, first_us FROM {_files_sql(old)}) GROUP BY artifact_id"
        )
    if not merge and not _scalar_int(con, "SELECT count(*) FROM _vp_rc"):
        return
    table = con.sql(sql).to_arrow_table()
    name = f"{'full' if full else 'chunk'}-{store.unique_name()}.parquet"
    store.write_table(root / store.STATE / RECEIPTS_DIR / name, table)
    if merge:
        for path in old:
            path.unlink(missing_ok=True)


def _late_receipt_hours(
    con: duckdb.DuckDBPyConnection, root: Path, new: Sequence[str], every: Sequence[str]
) -> set[int]:
    """:func:`_late_receipt_hours_once`, listing the files again when one vanished
    (:func:`~voicepipe_obs.query.retry_vanished`)."""

    def read(attempt: int) -> set[int]:
        if attempt:
            return _late_receipt_hours_once(con, root, _relisted_str(new), _relisted_str(every))
        return _late_receipt_hours_once(con, root, new, every)

    return retry_vanished(read, what="aggregate")


def _relisted_str(files: Sequence[str]) -> list[str]:
    return [str(p) for p in relist(files)]


def _relisted(files: Sequence[_EventFile]) -> list[_EventFile]:
    """``files`` as they are now (:func:`~voicepipe_obs.query.relist`): a compacted
    file in place of the sources that vanished."""
    parents = {os.path.dirname(f.file): f for f in files}
    out = []
    for path in relist(f.file for f in files):
        like = parents[str(path.parent)]
        out.append(_EventFile(f"{like.rel.rsplit('/', 1)[0]}/{path.name}", str(path), like.hour_us))
    return out


def _reading(files: Sequence[_EventFile], read: Callable[[Sequence[_EventFile]], None]) -> None:
    """``read(files)``, retried over the files listed again when one vanished."""

    def attempt(n: int) -> None:
        read(_relisted(files) if n else files)

    retry_vanished(attempt, what="aggregate")


def _late_receipt_hours_once(
    con: duckdb.DuckDBPyConnection, root: Path, new: Sequence[str], every: Sequence[str]
) -> set[int]:
    """Hours aggregated before whose end-to-end latency receipts in the ``new`` files
    change: completions aggregated without a receipt (the orphans file) whose receipt
    has now arrived, and — rare: a receipt backfilled earlier than the one indexed —
    every completion of such an artifact (found by one scan of ``every`` file).
    Needs _vp_rc_index (see :func:`_receipts_view`)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE _vp_new_rc AS {_receipts_sql(new)}")
    hours: set[int] = set()
    orphans = root / store.STATE / ORPHANS_FILE
    if orphans.exists():
        rows = con.execute(
            f"SELECT DISTINCT o.hour FROM {_files_sql([orphans])} o JOIN _vp_new_rc n USING (artifact_id)"
        ).fetchall()
        hours |= {int(h) for (h,) in rows}
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _vp_moved AS SELECT n.artifact_id FROM _vp_new_rc n "
        "JOIN (SELECT artifact_id, min(first_us) AS first_us FROM _vp_rc_index "
        "WHERE artifact_id IN (SELECT artifact_id FROM _vp_new_rc) GROUP BY artifact_id) i "
        "USING (artifact_id) WHERE n.first_us < i.first_us"
    )
    if _scalar_int(con, "SELECT count(*) FROM _vp_moved"):
        rows = con.execute(
            f"SELECT DISTINCT epoch_us(timestamp) - epoch_us(timestamp) % {store.US_PER_HOUR} "
            f"FROM {_files_sql(every)} WHERE event_type = 'artifact_completed' "
            "AND artifact_id IN (SELECT artifact_id FROM _vp_moved)"
        ).fetchall()
        hours |= {int(h) for (h,) in rows}
    con.execute("DROP TABLE _vp_moved")
    return hours


def _save_orphans(
    con: duckdb.DuckDBPyConnection, root: Path, receipts: str, *, loaded: set[int], present: set[int]
) -> None:
    """Record the completions still without a receipt (:data:`ORPHANS_FILE`): this
    run's (_vp_missing) and the earlier ones of days not loaded now whose events
    still exist."""
    path = root / store.STATE / ORPHANS_FILE
    keep = sorted(present - loaded)
    sql = "SELECT artifact_id, hour FROM _vp_missing"
    if path.exists() and keep:
        sql += (
            f" UNION ALL SELECT artifact_id, hour FROM {_files_sql([path])} "
            f"WHERE hour - hour % {store.US_PER_DAY} IN ({', '.join(map(str, keep))})"
        )
    # the receipts of these artifacts first (a small hash table probed by the index),
    # then the ones without
    con.execute(f"CREATE OR REPLACE TEMP TABLE _vp_orphans AS SELECT DISTINCT artifact_id, hour FROM ({sql})")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _vp_found AS SELECT DISTINCT artifact_id FROM "
        f"{receipts} WHERE artifact_id IN (SELECT artifact_id FROM _vp_orphans)"
    )
    table = con.sql(
        "SELECT artifact_id, hour FROM _vp_orphans "
        "WHERE artifact_id NOT IN (SELECT artifact_id FROM _vp_found) ORDER BY artifact_id, hour"
    ).to_arrow_table()
    if table.num_rows:
        store.write_table(path, table)
    else:
        path.unlink(missing_ok=True)


def reset_receipts(root: Path) -> None:
    """Forget the receipts index (cleanup calls this after dropping event partitions);
    the next :func:`aggregate` run rebuilds it from the events that remain."""
    for path in _receipt_chunks(root):
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------- aggregate


@dataclass
class AggregateResult:
    """What a run did (for the one-line summary)."""

    mode: str  # incremental | range | rebuild
    new_files: int = 0
    hourly_written: int = 0
    daily_written: int = 0
    removed: int = 0
    #: snapshots in the range older than the oldest events (dropped by cleanup), kept
    kept_past_events: int = 0
    events_scanned: int = 0
    seconds: float = 0.0

    @property
    def nothing_to_do(self) -> bool:
        return self.hourly_written == self.daily_written == self.removed == 0


def _floor(us: int, span: int) -> int:
    return us - us % span


def aggregate(
    root: str | os.PathLike[str],
    *,
    now: dt.datetime,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    rebuild: bool = False,
    retention: RetentionSettings | None = None,
    progress: Progress | None = None,
    index_progress: Progress | None = None,
    lock_timeout: float = store.LOCK_TIMEOUT,
) -> AggregateResult:
    """Bring the snapshots up to date and return what was done.

    * default: incremental — recompute the hours (and their days) of event files not
      aggregated before, wherever their timestamps fall;
    * ``since``/``until``: recompute every hourly bucket in [since, until) (rounded out
      to whole hours) and every daily bucket overlapping it;
    * ``rebuild``: recompute everything within retention (hourly and daily snapshot
      retention from ``retention``, defaults when None) and rebuild the receipts index.

    Buckets without events get no file (an existing one is removed). ``progress`` is
    called with (days done, days total); ``index_progress`` with (hours done, hours
    total) while the artifact index computes more than a couple of days' hours (its
    first build, or after it was lost), which every run brings up to date afterwards.

    Raises :class:`~voicepipe_obs.errors.StoreError` when the root cannot be written
    (the run lock, the bookkeeping, a snapshot file), like compact and cleanup, and
    :class:`~voicepipe_obs.errors.BusyError` when another run holds the run lock
    for longer than ``lock_timeout`` seconds.
    """
    rootp = store.local_root(root)
    try:
        return _aggregate(
            rootp,
            now=now,
            since=since,
            until=until,
            rebuild=rebuild,
            retention=retention,
            progress=progress,
            index_progress=index_progress,
            lock_timeout=lock_timeout,
        )
    except OSError as exc:
        raise store.write_error(rootp, exc) from exc


def _aggregate(
    rootp: Path,
    *,
    now: dt.datetime,
    since: dt.datetime | None,
    until: dt.datetime | None,
    rebuild: bool,
    retention: RetentionSettings | None,
    progress: Progress | None,
    index_progress: Progress | None = None,
    lock_timeout: float = store.LOCK_TIMEOUT,
) -> AggregateResult:
    """:func:`aggregate`, raising OSError as it comes."""
    if now.tzinfo is None:
        raise UsageError("now must be timezone-aware")
    if rebuild and (since is not None or until is not None):
        raise UsageError("--rebuild recomputes everything within retention: drop --since/--until")
    started = time.perf_counter()
    now_us = store.to_us(now)
    mode = "rebuild" if rebuild else "range" if since is not None or until is not None else "incremental"
    result = AggregateResult(mode)
    if not (rootp / store.EVENTS).is_dir() and mode == "incremental":
        result.seconds = time.perf_counter() - started
        return result
    with _run_lock(rootp, lock_timeout):
        state = _State.load(rootp)
        listing = _list_event_files(rootp, state.seen)
        present = {f.rel for f in listing}
        new = [f for f in listing if f.rel not in state.seen]
        settled = _settled(new, state.seen)  # compacted files that carry nothing new
        new = [f for f in new if f.rel not in settled]
        result.new_files = len(new)
        log.info("%d event files, %d of them new since the last run", len(listing), len(new))

        hours: set[int]
        days: set[int]
        if mode == "incremental" and not new and _receipt_chunks(rootp):
            # nothing arrived: no DuckDB, no pyarrow (cron runs this every few minutes),
            # unless compaction or cleanup left the artifact index something to do
            if state.seen != present:
                state.seen = present
                state.save(rootp)
            _refresh_index(rootp, listing, None, index_progress)
            result.seconds = time.perf_counter() - started
            return result
        if mode == "rebuild" and retention is None:  # pydantic is imported only when needed
            from .config import RetentionSettings

            retention = RetentionSettings()
        # Buckets past their snapshots' retention are not computed (cleanup would drop
        # them): by a rebuild, nor by an incremental run over a backfill. A range is
        # computed as asked; so is every bucket when no retention is given.
        hourly_from = daily_from = -(2**62)
        if retention is not None and mode != "range":
            hourly_from = _floor(
                now_us - retention.hourly_snapshots_days * store.US_PER_DAY, store.US_PER_HOUR
            )
            daily_from = _floor(now_us - retention.daily_snapshots_days * store.US_PER_DAY, store.US_PER_DAY)
        if mode == "rebuild":
            hours = {f.hour_us for f in listing if f.hour_us >= hourly_from}
            days = {_floor(f.hour_us, store.US_PER_DAY) for f in listing if f.hour_us >= daily_from}
            # buckets with a snapshot but no events any more
            hours |= {h for h in _existing_buckets(rootp, "hourly") if h >= hourly_from}
            days |= {d for d in _existing_buckets(rootp, "daily") if d >= daily_from}
        elif mode == "range":
            first = min((f.hour_us for f in listing), default=now_us)
            lo = _floor(store.to_us(since) if since is not None else first, store.US_PER_HOUR)
            hi_raw = store.to_us(until) if until is not None else now_us + 1
            hi = -(-hi_raw // store.US_PER_HOUR) * store.US_PER_HOUR
            # Only buckets with events or with a snapshot file have anything to do (an
            # empty bucket without a file stays without one): take those in the range
            # rather than every hour of it (--since 1970-01-01 would be ~500,000 hours).
            # A day touched by the range is recomputed whole, as before.
            known_hours = {f.hour_us for f in listing} | _existing_buckets(rootp, "hourly")
            known_days = {_floor(h, store.US_PER_DAY) for h in known_hours}
            known_days |= _existing_buckets(rootp, "daily")
            hours = {h for h in known_hours if lo <= h < hi}
            days = {d for d in known_days if d + store.US_PER_DAY > lo and d < hi}
            log.info(
                "recomputing the %d hourly and %d daily buckets of the range with events or snapshots",
                len(hours),
                len(days),
            )
        else:
            hours = {f.hour_us for f in new}
            days = {_floor(h, store.US_PER_DAY) for h in hours}
        hours = {h for h in hours if h >= hourly_from}
        days = {d for d in days if d >= daily_from}
        # Cleanup drops whole days of events, oldest first, and keeps snapshots longer
        # (90 days of daily snapshots against 30 of events): a bucket before the oldest
        # day that still has events is the only record of its traffic. Recomputing it
        # would find no events and delete it, so it is left as it is.
        oldest = min((_floor(f.hour_us, store.US_PER_DAY) for f in listing), default=None)
        past_events = {h for h in hours if oldest is None or h < oldest}
        past_events_days = {d for d in days if oldest is None or d < oldest}
        if past_events or past_events_days:
            hours -= past_events
            days -= past_events_days
            result.kept_past_events = len(past_events) + len(past_events_days)
            log.info(
                "%d hourly and %d daily snapshots before the oldest events (%s) left as they are",
                len(past_events),
                len(past_events_days),
                "none left" if oldest is None else store.from_us(oldest).date().isoformat(),
            )

        by_day: dict[int, list[_EventFile]] = {}
        for f in listing:
            by_day.setdefault(_floor(f.hour_us, store.US_PER_DAY), []).append(f)
        con = _connect(rootp)
        writer = _Writer()
        try:
            _prepare(con)
            chunks = _receipt_chunks(rootp)
            full_index = mode == "rebuild" or not chunks
            if not full_index:
                # read into memory once when it is looked up more than a few times
                receipts = _receipts_view(con, chunks, load=len(_day_chunks(sorted(days))) > 1)
                if new:  # hours aggregated before whose latency the new receipts change
                    late = _late_receipt_hours(con, rootp, [f.file for f in new], [f.file for f in listing])
                    late = {h for h in late if _floor(h, store.US_PER_DAY) in by_day}
                    hours |= {h for h in late if h >= hourly_from}
                    days |= {d for d in (_floor(h, store.US_PER_DAY) for h in late) if d >= daily_from}
                    con.execute("INSERT INTO _vp_rc SELECT artifact_id, first_us FROM _vp_new_rc")
            day_list = sorted(days | {_floor(h, store.US_PER_DAY) for h in hours})
            if full_index:  # the index must cover every event file: scan the days not computed
                others = [f.file for d, fs in by_day.items() if d not in set(day_list) for f in fs]
                if others:
                    retry_vanished(
                        lambda n: con.execute(
                            f"INSERT INTO _vp_rc {_receipts_sql(_relisted_str(others) if n else others)}"
                        ),
                        what="aggregate",
                    )
                receipts = "_vp_rc"
            con.execute("CREATE OR REPLACE TEMP TABLE _vp_missing (artifact_id VARCHAR, hour BIGINT)")
            created = store.to_us(now)
            # Receipts found by the run itself (full_index) grow chunk by chunk; the
            # index's (plus the new files') stay as they are: group those once.
            grouped = not full_index and len(_day_chunks(day_list)) > 1
            completion_receipts = _earliest_receipts(con, receipts) if grouped else receipts

            # A chunk's hourly and daily rows are computed from small tables derived
            # from its events, each on its own cursor, while this connection loads the
            # next chunk: that phase is mostly single-threaded queries over ~100k-row
            # tables, so overlapping keeps both cores busy (one chunk in flight at most).
            rows_pool = ThreadPoolExecutor(max_workers=2)
            in_flight: list[tuple[str, dict[PeriodType, Future[pa.Table]], dict[PeriodType, list[int]]]] = []

            def finish() -> None:
                while in_flight:
                    tag, futures, want = in_flight.pop()
                    try:
                        for period, future in futures.items():
                            written, removed = _write_buckets(
                                rootp, period, future.result(), want[period], writer
                            )
                            if period == "hourly":
                                result.hourly_written += written
                            else:
                                result.daily_written += written
                            result.removed += removed
                    finally:
                        wait(futures.values())
                        _drop_inputs(con, tag)

            def compute(chunk: list[int], tag: str) -> None:
                lo, hi = chunk[0], chunk[-1] + store.US_PER_DAY
                files = [f for day in chunk for f in by_day.get(day, [])]
                _reading(files, lambda fs: _load_snapshot_events(con, fs, lo, hi, receipts=full_index))
                _completions(con, completion_receipts, f"_vp_done_{tag}", first=grouped)
                con.execute(
                    f"INSERT INTO _vp_missing SELECT DISTINCT artifact_id, ts - ts % {store.US_PER_HOUR} "
                    f"FROM _vp_done_{tag} WHERE e2e_ms IS NULL AND artifact_id IS NOT NULL"
                )
                result.events_scanned += _scalar_int(con, "SELECT count(*) FROM _vp_ev")
                want: dict[PeriodType, list[int]] = {
                    "hourly": sorted(h for h in hours if lo <= h < hi),
                    "daily": [day for day in chunk if day in days],
                }
                periods: list[PeriodType] = [period for period, buckets in want.items() if buckets]
                _snapshot_inputs(con, tag)
                finish()  # the previous chunk's rows
                futures = {p: rows_pool.submit(_rows_on, _cursor(con), tag, p, created) for p in periods}
                in_flight.append((tag, futures, want))

            try:
                done_days = 0
                for i, chunk in enumerate(_day_chunks(day_list)):
                    compute(chunk, f"c{i}")
                    done_days += len(chunk)
                    if progress is not None:
                        progress(done_days, len(day_list))
                finish()
                # every bucket written before a redo may write the same files again
                writer.drain()
                # a receipt found in a day computed later (receipt after completion): redo
                # the completion's hour and day
                redo = {
                    int(h)
                    for (h,) in con.execute(
                        "SELECT DISTINCT hour FROM _vp_missing WHERE artifact_id IN (SELECT artifact_id FROM _vp_rc)"
                    ).fetchall()
                }
                redo_hours = {h for h in redo if h >= hourly_from}
                redo_whole = {d for d in (_floor(h, store.US_PER_DAY) for h in redo) if d >= daily_from}
                hours |= redo_hours
                days |= redo_whole
                redo_days = sorted(redo_whole | {_floor(h, store.US_PER_DAY) for h in redo_hours})
                for i, chunk in enumerate(_day_chunks(redo_days)):
                    compute(chunk, f"r{i}")
                finish()
                writer.drain()
            finally:
                rows_pool.shutdown(wait=True)
            _save_orphans(con, rootp, receipts, loaded=set(day_list) | set(redo_days), present=set(by_day))
            _save_receipts(con, rootp, full=full_index)
            _refresh_index(rootp, listing, con, index_progress)
        finally:
            writer.close()
            con.close()

        if mode == "range":
            done = {f.rel for f in new if f.hour_us in hours}
            state.seen = (state.seen & present) | done | settled
        else:
            state.seen = present
        state.save(rootp)
    result.seconds = time.perf_counter() - started
    log.info(
        "%s run: %d events read; %d hourly and %d daily snapshot files written, %d removed, in %.1f s",
        mode,
        result.events_scanned,
        result.hourly_written,
        result.daily_written,
        result.removed,
        result.seconds,
    )
    return result


def _refresh_index(
    root: Path,
    listing: Sequence[_EventFile],
    con: duckdb.DuckDBPyConnection | None,
    progress: Progress | None = None,
) -> None:
    """Bring the artifact index (:mod:`voicepipe_obs.artifact_index`) up to date
    with ``listing``, on ``con`` (None: one is opened only if there is work)."""
    from . import artifact_index

    def refresh(files: Sequence[_EventFile]) -> None:
        hours: dict[int, list[Path]] = {}
        for f in files:
            hours.setdefault(f.hour_us, []).append(f.path)
        artifact_index.refresh(root, hours, con=con, progress=progress)

    _reading(listing, refresh)


def _day_chunks(days: Sequence[int]) -> list[list[int]]:
    """Runs of consecutive days, at most :data:`CHUNK_DAYS` long (one query each:
    fewer, larger queries are faster; the cap bounds memory)."""
    chunks: list[list[int]] = []
    for day in sorted(days):
        if chunks and day == chunks[-1][-1] + store.US_PER_DAY and len(chunks[-1]) < CHUNK_DAYS:
            chunks[-1].append(day)
        else:
            chunks.append([day])
    return chunks


def _scalar_int(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    rows = con.execute(sql).fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def _bucket_path(root: Path, period_type: str, start_us: int) -> Path:
    when = store.from_us(start_us)
    name = f"hourly-{when:%Y%m%dT%H}.parquet" if period_type == "hourly" else f"daily-{when:%Y%m%d}.parquet"
    return root / _AREA[period_type] / f"date={when:%Y-%m-%d}" / name


def _existing_buckets(root: Path, period_type: str) -> set[int]:
    out = set()
    for path in store.list_parquet(root, _AREA[period_type]):
        stem = path.stem.split("-", 1)[-1]
        try:
            fmt = "%Y%m%dT%H" if period_type == "hourly" else "%Y%m%d"
            out.add(store.to_us(dt.datetime.strptime(stem, fmt).replace(tzinfo=_UTC)))
        except ValueError:
            continue
    return out


def _write_buckets(
    root: Path,
    period_type: PeriodType,
    rows: pa.Table,
    buckets: Sequence[int],
    writer: _Writer,
) -> tuple[int, int]:
    """Submit ``rows`` (snapshot rows ordered by period_start, see :func:`_as_snapshot`)
    to ``writer`` as one file per requested bucket (complete once ``writer.drain()``
    returns); remove the file of a requested bucket that has no rows. Returns
    (written, removed)."""
    # rows come ordered by bucket: one zero-copy slice per bucket
    spans: dict[int, tuple[int, int]] = {}
    for i, start in enumerate(rows["period_start"].cast("int64").to_pylist()):
        first, _ = spans.get(start, (i, i))
        spans[start] = (first, i + 1)
    writes = []
    removed = 0
    for bucket in buckets:
        path = _bucket_path(root, period_type, bucket)
        lo, hi = spans.get(bucket, (0, 0))
        part = rows.slice(lo, hi - lo)
        if part.num_rows == 0:
            if path.exists():
                path.unlink()
                removed += 1
            continue
        writes.append((path, part))
    for path, part in writes:
        writer.submit(path, part)
    return len(writes), removed


class _Writer:
    """Snapshot files written by a few background threads (Parquet encoding and
    fsync release the GIL), so a run computes the next chunk meanwhile.
    :meth:`drain` waits for every file submitted so far and re-raises a failure."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=WRITERS)
        self._futures: list[Future[Path]] = []

    def submit(self, path: Path, table: pa.Table) -> None:
        # statistics on the keys only (the file is the bucket, nobody prunes on a
        # metric); snappy: a third of zstd's CPU on files this small, and a rebuild
        # writes hundreds; no dictionaries (an hour's organisations are all distinct:
        # ~10% less CPU, same size)
        self._futures.append(
            self._pool.submit(
                store.write_table,
                path,
                table,
                statistics=SNAPSHOT_KEYS,
                compression="snappy",
                dictionary=False,
            )
        )

    def drain(self) -> None:
        futures, self._futures = self._futures, []
        for future in futures:
            future.result()

    def close(self) -> None:
        """Wait for the threads (without raising: after a failure elsewhere)."""
        self._pool.shutdown(wait=True)


# ---------------------------------------------------------------- window queries


#: The metrics a range cannot combine from the rows of its buckets (snapshots keep
#: neither the values a percentile needs nor the counts behind these averages and
#: rates): :func:`window_latency` computes them over the raw events.
LATENCY_METRICS: Final = tuple(
    name
    for name in METRIC_NAMES
    if name.startswith(("p50_", "p95_", "p99_"))
    or (name.startswith("avg_") and name != "avg_cost_per_artifact")
    or (name.endswith("_failure_rate") and name != "overall_failure_rate")
)
#: The events :data:`LATENCY_METRICS` read (plus artifact_received, for receipts).
_LATENCY_STAGE_TYPES: Final = tuple(
    sorted(
        {ev for evs in STAGE_COMPLETION_EVENTS.values() for ev in evs} | set(STAGE_FAILURE_EVENTS.values())
    )
)


def _window_table(
    con: duckdb.DuckDBPyConnection, root: Path, lo_us: int, hi_us: int, organization_id: str | None
) -> str:
    """:func:`_window_table_once`, listing again when a file vanished under it."""
    return retry_vanished(
        lambda _n: _window_table_once(con, root, lo_us, hi_us, organization_id), what="window query"
    )


def _window_table_once(
    con: duckdb.DuckDBPyConnection, root: Path, lo_us: int, hi_us: int, organization_id: str | None
) -> str:
    """Table _vp_src: the deduplicated events of [lo, hi) (of one organisation if
    given) with e2e_ms; receipts from the aggregate index, the window itself and raw
    files up to :data:`RECEIPT_LOOKBACK` before it."""
    _prepare(con)
    files = vetted_files(root, since=store.from_us(lo_us), until=store.from_us(hi_us))
    _load_events(con, files, lo_us, hi_us)
    before = vetted_files(root, since=store.from_us(lo_us) - RECEIPT_LOOKBACK, until=store.from_us(lo_us))
    if before:
        con.execute(f"INSERT INTO _vp_rc {_receipts_sql(before)}")
    if organization_id is not None:
        con.execute("DELETE FROM _vp_ev WHERE organization_id IS DISTINCT FROM ?", [organization_id])
    _with_latency(con, _receipts_view(con, _receipt_chunks(root)))
    return "_vp_src"


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def window_metrics(
    root: str | os.PathLike[str],
    since: dt.datetime,
    until: dt.datetime,
    *,
    organization_id: str | None = None,
) -> list[dict[str, Any]]:
    """Every snapshot metric over the raw events in [since, until), with the same
    definitions as the snapshots: the all-organisations row first
    (``organization_id`` None), then one row per organisation with events. Each row
    has the snapshot columns (``period_type`` 'window', ``created_at`` = ``until``).
    Empty list: no events.

    ``organization_id`` restricts the events to one organisation (the first row is
    then that organisation's figures under ``organization_id`` None, then its own).
    End-to-end latency looks receipts up in the aggregate receipts index and in raw
    files up to 6 hours before ``since``.
    """
    lo, hi = store.to_us(since), store.to_us(until)
    if lo >= hi:
        raise UsageError("the window's start must be before its end")
    con = _connect()
    try:
        table = _window_table(con, Path(root), lo, hi, organization_id)
        src = f"(SELECT *, {lo} AS bucket FROM {table})"
        result = _as_snapshot(
            con.sql(_snapshot_sql(metrics_sql(src), "window", str(hi), hi)).to_arrow_table()
        )
    finally:
        con.close()
    return _rows(result)


def _indexed_files(root: Path) -> set[str]:
    """Event files (relative names) whose receipts the receipts index holds: those
    aggregated before (a run indexes its new files' receipts before recording them),
    none when the index is missing (cleanup resets it until the next run)."""
    return _State.load(root).seen if _receipt_chunks(root) else set()


def _load_latency_events(
    con: duckdb.DuckDBPyConnection, root: Path, lo_us: int, hi_us: int, organization_id: str | None
) -> None:
    """Temp table _vp_lat: the deduplicated stage completion and failure events (of
    ``organization_id`` if given) and artifact_completed events of [lo, hi), with the
    columns :data:`LATENCY_METRICS` read (artifact_id on completions alone: strings
    are most of what a load costs); into _vp_rc the receipts that the receipts index
    may lack, as :func:`_window_table` finds them (the window and
    :data:`RECEIPT_LOOKBACK` before it), read only from files not indexed yet.

    As in :func:`_load_snapshot_events`, an hour that is one compacted file holds no
    duplicates (an event's copies share its hour) and is not checked."""
    files = vetted_files(root, since=store.from_us(lo_us), until=store.from_us(hi_us))
    per_hour: dict[Path, list[Path]] = {}
    for f in files:
        per_hour.setdefault(f.parent, []).append(f)
    clean: list[Path] = []
    mixed: list[Path] = []
    for group in per_hour.values():
        if compacted_alone(group):
            clean.append(group[0])
        else:
            mixed.extend(group)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _vp_lat (event_id VARCHAR, event_type VARCHAR, artifact_id VARCHAR, "
        "organization_id VARCHAR, duration_ms DOUBLE, confidence_score DOUBLE, ts BIGINT)"
    )
    span = f"timestamp >= make_timestamptz({int(lo_us)}) AND timestamp < make_timestamptz({int(hi_us)})"
    org = "" if organization_id is None else " AND organization_id = $org"
    params = {} if organization_id is None else {"org": organization_id}
    # two scans: one reading artifact_id on every row measured slower than both
    for group, event_id in ((mixed, "event_id"), (clean, "NULL")):
        if not group:
            continue
        src = _files_sql(group)
        con.execute(
            f"INSERT INTO _vp_lat SELECT {event_id}, event_type, NULL, organization_id, duration_ms, "
            f"confidence_score, epoch_us(timestamp) FROM {src} "
            f"WHERE {span} AND event_type IN {sql_list(_LATENCY_STAGE_TYPES)}{org}",
            params,
        )
        con.execute(
            f"INSERT INTO _vp_lat SELECT {event_id}, event_type, artifact_id, organization_id, NULL, NULL, "
            f"epoch_us(timestamp) FROM {src} WHERE {span} AND event_type = 'artifact_completed'{org}",
            params,
        )
        if event_id != "NULL":
            drop_duplicates(con, "_vp_lat")
    indexed = _indexed_files(root)
    before = vetted_files(root, since=store.from_us(lo_us) - RECEIPT_LOOKBACK, until=store.from_us(lo_us))
    unindexed = [f for f in (*before, *files) if f.relative_to(root).as_posix() not in indexed]
    if unindexed:
        con.execute(f"INSERT INTO _vp_rc {_receipts_sql(unindexed)}")


def window_latency(
    root: str | os.PathLike[str],
    since: dt.datetime,
    until: dt.datetime,
    *,
    organization_id: str | None = None,
    org_metrics: Sequence[str] = LATENCY_METRICS,
) -> list[dict[str, Any]]:
    """:data:`LATENCY_METRICS` — end-to-end latency (avg, p50, p95, p99), each timed
    stage's average and p95 latency and failure rate, the average confidences — over
    the raw events in [since, until), exactly as :func:`window_metrics` computes them
    (same SQL, same receipts), reading only the events they need: the all-organisations
    row first (``organization_id`` None), then one per organisation with such events.
    Empty list: no such events.

    For ranges whose counts and sums come from daily snapshots: a percentile over
    several buckets is not a combination of the buckets' percentiles, and snapshots
    keep no count behind these averages and rates. ``org_metrics``: the columns of
    the per-organisation rows (fewer is faster: quantiles per organisation are most
    of the cost; ``()`` for no such rows). Over a month of 10 million events this
    reads about half of them, against all of them for :func:`window_metrics`."""
    lo, hi = store.to_us(since), store.to_us(until)
    if lo >= hi:
        raise UsageError("the window's start must be before its end")
    unknown = set(org_metrics) - set(LATENCY_METRICS)
    if unknown:
        raise UsageError(f"not a latency metric: {', '.join(sorted(unknown))}")
    rootp = store.local_root(root)
    con = _connect()
    try:
        _prepare(con)
        _load_latency_events(con, rootp, lo, hi, organization_id)
        _first_receipts(con, _receipts_view(con, _receipt_chunks(rootp)), "_vp_lat")
        # e2e_ms on the completions as _with_latency adds it; the other rows are not
        # copied (a view puts them together)
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _vp_lat_done AS
            SELECT e.*, (e.ts - r.first_us) / 1000.0 AS e2e_ms, 0 AS bucket FROM _vp_lat e
            LEFT JOIN _vp_first r ON r.artifact_id = e.artifact_id WHERE e.event_type = 'artifact_completed'
            """
        )
        con.execute(
            "CREATE OR REPLACE TEMP VIEW _vp_lat_src AS SELECT *, NULL::DOUBLE AS e2e_ms, 0 AS bucket "
            "FROM _vp_lat WHERE event_type <> 'artifact_completed' UNION ALL SELECT * FROM _vp_lat_done"
        )
        scope = metrics_sql("_vp_lat_src", names=LATENCY_METRICS, per_org=False)
        rows = _rows(con.sql(f"SELECT * EXCLUDE (bucket) FROM ({scope})").to_arrow_table())
        if rows and org_metrics and organization_id is None:
            # end-to-end figures read the completions alone
            e2e_only = all("_end_to_end_" in name for name in org_metrics)
            per_org = metrics_sql("_vp_lat_done" if e2e_only else "_vp_lat_src", names=org_metrics)
            found = con.sql(
                f"SELECT * EXCLUDE (bucket) FROM ({per_org}) WHERE organization_id IS NOT NULL"
            ).to_arrow_table()
            rows += _rows(found)
        elif rows and org_metrics:
            rows.append({"organization_id": organization_id} | {k: rows[0][k] for k in org_metrics})
    finally:
        con.close()
    return rows


def live_metrics(
    root: str | os.PathLike[str],
    *,
    now: dt.datetime,
    minutes: float = 30,
    organization_id: str | None = None,
) -> dict[str, Any]:
    """The snapshot metrics over the last ``minutes`` before ``now`` for all
    organisations (or one): a dict with every metric column; counts are 0 and ratios,
    averages and percentiles None when there were no events."""
    since = now - dt.timedelta(minutes=minutes)
    rows = window_metrics(root, since, now, organization_id=organization_id)
    if rows:
        row = rows[0]
        row["organization_id"] = organization_id
        return row
    return empty_metrics(since, now, organization_id)


def empty_metrics(
    since: dt.datetime, until: dt.datetime, organization_id: str | None = None
) -> dict[str, Any]:
    """A metrics row for a period without events: counts and totals 0, the rest None."""
    row: dict[str, Any] = {
        "period_type": "window",
        "period_start": since,
        "period_end": until,
        "organization_id": organization_id,
        "created_at": None,
    }
    for name, kind in METRICS:
        row[name] = 0 if kind == "i64" else (0.0 if name == "total_ai_cost" else None)
    return row


def organization_breakdown(
    root: str | os.PathLike[str],
    since: dt.datetime,
    until: dt.datetime,
    *,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Per organisation over [since, until): volume (artifacts received, completed,
    failed), failure rate, p95 end-to-end latency and cost; busiest first."""
    rows = [r for r in window_metrics(root, since, until) if r["organization_id"] is not None]
    out = [
        {
            "organization_id": r["organization_id"],
            "artifacts_received": r["artifacts_received"],
            "artifacts_completed": r["artifacts_completed"],
            "artifacts_failed": r["artifacts_failed"],
            "failure_rate": r["overall_failure_rate"],
            "p95_end_to_end_latency_ms": r["p95_end_to_end_latency_ms"],
            "avg_end_to_end_latency_ms": r["avg_end_to_end_latency_ms"],
            "total_ai_cost": r["total_ai_cost"],
            "avg_cost_per_artifact": r["avg_cost_per_artifact"],
        }
        for r in rows
    ]
    out.sort(key=lambda r: (-r["artifacts_received"], -r["artifacts_completed"], r["organization_id"]))
    return out[:limit] if limit is not None else out


@dataclass(frozen=True)
class StageStats:
    """One pipeline stage over a time range."""

    stage: str
    started: int
    completed: int
    failed: int
    failure_rate: float | None
    avg_latency_ms: float | None
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p99_latency_ms: float | None
    top_errors: list[tuple[str, int]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_breakdown(
    root: str | os.PathLike[str],
    since: dt.datetime,
    until: dt.datetime,
    *,
    organization_id: str | None = None,
    top_errors: int = 5,
) -> list[StageStats]:
    """Per timed stage over [since, until): counts of started / completed / failed
    events, failure rate (failed / (completed + failed), None without either),
    latency avg/p50/p95/p99 over the completion events' duration_ms, and the most
    frequent error codes of the failure events (code, count), most frequent first."""
    lo, hi = store.to_us(since), store.to_us(until)
    if lo >= hi:
        raise UsageError("the window's start must be before its end")
    roles = []
    for stage in TIMED_STAGES:
        roles.append((STAGE_STARTED_EVENTS[stage], stage, "started"))
        roles += [(ev, stage, "completed") for ev in STAGE_COMPLETION_EVENTS[stage]]
        roles.append((STAGE_FAILURE_EVENTS[stage], stage, "failed"))
    values = ", ".join(f"({sql_str(e)}, {sql_str(s)}, {sql_str(r)})" for e, s, r in roles)
    con = _connect()
    try:
        table = _window_table(con, Path(root), lo, hi, organization_id)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _vp_stage AS SELECT w.*, m.stage, m.role FROM {table} w "
            f"JOIN (VALUES {values}) m(event_type, stage, role) USING (event_type)"
        )
        stats = con.execute(
            """
            SELECT stage,
              count(*) FILTER (WHERE role = 'started'),
              count(*) FILTER (WHERE role = 'completed'),
              count(*) FILTER (WHERE role = 'failed'),
              favg(duration_ms) FILTER (WHERE role = 'completed'),
              quantile_cont(duration_ms, [0.5, 0.95, 0.99]) FILTER (WHERE role = 'completed')
            FROM _vp_stage GROUP BY stage
            """
        ).fetchall()
        errors = con.execute(
            """
            SELECT stage, coalesce(error_code, '(none)') AS code, count(*) AS n
            FROM _vp_stage WHERE role = 'failed' GROUP BY ALL ORDER BY stage, n DESC, code
            """
        ).fetchall()
    finally:
        con.close()
    by_stage = {row[0]: row for row in stats}
    errs: dict[str, list[tuple[str, int]]] = {}
    for stage, code, n in errors:
        if len(errs.setdefault(stage, [])) < top_errors:
            errs[stage].append((str(code), int(n)))
    out = []
    for stage in TIMED_STAGES:
        row = by_stage.get(stage)
        started, completed, failed = (int(row[1]), int(row[2]), int(row[3])) if row else (0, 0, 0)
        q = row[5] if row and row[5] is not None else [None, None, None]
        out.append(
            StageStats(
                stage=stage,
                started=started,
                completed=completed,
                failed=failed,
                failure_rate=failed / (completed + failed) if completed + failed else None,
                avg_latency_ms=row[4] if row else None,
                p50_latency_ms=q[0],
                p95_latency_ms=q[1],
                p99_latency_ms=q[2],
                top_errors=errs.get(stage, []),
            )
        )
    return out


_ALL: Final = object()


def read_snapshots(
    root: str | os.PathLike[str],
    period_type: PeriodType,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    organization_id: str | object | None = _ALL,
) -> list[dict[str, Any]]:
    """Snapshot rows with period_start in [since, until), oldest first (all-orgs row
    before the organisations within a period). ``organization_id``: omit for every
    row, None for the all-organisations rows only, a string for one organisation.
    Missing buckets mean no traffic (see :func:`empty_metrics`)."""
    if period_type not in _AREA:
        raise UsageError(f"period_type must be 'hourly' or 'daily', not {period_type!r}")
    return retry_vanished(
        lambda _n: _read_snapshots(Path(root), period_type, since, until, organization_id),
        what="snapshot read",
    )


def _read_snapshots(
    root: Path,
    period_type: PeriodType,
    since: dt.datetime | None,
    until: dt.datetime | None,
    organization_id: str | object | None,
) -> list[dict[str, Any]]:
    files = vetted_files(root, _AREA[period_type], since=since, until=until)
    if not files:
        return []
    where = ["true"]
    params: list[Any] = []
    if since is not None:
        where.append("period_start >= ?")
        params.append(since)
    if until is not None:
        where.append("period_start < ?")
        params.append(until)
    if organization_id is None:
        where.append("organization_id IS NULL")
    elif organization_id is not _ALL:
        where.append("organization_id = ?")
        params.append(organization_id)
    con = _connect()
    try:
        table = con.sql(
            f"SELECT * FROM {_files_sql(files, by_name=True)} WHERE {' AND '.join(where)} "
            "ORDER BY period_start, organization_id NULLS FIRST",
            params=params,
        ).to_arrow_table()
    finally:
        con.close()
    return _rows(_conform(table))


def _conform(table: pa.Table) -> pa.Table:
    """Snapshot rows read from files of any snapshot version → the current schema
    (a column a file predates is NULL)."""
    import pyarrow as pa

    schema = snapshot_schema()
    arrays = [
        table[f.name] if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema
    ]
    return pa.Table.from_arrays(arrays, names=schema.names).cast(schema)


# ------------------------------------------------------------------------- views


def register_views(con: duckdb.DuckDBPyConnection, root: Path, *, live: bool = False) -> None:
    """Create the snapshots_hourly and snapshots_daily views (empty and typed when
    there are no snapshot files yet, so reports and alerts can always query them;
    ``live``: see :func:`voicepipe_obs.query.connect`)."""
    schema = snapshot_schema()
    empty_view(con, "_voicepipe_empty_snapshots", schema)
    for view, area in (
        ("snapshots_hourly", store.SNAPSHOTS_HOURLY),
        ("snapshots_daily", store.SNAPSHOTS_DAILY),
    ):
        src = area_source(
            root, area, empty="_voicepipe_empty_snapshots", columns=schema.names, live=live, by_name=True
        )
        con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {src}")
