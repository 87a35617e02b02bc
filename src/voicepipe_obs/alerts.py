"""Alerts: the rules of DESIGN §7 (plus budget and stuck artifacts), their
evaluation at a given instant, and the alert lifecycle (raise, escalate, resolve,
acknowledge) recorded as an append-only log under ``<root>/alerts/``.

Alert state lives in the log: the ``alert_log`` view holds every record, the
``alerts`` view derives each alert's current state from it. The one exception is
what is *pending* — raises and resolutions held back by a rule's ``for_minutes`` /
``keep_firing_minutes`` — kept by :mod:`voicepipe_obs.damping` in
``_state/pending.json``.

:func:`run_check` is what ``voicepipe check`` runs: under a lock it evaluates the
rules, appends the lifecycle changes, then delivers pending notifications (through
``notify.py``) and records each attempt, so a failed delivery is retried on the
next check.

Rules read raw events through ``query.py`` (time-pruned file lists for windowed
rules) and history through the ``snapshots_daily`` view. Every function takes
``now`` explicitly. This module never writes event or snapshot files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from zoneinfo import ZoneInfo

import duckdb

from . import artifact_index, damping, store
from .config import Notifier, Settings, parse_hours
from .errors import AlertError, BusyError, NotFoundError, StoreError, UsageError
from .query import area_source, empty_view, parquet_scan, vetted_files
from .sql import sql_list
from .timeparse import EARLIEST

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

log = logging.getLogger("voicepipe_obs.alerts")

Severity = Literal["warning", "critical"]
SEVERITY_RANK: Final = {"warning": 1, "critical": 2}
#: Rule names, in evaluation order.
RULES: Final = (
    "failure_rate",
    "latency",
    "queue_depth",
    "disambiguation_backlog",
    "circuit_breaker",
    "inactivity",
    "budget",
    "stuck",
)
#: Alert-log record types. ``notifier_added`` marks the first check that ran with
#: a notifier configured: its deliveries start there (see :func:`send_notifications`).
RECORD_TYPES: Final = ("raised", "escalated", "resolved", "acknowledged", "notification", "notifier_added")
NOTIFY_ON: Final = ("raised", "escalated", "resolved")
OVERALL: Final = "all"
LOCK_FILE: Final = "check.lock"
#: The last recording check's time and status (``_state/last_check.json``): how a
#: report tells "no check has run" from "checks ran and found nothing to raise".
LAST_CHECK_FILE: Final = "last_check.json"

_UTC = dt.timezone.utc
#: How far an explicit ``now`` may run ahead of the system clock when a check
#: records (clocks of the machines sharing a data root differ a little).
MAX_CLOCK_SKEW: Final = dt.timedelta(minutes=5)

#: (name, kind) of an alert-log record, in file order.
LOG_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("record_id", "str"),
    ("record_type", "str"),
    ("timestamp", "ts"),
    ("alert_id", "str"),
    ("rule", "str"),
    ("scope", "str"),
    ("organization_id", "str"),
    ("severity", "str"),
    ("previous_severity", "str"),
    ("value", "f64"),
    ("threshold", "f64"),
    ("summary", "str"),
    ("description", "str"),
    ("started_at", "ts"),
    ("actor", "str"),
    ("comment", "str"),
    ("notifier", "str"),
    ("ref_record_id", "str"),
    ("ref_record_type", "str"),
    ("delivered", "bool"),
    ("attempts", "i32"),
    ("error", "str"),
    ("host", "str"),
)
LOG_COLUMN_NAMES: Final = tuple(n for n, _ in LOG_COLUMNS)


def log_schema() -> pa.Schema:
    """The Arrow schema of an alert-log file."""
    import pyarrow as pa

    types = {
        "str": pa.string(),
        "ts": pa.timestamp("us", tz="UTC"),
        "f64": pa.float64(),
        "i32": pa.int32(),
        "bool": pa.bool_(),
    }
    return pa.schema(
        [
            pa.field(n, types[k], nullable=n not in ("record_id", "record_type", "timestamp"))
            for n, k in LOG_COLUMNS
        ]
    )


# ----------------------------------------------------------------------- views

#: Current state per alert, derived from the log.
ALERTS_SQL: Final = """
SELECT
  alert_id,
  any_value(rule) AS rule,
  any_value(scope) AS scope,
  any_value(organization_id) AS organization_id,
  CASE WHEN max(timestamp) FILTER (WHERE record_type = 'resolved') IS NULL
       THEN 'active' ELSE 'resolved' END AS status,
  arg_max(severity, timestamp) FILTER (WHERE record_type IN ('raised', 'escalated')) AS severity,
  min(timestamp) FILTER (WHERE record_type = 'raised') AS raised_at,
  max(timestamp) FILTER (WHERE record_type = 'escalated') AS escalated_at,
  max(timestamp) FILTER (WHERE record_type = 'resolved') AS resolved_at,
  arg_max(actor, timestamp) FILTER (WHERE record_type = 'acknowledged') AS acknowledged_by,
  max(timestamp) FILTER (WHERE record_type = 'acknowledged') AS acknowledged_at,
  arg_max_null(comment, timestamp) FILTER (WHERE record_type = 'acknowledged') AS ack_comment,
  arg_max(summary, timestamp) FILTER (WHERE record_type IN ('raised', 'escalated')) AS summary,
  arg_max(description, timestamp) FILTER (WHERE record_type IN ('raised', 'escalated')) AS description,
  arg_max(value, timestamp) FILTER (WHERE record_type IN ('raised', 'escalated')) AS value,
  arg_max(threshold, timestamp) FILTER (WHERE record_type IN ('raised', 'escalated')) AS threshold,
  count(*) FILTER (WHERE record_type = 'notification' AND delivered) AS notifications_sent,
  count(*) FILTER (WHERE record_type = 'notification' AND NOT delivered) AS notifications_failed,
  max(timestamp) AS updated_at
FROM alert_log
WHERE alert_id IS NOT NULL
GROUP BY alert_id
"""


def register_views(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    *,
    live: bool = False,
    extra: Sequence[dict[str, Any]] = (),
) -> None:
    """Create the ``alert_log`` view (every record, typed and empty when there are
    no files) and the ``alerts`` view (current state per alert); ``live``: see
    :func:`voicepipe_obs.query.connect`. ``extra`` records (not written anywhere)
    are added to the log as if they had been: ``check --dry-run`` shows the state
    a check would leave."""
    import pyarrow as pa

    empty_view(con, "_voicepipe_empty_alert_log", log_schema())
    if extra:
        con.register("_voicepipe_extra_alert_log", pa.Table.from_pylist(list(extra), schema=log_schema()))
    cols = ", ".join(LOG_COLUMN_NAMES)
    src = area_source(
        root,
        store.ALERTS,
        empty="_voicepipe_empty_alert_log",
        columns=LOG_COLUMN_NAMES,
        live=live,
        by_name=True,
    )
    if extra:
        src = f"(SELECT {cols} FROM {src} UNION ALL SELECT {cols} FROM _voicepipe_extra_alert_log)"
    con.execute(f"CREATE OR REPLACE VIEW alert_log AS SELECT DISTINCT ON (record_id) {cols} FROM {src}")
    con.execute(f"CREATE OR REPLACE VIEW alerts AS {ALERTS_SQL}")


# -------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    """A rule's condition holding for one scope at evaluation time."""

    rule: str
    organization_id: str | None
    severity: Severity
    value: float | None
    threshold: float | None
    summary: str
    description: str = ""

    @property
    def scope(self) -> str:
        """``all`` or ``org:<id>`` (see :func:`scope_of`)."""
        return scope_of(self.organization_id)

    @property
    def key(self) -> tuple[str, str]:
        return self.rule, self.scope


@dataclass
class Evaluation:
    """The findings of every enabled rule at ``now``, and notes on rules that had
    nothing to judge (no history, outside expected hours, no budget)."""

    now: dt.datetime
    findings: list[Finding] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: rules that judge a scope only on a minimum sample → (the scopes they judged,
    #: whether they judge organisations): an active alert of a scope they could not
    #: judge this time is kept as it is, not resolved for lack of data
    sampled: dict[str, tuple[set[str], bool]] = field(default_factory=dict)

    def unjudged(self, rule: str, scope: str) -> bool:
        """Whether ``rule`` was evaluated but could not judge ``scope`` (too few
        finished artifacts): its alert, or a wait for one, stays as it is."""
        if rule not in self.sampled or rule not in self.evaluated:
            return False
        judged, per_org = self.sampled[rule]
        return scope not in judged and (scope == OVERALL or per_org)


def scope_of(organization_id: str | None) -> str:
    return OVERALL if organization_id is None else f"org:{organization_id}"


def _aware(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(_UTC)
    if now.tzinfo is None:
        raise UsageError("now must be timezone-aware (e.g. 2026-01-05T10:00:00+00:00)")
    try:
        return now.astimezone(_UTC)
    except OverflowError:
        raise UsageError(f"time {now.isoformat()} is out of range") from None


def _evaluable(at: dt.datetime) -> dt.datetime:
    """``at``, or :class:`UsageError` when rules cannot be evaluated at it."""
    if at < EARLIEST:
        raise UsageError(
            f"cannot evaluate at {_iso(at)}: it is before {EARLIEST:%Y-%m-%d}, when nothing was recorded; "
            "give a time such as 2026-11-28T12:00:00Z"
        )
    return at


def require_root(root: str | os.PathLike[str] | None) -> Path:
    """The resolved data root, or :class:`StoreError` when it does not exist or is
    not a directory (a mistyped path must not read as "no alerts")."""
    rootp = store.resolve_root(root)
    problem = store.root_problem(rootp)
    if problem is not None:
        raise StoreError(
            f"data root {rootp} {problem}; check --data / $VOICEPIPE_DATA / `data` in voicepipe.toml"
        )
    return rootp


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"


def _fmt_minutes(minutes: float) -> str:
    """``75 min``, ``3 h 05 min``, ``2 d 4 h``."""
    m = int(minutes)
    if m < 120:
        return f"{m} min"
    if m < 48 * 60:
        return f"{m // 60} h {m % 60:02d} min"
    return f"{m // (24 * 60)} d {m % (24 * 60) // 60} h"


#: the event types :meth:`_Ctx.of_types` reads in one shared scan, with these columns
_RARE_TYPES: Final = (
    "circuit_breaker_closed",
    "circuit_breaker_opened",
    "entity_needs_disambiguation",
    "entity_user_resolved",
)
_RARE_COLUMNS: Final = ("organization_id", "disambiguation_count", "error_message")


class _Ctx:
    """One evaluation: the connection (full views), the root, ``now`` and settings."""

    def __init__(self, con: duckdb.DuckDBPyConnection, root: Path, settings: Settings, now: dt.datetime):
        self.con = con
        self.root = root
        self.settings = settings
        self.now = now
        self.rules = settings.alerts
        self._all_files: list[Path] | None = None
        self._in_flight = False
        self._rare = False

    def window(self, since: dt.datetime, param: str = "since") -> str:
        """A deduplicated FROM-source of events in ($<param>, $now], reading only
        the hour partitions that overlap it. Bind ``$<param>`` (= since) and ``$now``."""
        files = vetted_files(self.root, since=since, until=self.now + dt.timedelta(microseconds=1))
        return (
            f"(SELECT DISTINCT ON (event_id) * FROM {parquet_scan(files)} "
            f"WHERE timestamp > ${param} AND timestamp <= $now)"
        )

    def of_types(self, types: Sequence[str], columns: Sequence[str]) -> str:
        """A deduplicated FROM-source of every event (within retention) of these
        types up to $now, with only ``columns``: filtering and projecting before
        deduplication keeps full scans cheap. Bind ``$now``.

        The backlog and breaker rules' types come from one scan shared by both
        (:data:`_RARE_TYPES`: a few percent of the events; each full scan cost ~1 s
        on 10 million)."""
        if set(types) <= set(_RARE_TYPES) and set(columns) <= set(_RARE_COLUMNS):
            if not self._rare:
                cols = ", ".join(["event_id", "event_type", "timestamp", *_RARE_COLUMNS])
                self.con.execute(
                    f"CREATE OR REPLACE TEMP TABLE _voicepipe_rare AS SELECT DISTINCT ON (event_id) {cols} "
                    f"FROM {parquet_scan(self.all_files())} WHERE event_type IN {sql_list(_RARE_TYPES)} "
                    "AND timestamp <= $now",
                    {"now": self.now},
                )
                self._rare = True
            # (≤ $now again: what the table holds, and the callers bind it)
            return (
                f"(SELECT * FROM _voicepipe_rare WHERE event_type IN {sql_list(types)} AND timestamp <= $now)"
            )
        cols = ", ".join(["event_id", "event_type", "timestamp", *columns])
        return (
            f"(SELECT DISTINCT ON (event_id) {cols} FROM {parquet_scan(self.all_files())} "
            f"WHERE event_type IN {sql_list(types)} AND timestamp <= $now)"
        )

    def all_files(self) -> list[Path]:
        """Every readable event file (listed once per evaluation)."""
        if self._all_files is None:
            self._all_files = vetted_files(self.root)
        return self._all_files

    def in_flight(self) -> str:
        """A temp table of artifacts neither completed nor failed (queue depth and
        stuck artifacts share it): the ``artifacts`` view's rows, from the artifact
        index where it is current (:mod:`voicepipe_obs.artifact_index`; reading every
        event instead took ~9 s and ~3.5 GB on 10 million)."""
        if not self._in_flight:
            fold = (*artifact_index.STATUS_FOLD, "organization_id")
            artifact_index.open_artifacts_table(
                self.con, self.root, self.all_files(), "_voicepipe_artifacts", fold
            )
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE _voicepipe_in_flight AS "
                "SELECT artifact_id, organization_id, received_at FROM _voicepipe_artifacts "
                "WHERE received_at <= $now",
                {"now": self.now},
            )
            self.con.execute("DROP TABLE _voicepipe_artifacts")
            self._in_flight = True
        return "_voicepipe_in_flight"

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params).fetchall()


def _grouped(rows: list[tuple[Any, ...]], per_org: bool) -> Iterator[tuple[str | None, tuple[Any, ...]]]:
    """Rows of a ``GROUP BY GROUPING SETS ((), (organization_id))`` query, whose
    first two columns are grouping(organization_id) and organization_id: yields
    (org or None for overall, remaining columns), skipping per-org rows unless
    wanted and rows for events without an organisation."""
    for row in rows:
        overall, org, rest = row[0], row[1], tuple(row[2:])
        if overall:
            yield None, rest
        elif per_org and org is not None:
            yield str(org), rest


_GROUPING: Final = "GROUP BY GROUPING SETS ((), (organization_id))"


def _failure_rate(c: _Ctx, ev: Evaluation) -> None:
    r = c.rules.failure_rate
    since = c.now - dt.timedelta(minutes=r.window_minutes)
    # each artifact once, by its latest outcome in the window: one retried three
    # times is one failure, and one that failed and then completed on a retry is a
    # completion (events without an artifact count as they are). Latest by retry
    # generation, then time, as the artifacts view (artifact_index.KEY) — and only
    # if that outcome decides the artifact's state as of now: a stale job's late
    # failure neither undoes the newer attempt's completion in the window nor counts
    # when that completion came before it (outside the window)
    c.con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _voicepipe_outcomes AS
            SELECT artifact_id, arg_max(organization_id, key) AS organization_id,
              arg_max(event_type, key) AS event_type, max(key) AS key
            FROM (SELECT coalesce(artifact_id, event_id) AS aid, artifact_id, organization_id, event_type,
                    {artifact_index.KEY} AS key
                  FROM {c.window(since)} WHERE event_type IN ('artifact_failed', 'artifact_completed'))
            GROUP BY aid, artifact_id""",
        {"since": since, "now": c.now},
    )
    artifact_index.deciding_outcome_keys(
        c.con, c.root, c.all_files(), "_voicepipe_deciding", "_voicepipe_outcomes", until=c.now
    )
    rows = c.rows(
        f"""WITH latest AS (
              SELECT organization_id, event_type FROM _voicepipe_outcomes WHERE artifact_id IS NULL
              UNION ALL
              SELECT organization_id, event_type FROM _voicepipe_outcomes
              SEMI JOIN _voicepipe_deciding USING (artifact_id, key))
            SELECT grouping(organization_id), organization_id,
              count(*) FILTER (WHERE event_type = 'artifact_failed'),
              count(*) FILTER (WHERE event_type = 'artifact_completed')
            FROM latest {_GROUPING}"""
    )
    c.con.execute("DROP TABLE _voicepipe_outcomes")
    c.con.execute("DROP TABLE _voicepipe_deciding")
    judged: set[str] = set()
    ev.sampled["failure_rate"] = (judged, r.per_organization)
    for org, (failed, completed) in _grouped(rows, r.per_organization):
        finished = failed + completed
        if finished < r.min_sample:
            if org is None:
                ev.notes.append(
                    f"failure_rate: {finished} finished artifacts in the last {r.window_minutes} min "
                    f"(minimum sample {r.min_sample})"
                )
            continue
        judged.add(scope_of(org))
        rate = failed / finished
        severity: Severity | None = (
            "critical" if rate > r.critical else "warning" if rate > r.warning else None
        )
        if severity is None:
            continue
        limit = r.critical if severity == "critical" else r.warning
        ev.findings.append(
            Finding(
                "failure_rate",
                org,
                severity,
                rate,
                limit,
                f"{_pct(rate)} of {finished} artifacts failed in the last {r.window_minutes} min "
                f"(> {_pct(limit)})",
                f"{failed} failed, {completed} completed between {since:%H:%M} and {c.now:%H:%M} UTC",
            )
        )


def _history_latency(c: _Ctx, days: int) -> dict[str | None, float]:
    """Mean of the daily ``avg_end_to_end_latency_ms`` over the ``days`` complete
    UTC days before today, per organisation (None = overall), from snapshots_daily."""
    today = c.now.replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        rows = c.rows(
            """SELECT organization_id, avg(avg_end_to_end_latency_ms)
               FROM snapshots_daily
               WHERE period_type = 'daily' AND period_start >= $lo AND period_start < $hi
                 AND avg_end_to_end_latency_ms IS NOT NULL
               GROUP BY organization_id""",
            lo=today - dt.timedelta(days=days),
            hi=today,
        )
    except duckdb.CatalogException:
        return {}  # no snapshot files yet: the view does not exist
    except duckdb.BinderException as exc:
        raise StoreError(
            f"snapshots_daily lacks the columns the latency rule needs ({exc}); rebuild with `voicepipe aggregate`"
        ) from exc
    return {org: float(v) for org, v in rows if v is not None}


def _latency(c: _Ctx, ev: Evaluation) -> None:
    r = c.rules.latency
    history = _history_latency(c, r.history_days)
    if None not in history:
        ev.notes.append(
            f"latency: no daily snapshots in the past {r.history_days} days, nothing to compare with "
            "(run `voicepipe aggregate` from cron)"
        )
    if not history:
        return
    since = c.now - dt.timedelta(minutes=r.window_minutes)
    lookback = c.now - dt.timedelta(hours=r.receipt_lookback_hours)
    rows = c.rows(
        f"""WITH done AS (
              SELECT artifact_id, any_value(organization_id) AS organization_id,
                     min(timestamp) AS completed_at
              FROM {c.window(since)}
              WHERE event_type = 'artifact_completed' AND artifact_id IS NOT NULL
              GROUP BY artifact_id),
            rcv AS (
              SELECT artifact_id,
                     min(timestamp) FILTER (WHERE event_type = 'artifact_received') AS received_at,
                     count(*) FILTER (WHERE event_type = 'retry_initiated') AS retries
              FROM {c.window(lookback, "lookback")}
              WHERE event_type IN ('artifact_received', 'retry_initiated')
                AND artifact_id IN (SELECT artifact_id FROM done)
              GROUP BY artifact_id)
            SELECT grouping(organization_id), organization_id,
                   avg(epoch_us(completed_at) - epoch_us(received_at)) / 1000.0, count(*)
            FROM done JOIN rcv USING (artifact_id)
            -- a retried artifact's latency is mostly the wait for someone to retry it,
            -- not the pipeline's speed: left out, or every manual retry would page
            WHERE rcv.received_at IS NOT NULL AND rcv.retries = 0
            {_GROUPING}""",
        since=since,
        lookback=lookback,
        now=c.now,
    )
    for org, (avg_ms, n) in _grouped(rows, r.per_organization):
        base = history.get(org)
        if avg_ms is None or base is None or n < r.min_sample:
            continue
        limit = r.multiplier * base
        if avg_ms > limit:
            ev.findings.append(
                Finding(
                    "latency",
                    org,
                    "warning",
                    float(avg_ms),
                    limit,
                    f"end-to-end latency {_fmt_ms(avg_ms)} over the last {r.window_minutes} min is "
                    f"{avg_ms / base:.1f}× the {r.history_days}-day daily average {_fmt_ms(base)}",
                    f"{n} artifacts completed; threshold {r.multiplier:g}× = {_fmt_ms(limit)}",
                )
            )


def _queue_depth(c: _Ctx, ev: Evaluation) -> None:
    r = c.rules.queue_depth
    rows = c.rows(
        f"""SELECT grouping(organization_id), organization_id, count(*)
            FROM {c.in_flight()}
            {_GROUPING}""",
    )
    for org, (depth,) in _grouped(rows, r.per_organization):
        if depth > r.warning:
            ev.findings.append(
                Finding(
                    "queue_depth",
                    org,
                    "warning",
                    float(depth),
                    float(r.warning),
                    f"{_n(depth, 'artifact')} in flight (> {r.warning})",
                    "artifacts whose status is neither completed nor failed",
                )
            )


def _backlog(c: _Ctx, ev: Evaluation) -> None:
    r = c.rules.disambiguation_backlog
    rows = c.rows(
        f"""SELECT grouping(organization_id), organization_id,
              coalesce(sum(CASE WHEN event_type = 'entity_needs_disambiguation'
                                THEN disambiguation_count ELSE -disambiguation_count END), 0)
            FROM {c.of_types(("entity_needs_disambiguation", "entity_user_resolved"), ("organization_id", "disambiguation_count"))}
            WHERE disambiguation_count IS NOT NULL
            {_GROUPING}""",
        now=c.now,
    )
    for org, (backlog,) in _grouped(rows, r.per_organization):
        if backlog > r.warning:
            ev.findings.append(
                Finding(
                    "disambiguation_backlog",
                    org,
                    "warning",
                    float(backlog),
                    float(r.warning),
                    f"{backlog} {'entity waits' if backlog == 1 else 'entities wait'} for disambiguation (> {r.warning})",
                    "pending = needs_disambiguation − user_resolved, within event retention",
                )
            )


def _circuit_breaker(c: _Ctx, ev: Evaluation) -> None:
    r = c.rules.circuit_breaker
    rows = c.rows(
        f"""SELECT grouping(organization_id), organization_id,
              arg_max(event_type, timestamp), max(timestamp),
              arg_max(error_message, timestamp)
            FROM {c.of_types(("circuit_breaker_opened", "circuit_breaker_closed"), ("organization_id", "error_message"))}
            {_GROUPING}""",
        now=c.now,
    )
    for org, (last, at, message) in _grouped(rows, r.per_organization):
        if last == "circuit_breaker_opened":
            ev.findings.append(
                Finding(
                    "circuit_breaker",
                    org,
                    "critical",
                    None,
                    None,
                    f"circuit breaker open since {at.astimezone(_UTC):%Y-%m-%d %H:%M} UTC",
                    message or "the latest breaker event is circuit_breaker_opened",
                )
            )


def expected_period_start(now: dt.datetime, hours: str, timezone: str) -> dt.datetime | None:
    """The UTC start of the expected-hours period containing ``now``, or None when
    ``now`` is outside expected hours. All-day windows return the start of time."""
    start, end = parse_hours(hours)
    if start == end or (start, end) == (0, 1440):
        return dt.datetime.min.replace(tzinfo=_UTC)
    local = now.astimezone(ZoneInfo(timezone))
    minute = local.hour * 60 + local.minute
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if start < end:
        if not start <= minute < end:
            return None
        begin = midnight
    elif minute >= start:
        begin = midnight
    elif minute < end:
        begin = midnight - dt.timedelta(days=1)
    else:
        return None
    naive = begin.replace(tzinfo=None) + dt.timedelta(minutes=start)
    return naive.replace(tzinfo=ZoneInfo(timezone)).astimezone(_UTC)


def _inactivity(c: _Ctx, ev: Evaluation) -> None:
    r = c.rules.inactivity
    period = expected_period_start(c.now, r.expected_hours, r.timezone)
    if period is None:
        ev.notes.append(f"inactivity: outside expected hours {r.expected_hours} {r.timezone}")
        return
    since = c.now - dt.timedelta(minutes=r.minutes)
    if period > since:
        ev.notes.append(f"inactivity: expected hours began less than {r.minutes} min ago")
        return
    if not c.all_files():
        ev.notes.append("inactivity: no events recorded yet")
        return
    # Overall: any finish in the window. Per organisation: organisations that
    # finished something in the past 7 days but nothing in the window.
    lookback = since - dt.timedelta(days=7) if r.per_organization else since
    rows = c.rows(
        f"""SELECT grouping(organization_id), organization_id,
              count(*) FILTER (WHERE timestamp > $cut), max(timestamp)
            FROM {c.window(lookback)}
            WHERE event_type IN ('artifact_completed', 'artifact_failed') {_GROUPING}""",
        since=lookback,
        cut=since,
        now=c.now,
    )
    for org, (recent, last) in _grouped(rows, r.per_organization):
        if recent:
            continue
        # the silence as long as it is (the last finish known), not the threshold:
        # "for 60 min" after five hours would understate it on every page
        if last is not None:
            quiet = max((c.now - last).total_seconds() / 60, float(r.minutes))
            text = f"for {_fmt_minutes(quiet)} (since {last.astimezone(_UTC):%Y-%m-%d %H:%M} UTC)"
        else:
            quiet, text = float(r.minutes), f"for over {r.minutes} min"
        ev.findings.append(
            Finding(
                "inactivity",
                org,
                "warning",
                quiet,
                float(r.minutes),
                f"no artifact completed or failed {text}",
                f"threshold {r.minutes} min; expected hours {r.expected_hours} ({r.timezone})",
            )
        )


def _budget(c: _Ctx, ev: Evaluation) -> None:
    r = c.rules.budget
    if r.daily_budget_usd is None and not r.organizations:
        ev.notes.append("budget: no daily budget configured")
        return
    today = c.now.replace(hour=0, minute=0, second=0, microsecond=0)
    since = today - dt.timedelta(microseconds=1)
    rows = c.rows(
        f"""SELECT grouping(organization_id), organization_id, coalesce(sum(ai_cost), 0)
            FROM {c.window(since)} WHERE ai_cost IS NOT NULL {_GROUPING}""",
        since=since,
        now=c.now,
    )
    for org, (cost,) in _grouped(rows, bool(r.organizations)):
        budget = r.daily_budget_usd if org is None else r.organizations.get(org)
        if budget is None:
            continue
        ratio = cost / budget
        # dollars are not exact in binary (3.00 × 0.8 = 2.4000000000000004): a
        # nano-dollar of tolerance, so that the budget fires *at* 80 %
        spent = cost + 1e-9
        severity: Severity | None = (
            "critical"
            if spent >= budget * r.critical_ratio
            else "warning"
            if spent >= budget * r.warning_ratio
            else None
        )
        if severity is None:
            continue
        ev.findings.append(
            Finding(
                "budget",
                org,
                severity,
                float(cost),
                budget * (r.critical_ratio if severity == "critical" else r.warning_ratio),
                f"AI cost today ${cost:.2f} is {ratio * 100:.0f}% of the ${budget:.2f} daily budget",
                f"since {today:%Y-%m-%d} 00:00 UTC; warning at {r.warning_ratio:.0%}, critical at {r.critical_ratio:.0%}",
            )
        )


def _stuck(c: _Ctx, ev: Evaluation) -> None:
    r = c.rules.stuck
    cutoff = c.now - dt.timedelta(minutes=r.minutes)
    rows = c.rows(
        f"""SELECT grouping(organization_id), organization_id, count(*),
              list(artifact_id ORDER BY received_at, artifact_id)[1:5], min(received_at)
            FROM {c.in_flight()} WHERE received_at <= $cutoff
            {_GROUPING}""",
        cutoff=cutoff,
    )
    for org, (count, sample, oldest) in _grouped(rows, r.per_organization):
        if count < r.warning_count:
            continue
        ids = ", ".join(sample or [])
        more = f" and {count - len(sample)} more" if count > len(sample or []) else ""
        ev.findings.append(
            Finding(
                "stuck",
                org,
                "warning",
                float(count),
                float(r.warning_count),
                f"{_n(count, 'artifact')} in flight for more than {r.minutes} min",
                f"oldest since {oldest.astimezone(_UTC):%Y-%m-%d %H:%M} UTC: {ids}{more}",
            )
        )


_RULE_FUNCS: Final[dict[str, Callable[[_Ctx, Evaluation], None]]] = {
    "failure_rate": _failure_rate,
    "latency": _latency,
    "queue_depth": _queue_depth,
    "disambiguation_backlog": _backlog,
    "circuit_breaker": _circuit_breaker,
    "inactivity": _inactivity,
    "budget": _budget,
    "stuck": _stuck,
}


def evaluate(
    root: str | os.PathLike[str] | None,
    settings: Settings | None = None,
    *,
    now: dt.datetime | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    rules: Sequence[str] | None = None,
) -> Evaluation:
    """Evaluate the enabled rules (or just ``rules``) at ``now``; writes nothing.

    Without ``con`` it opens (and closes) its own connection, listing the files
    again when one it listed vanished meanwhile (``voicepipe compact`` replaced it:
    :func:`~voicepipe_obs.query.retry_vanished`); a caller's ``con`` is the
    caller's to retry.

    Raises :class:`StoreError` when the store cannot be read.
    """
    from .query import connect, retry_vanished

    settings = settings or Settings()
    rootp = store.resolve_root(root)
    at = _evaluable(_aware(now))
    for name in rules or ():
        if name not in _RULE_FUNCS:
            raise UsageError(f"unknown rule {name!r}; choose from {', '.join(RULES)}")
    if con is not None:
        return _evaluate(con, rootp, settings, at, rules)

    def read(_attempt: int) -> Evaluation:
        try:
            own = connect(rootp, live=False)
        except duckdb.Error as exc:
            raise StoreError(_unreadable(rootp, exc)) from exc
        try:
            return _evaluate(own, rootp, settings, at, rules)
        finally:
            own.close()

    return retry_vanished(read, what="evaluate")


def _evaluate(
    con: duckdb.DuckDBPyConnection,
    rootp: Path,
    settings: Settings,
    at: dt.datetime,
    rules: Sequence[str] | None,
) -> Evaluation:
    try:
        ctx = _Ctx(con, rootp, settings, at)
        ev = Evaluation(at)
        for name in rules or RULES:
            if not getattr(settings.alerts, name).enabled:
                continue
            try:
                _RULE_FUNCS[name](ctx, ev)
            except OverflowError:
                raise UsageError(
                    f"rule {name}: its window reaches outside the supported dates when evaluated at "
                    f"{_iso(at)}; check the time given and the rule's settings under [alerts.{name}]"
                ) from None
            ev.evaluated.append(name)
    except duckdb.Error as exc:
        raise StoreError(_unreadable(rootp, exc)) from exc
    return ev


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _unreadable(root: Path, exc: BaseException) -> str:
    return (
        f"cannot read the events under {root} ({_first_line(exc)}); "
        "`voicepipe compact` moves unreadable files to quarantine/"
    )


# ------------------------------------------------------------------- lifecycle


@dataclass
class AlertState:
    """An alert's current state, as the ``alerts`` view derives it."""

    alert_id: str
    rule: str
    scope: str
    organization_id: str | None
    status: str
    #: None (with ``raised_at``) only for an alert whose raise is missing from the
    #: log (trimmed by a cleanup before retention kept active alerts' records).
    severity: str | None
    raised_at: dt.datetime | None
    escalated_at: dt.datetime | None
    resolved_at: dt.datetime | None
    acknowledged_by: str | None
    acknowledged_at: dt.datetime | None
    ack_comment: str | None
    summary: str | None
    description: str | None
    value: float | None
    threshold: float | None
    notifications_sent: int = 0
    notifications_failed: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.rule, self.scope

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, dt.datetime):
                out[k] = _iso(v)
        return out


#: The columns of an alert's derived state (the `alerts` view, AlertState).
STATE_COLUMNS: Final = (
    "alert_id",
    "rule",
    "scope",
    "organization_id",
    "status",
    "severity",
    "raised_at",
    "escalated_at",
    "resolved_at",
    "acknowledged_by",
    "acknowledged_at",
    "ack_comment",
    "summary",
    "description",
    "value",
    "threshold",
    "notifications_sent",
    "notifications_failed",
)
_TS_STATE_COLUMNS: Final = frozenset({"raised_at", "escalated_at", "resolved_at", "acknowledged_at"})


def _iso(value: dt.datetime) -> str:
    return value.astimezone(_UTC).isoformat().replace("+00:00", "Z")


#: Most urgent first: active before resolved, critical before warning, then the
#: oldest raise first, then rule and scope (``alerts list``).
_URGENCY_ORDER: Final = (
    "status = 'active' DESC, CASE severity WHEN 'critical' THEN 2 WHEN 'warning' THEN 1 ELSE 0 END DESC, "
    "raised_at, rule, scope, alert_id"
)


def _select_states(
    con: duckdb.DuckDBPyConnection,
    where: str = "",
    params: Sequence[Any] = (),
    order: str = "raised_at, alert_id",
) -> list[AlertState]:
    cols = ", ".join(f"epoch_us({c})" if c in _TS_STATE_COLUMNS else c for c in STATE_COLUMNS)
    rows = con.execute(f"SELECT {cols} FROM alerts {where} ORDER BY {order}", list(params)).fetchall()
    out = []
    for row in rows:
        values: dict[str, Any] = {
            c: (store.from_us(v) if c in _TS_STATE_COLUMNS and v is not None else v)
            for c, v in zip(STATE_COLUMNS, row, strict=True)
        }
        out.append(AlertState(**values))
    return out


#: Filters for :func:`list_alerts`: name → SQL column (allow-list).
_FILTERS: Final = {
    "rule": "rule",
    "organization_id": "organization_id",
    "severity": "severity",
    "status": "status",
}


def list_alerts(
    root: str | os.PathLike[str] | None = None,
    *,
    status: Literal["active", "resolved", "all"] = "active",
    rule: str | None = None,
    organization_id: str | None = None,
    severity: str | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> list[AlertState]:
    """Alerts in their current state (default: active only), most urgent first:
    active before resolved, critical before warning, then oldest raise first.

    Without ``con`` a log file found unreadable (corrupt data pages) is skipped
    with a warning (:func:`~voicepipe_obs.query.skip_unreadable`)."""
    from .query import connect, retried_read

    if con is None:
        rootp = store.resolve_root(root)

        def read() -> list[AlertState]:  # connected (files listed) again on a retry
            own = connect(rootp, live=False)
            return list_alerts(
                rootp, status=status, rule=rule, organization_id=organization_id, severity=severity, con=own
            )

        return retried_read(read)()
    clauses: list[str] = []
    params: list[Any] = []
    for name, value in (
        ("status", None if status == "all" else status),
        ("rule", rule),
        ("organization_id", organization_id),
        ("severity", severity),
    ):
        if value is not None:
            clauses.append(f"{_FILTERS[name]} = ?")
            params.append(value)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    return _select_states(con, where, params, order=_URGENCY_ORDER)


def alert_history(
    root: str | os.PathLike[str] | None = None,
    *,
    alert_id: str | None = None,
    rule: str | None = None,
    organization_id: str | None = None,
    record_type: str | None = None,
    since: dt.datetime | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> list[dict[str, Any]]:
    """Alert-log records (every raise, escalation, resolution, acknowledgement and
    notification attempt), oldest first, as plain dicts. Without ``con``, as
    :func:`list_alerts`, an unreadable log file is skipped with a warning."""
    from .query import connect, retried_read

    if con is None:
        rootp = store.resolve_root(root)

        def read() -> list[dict[str, Any]]:  # connected (files listed) again on a retry
            own = connect(rootp, live=False)
            return alert_history(
                rootp,
                alert_id=alert_id,
                rule=rule,
                organization_id=organization_id,
                record_type=record_type,
                since=since,
                con=own,
            )

        return retried_read(read)()
    if record_type is not None and record_type not in RECORD_TYPES:
        raise UsageError(f"unknown record type {record_type!r}; choose from {', '.join(RECORD_TYPES)}")
    clauses: list[str] = []
    params: list[Any] = []
    for col, value in (
        ("alert_id", alert_id),
        ("rule", rule),
        ("organization_id", organization_id),
        ("record_type", record_type),
    ):
        if value is not None:
            clauses.append(f"{col} = ?")
            params.append(value)
    if since is not None:
        clauses.append("timestamp >= ?")
        params.append(since)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    cols = ", ".join(f"epoch_us({c})" if c in ("timestamp", "started_at") else c for c in LOG_COLUMN_NAMES)
    rows = con.execute(
        f"SELECT {cols} FROM alert_log {where} ORDER BY timestamp, record_id", params
    ).fetchall()
    out = []
    for row in rows:
        rec = dict(zip(LOG_COLUMN_NAMES, row, strict=True))
        for c in ("timestamp", "started_at"):
            if rec[c] is not None:
                rec[c] = _iso(store.from_us(rec[c]))
        out.append(rec)
    return out


def _record(record_type: str, now: dt.datetime, **fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = dict.fromkeys(LOG_COLUMN_NAMES)
    rec.update(
        record_id=f"r-{store.to_us(now):x}-{secrets.token_hex(4)}",
        record_type=record_type,
        timestamp=now,
        host=store.host_name(),
    )
    rec.update(fields)
    return rec


def write_records(root: Path, records: Sequence[dict[str, Any]], now: dt.datetime) -> Path | None:
    """Append records to the alert log: one new file under alerts/date=<now>/."""
    import pyarrow as pa

    if not records:
        return None
    table = pa.Table.from_pylist(list(records), schema=log_schema())
    path = root / store.ALERTS / f"date={now:%Y-%m-%d}" / f"{store.unique_name()}.parquet"
    try:
        return store.write_table(path, table)
    except OSError as exc:
        raise StoreError(f"cannot write the alert log under {root / store.ALERTS}: {exc}") from exc


def new_alert_id(rule: str, scope: str, raised_at: dt.datetime) -> str:
    """A short, stable id: the same rule, scope and raise time give the same id."""
    digest = hashlib.sha1(f"{rule}\0{scope}\0{store.to_us(raised_at)}".encode()).hexdigest()
    return digest[:10]


def lifecycle_records(
    active: Sequence[AlertState], ev: Evaluation, *, resolve_missing: bool = True
) -> list[dict[str, Any]]:
    """The records that move the alert log from ``active`` to ``ev``'s findings:
    raise new conditions, escalate when severity rises (severity never drops while
    an alert is active), resolve alerts whose condition cleared."""
    now = ev.now
    by_key = {a.key: a for a in active}
    seen: set[tuple[str, str]] = set()
    out: list[dict[str, Any]] = []
    for f in ev.findings:
        if f.key in seen:
            continue
        seen.add(f.key)
        common = {
            "rule": f.rule,
            "scope": f.scope,
            "organization_id": f.organization_id,
            "severity": f.severity,
            "value": f.value,
            "threshold": f.threshold,
            "summary": f.summary,
            "description": f.description,
        }
        current = by_key.get(f.key)
        if current is None:
            out.append(
                _record("raised", now, alert_id=new_alert_id(f.rule, f.scope, now), started_at=now, **common)
            )
        elif current.severity is None:
            # The log lost this alert's raise (trimmed by a cleanup before retention
            # kept active alerts' records): record it again under the same id rather
            # than "escalate" from no severity, or forget the alert and page a new one.
            log.warning(
                "alert %s (%s [%s]) has no raise record in the alert log; recording it again",
                current.alert_id,
                current.rule,
                current.scope,
            )
            out.append(
                _record(
                    "raised",
                    now,
                    alert_id=current.alert_id,
                    started_at=current.raised_at or now,
                    comment="raise record missing from the alert log; recorded again",
                    **common,
                )
            )
        elif SEVERITY_RANK[f.severity] > SEVERITY_RANK[current.severity]:
            out.append(
                _record(
                    "escalated",
                    now,
                    alert_id=current.alert_id,
                    started_at=current.raised_at,
                    previous_severity=current.severity,
                    **common,
                )
            )
    evaluated = set(ev.evaluated)
    for a in active:
        if a.key in seen or not resolve_missing:
            continue
        if ev.unjudged(a.rule, a.scope):
            ev.notes.append(
                f"{a.rule} [{a.scope}]: too few finished artifacts to judge; alert {a.alert_id} "
                "stays active until enough finish"
            )
            continue
        out.append(
            _record(
                "resolved",
                now,
                alert_id=a.alert_id,
                rule=a.rule,
                scope=a.scope,
                organization_id=a.organization_id,
                severity=a.severity,
                summary=a.summary,
                description=("condition cleared" if a.rule in evaluated else f"rule {a.rule} is disabled"),
                started_at=a.raised_at,
            )
        )
    return out


class AlertResolvedError(AlertError):
    """Acknowledging an alert that has already resolved: the operation failed
    (exit 1, like an unknown id); exit 3 is ``check``'s "could not evaluate"."""

    exit_code = 1


def acknowledge(
    root: str | os.PathLike[str] | None,
    alert_id: str,
    by: str,
    *,
    comment: str | None = None,
    now: dt.datetime | None = None,
) -> AlertState:
    """Record that ``by`` acknowledged an active alert; returns its new state.

    Raises :class:`NotFoundError` for an unknown id, :class:`AlertResolvedError`
    for a resolved alert and :class:`StoreError` for a missing data root.
    """
    from .query import connect, retried_read

    rootp = require_root(root)
    by = by.strip()
    if not by:
        raise UsageError("--by needs a name (who is acknowledging)")
    at = _aware(now)

    def read() -> tuple[duckdb.DuckDBPyConnection, list[AlertState]]:
        # connected again when a log file turned out unreadable (skipped, warned)
        con = connect(rootp, live=False)
        return con, _select_states(con, "WHERE alert_id = ?", [alert_id])

    con, states = retried_read(read)()
    if not states:
        raise NotFoundError(f"no alert with id {alert_id!r}; `voicepipe alerts list --all` shows the ids")
    state = states[0]
    if state.status != "active":
        raise AlertResolvedError(
            f"alert {alert_id} already resolved at {_iso(state.resolved_at or at)}; nothing to acknowledge"
        )
    write_records(
        rootp,
        [
            _record(
                "acknowledged",
                at,
                alert_id=state.alert_id,
                rule=state.rule,
                scope=state.scope,
                organization_id=state.organization_id,
                severity=state.severity,
                actor=by,
                comment=comment,
                started_at=state.raised_at,
            )
        ],
        at,
    )
    register_views(con, rootp)
    return _select_states(con, "WHERE alert_id = ?", [alert_id])[0]


# ------------------------------------------------------------------------ lock


@contextlib.contextmanager
def check_lock(root: Path, timeout: float) -> Iterator[None]:
    """Hold ``<root>/_state/check.lock`` (:func:`voicepipe_obs.store.run_lock`),
    waiting up to ``timeout`` seconds.

    Raises :class:`AlertError` (exit 3) if another check holds it longer.
    """
    held = contextlib.ExitStack()
    try:  # only taking the lock is translated, not what the check does under it
        held.enter_context(store.run_lock(root, LOCK_FILE, command="check", timeout=timeout))
    except BusyError as exc:
        raise AlertError(f"{exc}; if checks overlap, raise alerts.lock_timeout_seconds") from None
    except OSError as exc:
        raise StoreError(
            f"cannot create the check lock under {root / store.STATE}: {exc.strerror or exc}"
        ) from exc
    with held:
        yield


# ---------------------------------------------------------------- notification


@dataclass(frozen=True)
class DeliveryOutcome:
    """One notification delivery attempted during a check."""

    notifier: str
    alert_id: str
    event: str
    ok: bool
    attempts: int
    error: str | None
    #: Not attempted this check (the notifier already failed in it, or the
    #: delivery deadline passed): still pending, tried first by the next check.
    deferred: bool = False


def notification_payload(rec: dict[str, Any]) -> dict[str, Any]:
    """The JSON a notifier receives for a lifecycle record."""
    event = rec["record_type"]
    payload = {
        "alert_id": rec["alert_id"],
        "event": event,
        "status": "resolved" if event == "resolved" else "firing",
        "rule": rec["rule"],
        "scope": rec["scope"],
        "organization_id": rec["organization_id"],
        "severity": rec["severity"],
        "previous_severity": rec.get("previous_severity"),
        "summary": rec["summary"],
        "description": rec["description"],
        "value": rec["value"],
        "threshold": rec["threshold"],
        "started_at": rec["started_at"],
        "timestamp": rec["timestamp"],
        "ended_at": rec["timestamp"] if event == "resolved" else None,
    }
    from .notify import alert_text

    payload["text"] = alert_text(payload)
    return payload


def notifier_starts(con: duckdb.DuckDBPyConnection) -> dict[str, dt.datetime]:
    """When each notifier's history starts: its ``notifier_added`` record, or (logs
    written before that record existed) its first delivery attempt."""
    rows = con.execute(
        """SELECT notifier, epoch_us(min(timestamp)) FROM alert_log
           WHERE notifier IS NOT NULL AND record_type IN ('notifier_added', 'notification')
           GROUP BY notifier"""
    ).fetchall()
    return {str(name): store.from_us(us) for name, us in rows}


def _pending(con: duckdb.DuckDBPyConnection, name: str, start: dt.datetime) -> list[dict[str, Any]]:
    """Lifecycle records not yet delivered to notifier ``name`` nor given up on
    (an ``expired:`` notification record), whose history began with the check at
    ``start``: the state that check left — the latest raise or escalation of each
    alert raised before it and still active after it — then every record from that
    check on. An alert raised or escalated again in that check or later has no baseline
    record: its own newer record carries its current severity, so the notifier gets
    one page, not the stale one too. An alert that was already over, or ended in
    that first check, is not sent: the notifier never heard of it."""
    cols = ", ".join(
        f"epoch_us(l.{c})" if c in ("timestamp", "started_at") else f"l.{c}" for c in LOG_COLUMN_NAMES
    )
    rows = con.execute(
        f"""WITH life AS (
              SELECT * FROM alert_log WHERE record_type IN ('raised', 'escalated', 'resolved')),
            before_start AS (
              SELECT alert_id FROM life WHERE timestamp < $start GROUP BY alert_id),
            over_at_start AS (
              SELECT alert_id FROM life
              WHERE record_type = 'resolved' AND timestamp <= $start
                AND alert_id IN (SELECT alert_id FROM before_start)),
            changed_since_start AS (
              SELECT alert_id FROM life
              WHERE record_type IN ('raised', 'escalated') AND timestamp >= $start),
            baseline AS (
              SELECT arg_max(record_id, timestamp) AS record_id FROM life
              WHERE timestamp < $start AND alert_id NOT IN (SELECT alert_id FROM over_at_start)
                AND alert_id NOT IN (SELECT alert_id FROM changed_since_start)
              GROUP BY alert_id)
            SELECT {cols} FROM life l
            WHERE ((l.timestamp >= $start AND l.alert_id NOT IN (SELECT alert_id FROM over_at_start))
                   OR l.record_id IN (SELECT record_id FROM baseline))
              AND NOT EXISTS (SELECT 1 FROM alert_log n
                              WHERE n.record_type = 'notification'
                                AND (n.delivered OR starts_with(n.error, $expired))
                                AND n.ref_record_id = l.record_id AND n.notifier = $name)
            ORDER BY l.timestamp, l.record_id""",
        {"start": start, "name": name, "expired": EXPIRED_PREFIX},
    ).fetchall()
    out = []
    for row in rows:
        rec = dict(zip(LOG_COLUMN_NAMES, row, strict=True))
        for c in ("timestamp", "started_at"):
            if rec[c] is not None:
                rec[c] = _iso(store.from_us(rec[c]))
        out.append(rec)
    return out


#: ``error`` of the notification record that gives up on a lifecycle record older
#: than ``alerts.notification_max_age_hours`` (written once per record and notifier).
EXPIRED_PREFIX: Final = "expired:"
#: Delivery records are appended to the log at least this often (seconds) during a
#: check, by a background thread (also while an attempt hangs): a run cut short
#: keeps what it attempted.
_FLUSH_EVERY: Final = 0.5


def _attempt_record(
    rec: dict[str, Any], name: str, now: dt.datetime, ok: bool, attempts: int, error: str | None
) -> dict[str, Any]:
    return _record(
        "notification",
        now,
        alert_id=rec["alert_id"],
        rule=rec["rule"],
        scope=rec["scope"],
        organization_id=rec["organization_id"],
        severity=rec["severity"],
        notifier=name,
        ref_record_id=rec["record_id"],
        ref_record_type=rec["record_type"],
        delivered=ok,
        attempts=attempts,
        error=error,
    )


def send_notifications(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    settings: Settings,
    now: dt.datetime,
    *,
    record: Callable[[list[dict[str, Any]]], object] | None = None,
    firing: Sequence[AlertState] = (),
) -> tuple[list[DeliveryOutcome], list[dict[str, Any]]]:
    """Deliver to each notifier every lifecycle record it has not had yet, oldest
    first; returns the outcomes and the notification records (every one, also
    those already passed to ``record``).

    A notifier's history starts at the first check that ran with it configured
    (its ``notifier_added`` record, see :func:`notifier_records`): it gets the
    alerts still active after that check, once each, and every raise, escalation
    and resolution after — never the backlog of alerts that came and went before
    it existed (see :func:`_pending`).

    Notifiers are served side by side, one thread each, so a dead endpoint costs
    the others nothing. Bounded in time, so a slow or dead endpoint cannot hold the
    check lock for minutes: after a notifier's first failed delivery its remaining
    ones are deferred (outcome ``deferred``, nothing sent or recorded: still
    pending, and tried in order by the next check), and nothing starts after
    ``alerts.delivery_deadline_seconds``, which also cuts the attempt in flight.
    Alertmanagers then get the ``firing`` alerts re-posted (their ``endsAt``
    renewed) under the same deadline, unless a delivery to them failed.
    A record older than ``alerts.notification_max_age_hours`` is not sent: it gets
    one notification record with ``delivered`` false and an ``expired:`` error, and
    a warning. With ``record``, attempt records are handed to it as the run goes (a
    background thread every :data:`_FLUSH_EVERY` seconds, also while an attempt
    hangs, and at the end whatever happens), so a run killed or cut short keeps
    what it tried and does not page again for it.
    """
    from .notify import deliver, notifier_name

    max_age = settings.alerts.notification_max_age_hours
    since = now - dt.timedelta(hours=max_age)
    expiry = f"{EXPIRED_PREFIX} older than {max_age:g} h (alerts.notification_max_age_hours)"
    budget = settings.alerts.delivery_deadline_seconds
    deadline = time.monotonic() + budget
    starts = notifier_starts(con)
    # what each notifier is owed, read before the threads start (one connection)
    work = [(cfg, notifier_name(cfg)) for cfg in settings.notifiers]
    pending = {name: _pending(con, name, starts.get(name, now)) for _cfg, name in work}
    outcomes: dict[str, list[DeliveryOutcome]] = {name: [] for _cfg, name in work}
    records: list[dict[str, Any]] = []
    unflushed: list[dict[str, Any]] = []
    lock = threading.Lock()
    done = threading.Event()

    def flush() -> None:
        with lock:
            batch = list(unflushed)
            unflushed.clear()
            if record is not None and batch:
                record(batch)  # under the lock: batches are written in order, one at a time

    def keep(rec: dict[str, Any]) -> None:
        with lock:
            records.append(rec)
            unflushed.append(rec)

    def flusher() -> None:
        while not done.wait(_FLUSH_EVERY):
            try:
                flush()
            except Exception as exc:  # the final flush (on the calling thread) raises it
                log.warning("could not record notification attempts yet: %s", exc)

    def serve(cfg: Notifier, name: str) -> None:
        failed = False
        deferred: list[dict[str, Any]] = []
        expired: list[dict[str, Any]] = []
        mine = outcomes[name]
        for rec in pending[name]:
            if dt.datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")) < since:
                expired.append(rec)
                keep(_attempt_record(rec, name, now, False, 0, expiry))
                continue
            if failed or time.monotonic() >= deadline:
                deferred.append(rec)
                why = (
                    "deferred: an earlier delivery to this notifier failed in this check"
                    if failed
                    else f"deferred: the check's delivery deadline ({budget:g} s) passed"
                )
                mine.append(
                    DeliveryOutcome(name, rec["alert_id"], rec["record_type"], False, 0, why, deferred=True)
                )
                continue
            result = deliver(cfg, notification_payload(rec), deadline=deadline)
            mine.append(
                DeliveryOutcome(
                    name, rec["alert_id"], rec["record_type"], result.ok, result.attempts, result.error
                )
            )
            keep(_attempt_record(rec, name, now, result.ok, result.attempts, result.error))
            if not result.ok:
                failed = True
                log.warning(
                    "notifier %s: %s notification for alert %s not delivered (%s); retrying on the next check",
                    name,
                    rec["record_type"],
                    rec["alert_id"],
                    result.error,
                )
        if expired:
            first = expired[0]
            log.warning(
                "notifier %s: %s never delivered and now %s; given up and recorded in the alert log "
                "(first: %s for alert %s at %s)",
                name,
                _n(len(expired), "notification"),
                expiry,
                first["record_type"],
                first["alert_id"],
                first["timestamp"],
            )
        if deferred:
            log.warning(
                "notifier %s: %s deferred to the next check (%s)",
                name,
                _n(len(deferred), "notification"),
                "a delivery to it failed" if failed else f"delivery deadline of {budget:g} s reached",
            )
        _refresh_alertmanager(cfg, name, firing, now, deadline=deadline, skip=failed)

    background = threading.Thread(target=flusher, name="voicepipe-notify-flush", daemon=True)
    background.start()
    threads = [
        threading.Thread(target=serve, args=(cfg, name), name=f"voicepipe-notify-{i}", daemon=True)
        for i, (cfg, name) in enumerate(work)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            # every attempt is cut at the deadline; a little slack for the last one
            t.join(max(0.0, deadline - time.monotonic()) + 5.0)
    finally:
        done.set()
        background.join()
        flush()  # also when interrupted: what was tried is kept
    return [o for _cfg, name in work for o in outcomes[name]], records


def notifier_records(
    con: duckdb.DuckDBPyConnection, settings: Settings, now: dt.datetime
) -> list[dict[str, Any]]:
    """A ``notifier_added`` record for each configured notifier the log has never
    seen (written with the check's changes, before anything is delivered)."""
    from .notify import notifier_name

    if not settings.notifiers:
        return []
    known = notifier_starts(con)
    out = []
    for cfg in settings.notifiers:
        name = notifier_name(cfg)
        if name not in known:
            known[name] = now
            out.append(
                _record(
                    "notifier_added",
                    now,
                    notifier=name,
                    description="first check with this notifier: it gets the active alerts, then every change",
                )
            )
    return out


def _refresh_alertmanager(
    cfg: Notifier, name: str, active: Sequence[AlertState], now: dt.datetime, *, deadline: float, skip: bool
) -> None:
    """Re-post the still-firing alerts to ``cfg`` if it is an Alertmanager (it
    expires an alert not re-sent), within the check's delivery ``deadline``; not
    after a failed delivery to it in this check (``skip``: the next check tries)."""
    from .config import AlertmanagerNotifier
    from .notify import refresh_alertmanager

    if not isinstance(cfg, AlertmanagerNotifier) or not active or skip:
        return
    alerts = [
        {
            "alert_id": a.alert_id,
            "rule": a.rule,
            "scope": a.scope,
            "organization_id": a.organization_id,
            "severity": a.severity,
            "summary": a.summary,
            "description": a.description,
            "started_at": _iso(a.raised_at) if a.raised_at is not None else None,
            "timestamp": _iso(now),
        }
        for a in active
    ]
    result = refresh_alertmanager(cfg, alerts, deadline=deadline)
    if not result.ok:
        log.warning("notifier %s: could not refresh firing alerts: %s", name, result.error)


# ----------------------------------------------------------------------- check


@dataclass
class CheckResult:
    """What one check did: the active alerts after it, the lifecycle records it
    appended, the deliveries it attempted, notes on rules with nothing to judge.
    With ``dry_run`` nothing was written or sent: ``active`` and ``changes`` are
    what the check would have left and written. ``pending``: raises and resolutions
    that wait for their rule's ``for_minutes`` / ``keep_firing_minutes``
    (:mod:`voicepipe_obs.damping`); they do not count for the exit code.
    ``notifiers_added``: the ``notifier_added`` records written before ``changes``
    (JSON lists them first among the changes)."""

    now: dt.datetime
    active: list[AlertState]
    changes: list[dict[str, Any]]
    deliveries: list[DeliveryOutcome]
    notes: list[str]
    evaluated: list[str]
    dry_run: bool = False
    pending: list[damping.PendingAlert] = field(default_factory=list)
    notifiers_added: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 no active alert, 1 warning, 2 critical (the Nagios convention); a
        pending raise does not count, an alert whose resolution is pending does."""
        return max((SEVERITY_RANK.get(a.severity or "", 1) for a in self.active), default=0)

    @property
    def status(self) -> str:
        return ("OK", "WARNING", "CRITICAL")[self.exit_code]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "checked_at": _iso(self.now),
            "dry_run": self.dry_run,
            "active": [a.to_dict() for a in self.active],
            "changes": [
                {k: (_iso(v) if isinstance(v, dt.datetime) else v) for k, v in c.items() if v is not None}
                for c in [*self.notifiers_added, *self.changes]
            ],
            "pending": [p.to_dict(self.now) for p in self.pending],
            "notifications": [asdict(d) for d in self.deliveries],
            "rules_evaluated": self.evaluated,
            "notes": self.notes,
        }


def _save_last_check(root: Path, result: CheckResult) -> None:
    """Record when the check ran and what it found (best effort: the alert log is
    what matters, and it is written)."""
    import json

    try:
        store.write_text_atomic(
            root / store.STATE / LAST_CHECK_FILE,
            json.dumps(
                {"checked_at": _iso(result.now), "status": result.status, "active": len(result.active)}
            ),
        )
    except OSError as exc:
        log.warning("could not record the check's time under %s: %s", root / store.STATE, exc)


def last_check(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last recording check (``checked_at`` as an aware datetime, ``status``,
    ``active``: how many alerts it left active), or None if none has run (or its
    record is unreadable)."""
    import json

    try:
        data = json.loads((Path(root) / store.STATE / LAST_CHECK_FILE).read_text(encoding="utf-8"))
        return {
            "checked_at": dt.datetime.fromisoformat(str(data["checked_at"]).replace("Z", "+00:00")),
            "status": str(data["status"]),
            "active": int(data["active"]),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _not_in_future(at: dt.datetime) -> None:
    """Refuse to record a check at an explicit time later than the system clock:
    it would raise alerts before they happen, and the next real check would resolve
    them "before" they were raised."""
    clock = dt.datetime.now(_UTC)
    if at > clock + MAX_CLOCK_SKEW:
        raise UsageError(
            f"cannot record a check at {_iso(at)}: it is more than {MAX_CLOCK_SKEW.seconds // 60} min "
            f"after the system clock ({_iso(clock.replace(microsecond=0))}); evaluate future times with "
            "--dry-run, which records nothing"
        )


def _latest_record(con: duckdb.DuckDBPyConnection, root: Path) -> dt.datetime | None:
    """The time of the alert log's latest record (None: empty log)."""
    try:
        rows = con.execute("SELECT epoch_us(max(timestamp)) FROM alert_log").fetchall()
    except duckdb.Error as exc:
        raise StoreError(
            f"cannot read the alert log under {root / store.ALERTS}: {_first_line(exc)}"
        ) from exc
    return store.from_us(rows[0][0]) if rows and rows[0][0] is not None else None


def _not_before_log(at: dt.datetime, con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Refuse to record a check at an explicit time earlier than the alert log's
    latest record: its lifecycle would run backwards (resolved before raised)."""
    latest = _latest_record(con, root)
    if latest is not None and at < latest:
        raise UsageError(
            f"cannot record a check at {_iso(at)}: the alert log already has records up to {_iso(latest)} "
            "and its lifecycle cannot run backwards; give a later time, or evaluate with --dry-run, "
            "which records nothing"
        )


def _after_log(at: dt.datetime, con: duckdb.DuckDBPyConnection, root: Path) -> dt.datetime:
    """The time a check on the system clock records at: ``at``, or the log's latest
    record when that is later (an earlier ``check --now`` ran ahead of this clock,
    within :data:`MAX_CLOCK_SKEW`, or another host's clock is ahead). Refusing would
    make every cron check exit 3 until the clock catches up; recording at the
    latest record keeps the lifecycle in order and loses at most that skew."""
    latest = _latest_record(con, root)
    if latest is None or latest <= at:
        return at
    log.warning(
        "the alert log has records up to %s, later than the system clock (%s); "
        "recording this check at %s so its lifecycle does not run backwards",
        _iso(latest),
        _iso(at),
        _iso(latest),
    )
    return latest


def run_check(
    root: str | os.PathLike[str] | None,
    settings: Settings | None = None,
    *,
    now: dt.datetime | None = None,
    notify: bool = True,
    dry_run: bool = False,
) -> CheckResult:
    """Evaluate every rule at ``now`` under the check lock, append the lifecycle
    changes to the alert log, deliver pending notifications and record each
    attempt. A rule's ``for_minutes`` / ``keep_firing_minutes`` hold raises and
    resolutions back (:func:`voicepipe_obs.damping.damp`; what waits is in the
    result's ``pending``). Raises :class:`StoreError` / :class:`AlertError` when it cannot
    evaluate, :class:`UsageError` for a ``now`` it must not record at (``voicepipe
    check`` exits 3 for all of them).

    An explicit ``now`` may not be later than the system clock (plus
    :data:`MAX_CLOCK_SKEW`) nor earlier than the alert log's latest record; without
    one, a check records at the system clock or at the log's latest record when
    that is later (see :func:`_after_log`). With
    ``dry_run`` any ``now`` goes: nothing is written, locked or sent, and the
    result shows the state the check would have left.
    """
    from .query import connect, retry_vanished

    settings = settings or Settings()
    at = _evaluable(_aware(now))
    if now is not None and not dry_run:
        _not_in_future(at)
    rootp = require_root(root)
    guard = contextlib.nullcontext() if dry_run else check_lock(rootp, settings.alerts.lock_timeout_seconds)

    def read(_attempt: int) -> tuple[duckdb.DuckDBPyConnection, list[AlertState], Evaluation, dt.datetime]:
        # connected (files listed) again when a listed file vanished (compaction)
        try:
            con = connect(rootp, live=False)
        except duckdb.Error as exc:
            raise StoreError(_unreadable(rootp, exc)) from exc
        try:
            try:
                active = _select_states(con, "WHERE status = 'active'")
            except duckdb.Error as exc:
                raise StoreError(
                    f"cannot read the alert log under {rootp / store.ALERTS}: {_first_line(exc)}"
                ) from exc
            when = at
            if now is not None and not dry_run:
                _not_before_log(at, con, rootp)
            elif not dry_run:
                when = _after_log(at, con, rootp)
            return con, active, evaluate(rootp, settings, now=when, con=con), when
        except BaseException:
            con.close()
            raise

    with guard:
        con, active, ev, at = retry_vanished(read, what="check")
        waiting, sound = damping.load_pending(rootp)
        changes, still_waiting, pending = damping.damp(
            lifecycle_records(active, ev), active, ev, settings, waiting
        )
        deliveries: list[DeliveryOutcome] = []
        try:
            added = notifier_records(con, settings, at)
            if dry_run:
                register_views(con, rootp, extra=[*added, *changes])
            else:
                write_records(rootp, [*added, *changes], at)
                if still_waiting != waiting or not sound:  # after the log: see damping
                    damping.save_pending(rootp, still_waiting)
                register_views(con, rootp)
                if notify and settings.notifiers:
                    firing = _select_states(con, "WHERE status = 'active'")
                    deliveries, _attempts = send_notifications(
                        con,
                        rootp,
                        settings,
                        at,
                        record=lambda recs: write_records(rootp, recs, at),
                        firing=firing,
                    )
                    register_views(con, rootp)
            current = _select_states(con, "WHERE status = 'active'")
        except duckdb.Error as exc:
            raise StoreError(
                f"cannot read the alert log under {rootp / store.ALERTS}: {_first_line(exc)}"
            ) from exc
        if not dry_run:
            _save_last_check(rootp, CheckResult(at, current, changes, deliveries, ev.notes, ev.evaluated))
    current.sort(key=lambda a: (-SEVERITY_RANK.get(a.severity or "", 0), a.rule, a.scope))
    fresh = {f.key: f for f in ev.findings}
    for a in current:  # show the value measured now, not the one at raise time
        f = fresh.get(a.key)
        if f is not None:
            a.value, a.threshold, a.summary, a.description = f.value, f.threshold, f.summary, f.description
    return CheckResult(at, current, changes, deliveries, ev.notes, ev.evaluated, dry_run, pending, added)
