"""Reports as plain data: every ``voicepipe report ...`` view (dashboard, pipeline,
artifacts grid, artifact detail, metrics, events log and single event, alerts,
retries) is a function here that reads the store and returns dicts and lists of
JSON-able values (times are aware UTC datetimes). :mod:`voicepipe_obs.render`
turns them into text; notebooks can call them directly.

Every function takes ``now`` (a frozen clock in tests) and reads only the event
files its time window needs (partition pruning; what only the whole history decides
— artifacts stuck in flight for days, an artifact's earliest receipt — comes from the
artifact index, :mod:`voicepipe_obs.artifact_index`), through its own DuckDB
connection with the same ``events`` (deduplicated by event_id) and ``artifacts``
definitions as :func:`voicepipe_obs.query.connect`. Filter values are bound parameters; sort keys
and other identifiers come from allow-lists. Read-only: never writes under the root.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from . import alerts as _alerts
from . import store
from .errors import EmptyStoreError, NotFoundError, UsageError, VoicepipeError
from .events import (
    ARTIFACT_STATUSES,
    DISAMBIGUATION_EVENT,
    EVENT_TYPES,
    FAILURE_EVENT_TYPES,
    STAGE_COMPLETION_EVENTS,
    STAGE_FAILURE_EVENTS,
    STAGES,
    SUCCESS_EVENT_TYPES,
    TIMED_STAGES,
    closest,
)
from .query import retried_read, vetted

if TYPE_CHECKING:  # pragma: no cover
    import duckdb

    from .config import Settings

log = logging.getLogger("voicepipe_obs.reports")

UTC: Final = dt.timezone.utc
HOUR: Final = dt.timedelta(hours=1)
DAY: Final = dt.timedelta(days=1)

#: Longest filter value accepted (ids, org names, prefixes).
MAX_FILTER_LEN: Final = 256
MAX_LIMIT: Final = 200
#: rows of each stage's "at this stage now" and retry queue that ``report pipeline`` lists
PIPELINE_LIMIT: Final = 20
RETRY_STAGES: Final = ("transcription", "claims_extraction", "entity_resolution", "draft_generation")

#: Columns of a timeline/event-log row (JSON keys; CSV columns of `report events`).
EVENT_COLUMNS: Final = (
    "timestamp",
    "event_type",
    "kind",
    "artifact_id",
    "organization_id",
    "pipeline_stage",
    "duration_ms",
    "error_code",
    "error_message",
    "detail",
    "event_id",
)

#: `report artifacts --sort` keys → column (allow-list; never user text in SQL).
ARTIFACT_SORTS: Final = {
    "created": "received_at",
    "updated": "last_event_at",
    "status": "status",
    "latency": "end_to_end_latency_ms",
    "cost": "total_ai_cost",
    "claims": "claim_count",
    "org": "organization_id",
    "id": "artifact_id",
}
ARTIFACT_COLUMNS: Final = (
    "artifact_id",
    "status",
    "source_channel",
    "coach_user_id",
    "organization_id",
    "claim_count",
    "disambiguation_count",
    "end_to_end_latency_ms",
    "total_ai_cost",
    "received_at",
    "last_event_at",
    "current_stage",
    "failed_stage",
    "error_code",
    "error_message",
    "retry_count",
    "action",
)

#: metrics --range → (length, bucket size)
RANGES: Final = {
    "1h": (HOUR, dt.timedelta(minutes=5)),
    "6h": (6 * HOUR, dt.timedelta(minutes=30)),
    "24h": (24 * HOUR, HOUR),
    "7d": (7 * DAY, DAY),
    "30d": (30 * DAY, DAY),
}


# ------------------------------------------------------------------ thresholds


@dataclass(frozen=True)
class Thresholds:
    """Numbers the reports judge health by (from settings: alerts.failure_rate,
    alerts.latency.multiplier, retry.max_attempts)."""

    failure_warning: float = 0.10
    failure_critical: float = 0.25
    latency_multiplier: float = 2.0
    max_retry_attempts: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        rules = settings.alerts
        return cls(
            failure_warning=rules.failure_rate.warning,
            failure_critical=rules.failure_rate.critical,
            latency_multiplier=rules.latency.multiplier,
            max_retry_attempts=settings.retry.max_attempts,
        )


# ------------------------------------------------------------------ store access


def _empty_message(root: Path) -> str:
    return (
        f"no events under {root}: run `voicepipe demo` to write sample data, "
        "or point VOICEPIPE_DATA (or --data) at your data root"
    )


def has_events(root: Path) -> bool:
    """True when at least one event file exists under the root (cheap)."""
    for part in store.iter_partitions(root, store.EVENTS):
        try:
            if any(n.endswith(".parquet") and not n.startswith(".") for n in os.listdir(part.path)):
                return True
        except OSError:
            continue
    return False


def require_events(root: Path) -> None:
    """Raise :class:`EmptyStoreError` (a friendly one-liner) when there is nothing to report."""
    if not root.is_dir() or not has_events(root):
        raise EmptyStoreError(_empty_message(root))


def _files(root: Path, since: dt.datetime | None, until: dt.datetime | None) -> list[Path]:
    from .query import vetted_files

    return vetted_files(root, store.EVENTS, since=since, until=until)


def event_files(root: Path) -> set[Path]:
    """Every event file under the root now (what ``--follow`` starts after)."""
    return set(store.list_parquet(root, store.EVENTS))


#: Columns the reports read (the timestamps of stage start/end, transcript_duration,
#: ai_model and attributes are only shown by `report event`, which reads every column).
_COLUMNS: Final = (
    "event_id",
    "event_type",
    "timestamp",
    "artifact_id",
    "voice_note_id",
    "organization_id",
    "coach_user_id",
    "source_channel",
    "pipeline_stage",
    "duration_ms",
    "previous_status",
    "new_status",
    "error_message",
    "error_code",
    "claim_count",
    "entity_count",
    "disambiguation_count",
    "draft_count",
    "transcript_word_count",
    "retry_attempt",
    "confidence_score",
    "ai_cost",
    "actor",
    "attributes",
)
_PROJECTION: Final = ", ".join(_COLUMNS)
#: What the dashboard needs of every event in its window (status, stage, latency, cost).
_STATUS_COLUMNS: Final = (
    "event_id",
    "event_type",
    "timestamp",
    "artifact_id",
    "pipeline_stage",
    "new_status",
    "duration_ms",
    "ai_cost",
    "retry_attempt",
)
_SQL_TYPES: Final = {
    "str": "VARCHAR",
    "ts": "TIMESTAMPTZ",
    "f64": "DOUBLE",
    "i32": "INTEGER",
    "map": "MAP(VARCHAR, VARCHAR)",
}


def _projection(columns: Sequence[str]) -> str:
    """The report columns, reading only ``columns`` and NULL (typed) for the rest."""
    from .events import COLUMN_KINDS

    return ", ".join(c if c in columns else f"NULL::{_SQL_TYPES[COLUMN_KINDS[c]]} AS {c}" for c in _COLUMNS)


def _connect(
    files: Sequence[Path],
    *,
    since: dt.datetime | None = None,
    where: str | None = None,
    params: Mapping[str, Any] | None = None,
    materialise: bool = True,
    columns: Sequence[str] = _COLUMNS,
) -> duckdb.DuckDBPyConnection:
    """A private connection over exactly ``files``: ``events_raw`` (every column, as
    stored), ``events`` (deduplicated by event_id, the columns reports use) and
    ``artifacts`` (query.ARTIFACTS_SQL over ``events``).

    With ``materialise`` the files are read once into a temp table (events at or
    after ``since`` that satisfy ``where``; only ``columns``, the others NULL), so a
    report's several queries do not each re-read them. Deduplication keeps unique
    event_ids as they are and collapses only the duplicated ones, which is much
    cheaper than DISTINCT ON over every row.
    """
    from .events import arrow_schema
    from .query import ARTIFACTS_SQL, drop_duplicates, empty_view, parquet_scan, relist, retry_vanished

    conds = ["TRUE"]
    bound: dict[str, Any] = dict(params or {})
    if since is not None:
        conds.append("timestamp >= $since")
        bound["since"] = aware(since)
    if where:
        conds.append(where)

    def build(attempt: int) -> duckdb.DuckDBPyConnection:
        # materialising reads the files now: a file compaction replaced since it was
        # listed means listing again (query.retry_vanished), as the commands do
        con = _cursor()
        try:
            empty_view(con, "_voicepipe_empty_events", arrow_schema())
            scan = parquet_scan(files if attempt == 0 else relist(files))
            con.execute(f"CREATE TEMP VIEW events_raw AS SELECT * FROM {scan}")
            if materialise:
                con.execute(
                    f"CREATE TEMP TABLE events AS SELECT {_projection(columns)} FROM events_raw "
                    f"WHERE {' AND '.join(conds)}",
                    bound,
                )
                drop_duplicates(con, "events")
            else:
                con.execute(
                    f"CREATE TEMP VIEW events AS SELECT DISTINCT ON (event_id) {_PROJECTION} FROM events_raw"
                )
            con.execute(f"CREATE TEMP VIEW artifacts AS {ARTIFACTS_SQL}")
        except BaseException:
            con.close()
            raise
        return con

    return retry_vanished(build, what="report")


def _cursor() -> duckdb.DuckDBPyConnection:
    """A bare connection (no views) for queries that name their files themselves."""
    from .query import session_defaults

    return session_defaults(_database().cursor())


_DATABASE: duckdb.DuckDBPyConnection | None = None


def _database() -> duckdb.DuckDBPyConnection:
    """The process's in-memory DuckDB; each report query set gets its own cursor
    (a connection of its own: temp views and tables are private to it). Opening a
    database costs 20-30 ms, a cursor well under one."""
    import duckdb

    global _DATABASE
    if _DATABASE is None:
        _DATABASE = duckdb.connect()
    return _DATABASE


def _open(root: Path, since: dt.datetime | None) -> duckdb.DuckDBPyConnection:
    require_events(root)
    return _connect(_files(root, since, None), since=since)


def _dicts(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _pop_total(rows: list[dict[str, Any]]) -> int:
    """The ``_total`` (``count(*) OVER ()`` before a LIMIT) of ``rows``, removed from
    each row; 0 for no rows."""
    total = 0
    for row in rows:
        total = int(row.pop("_total"))
    return total


def _one(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
) -> dict[str, Any]:
    rows = _dicts(con, sql, params)
    return rows[0] if rows else {}


# ----------------------------------------------------------------- validation


def check_text(name: str, value: str | None) -> str | None:
    """A free-text filter: bound as a parameter, but bounded in length."""
    if value is None:
        return None
    if len(value) > MAX_FILTER_LEN:
        raise UsageError(f"{name} is too long ({len(value)} characters; at most {MAX_FILTER_LEN})")
    if "\x00" in value:
        raise UsageError(f"{name} contains a NUL character")
    return value


def check_choice(name: str, value: str | None, choices: Sequence[str]) -> str | None:
    if value is None:
        return None
    if value not in choices:
        hint = closest(value[:64], tuple(choices))
        raise UsageError(
            f"unknown {name} {value[:64]!r}"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + f"; choose from {', '.join(choices)}"
        )
    return value


def aware(ts: dt.datetime) -> dt.datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def start_of_day(ts: dt.datetime, tz: dt.tzinfo | None) -> dt.datetime:
    """Midnight of ts's calendar day in ``tz`` (None = local time), as UTC."""
    local = aware(ts).astimezone(tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    # re-resolve the offset at midnight (DST changes during the day)
    if tz is None:
        midnight = midnight.replace(tzinfo=None).astimezone()
    return midnight.astimezone(UTC)


def _floor(ts: dt.datetime, step: dt.timedelta) -> dt.datetime:
    us = store.to_us(ts)
    step_us = int(step.total_seconds() * 1_000_000)
    return store.from_us(us - us % step_us)


# -------------------------------------------------------------- event details


#: Event types the log marks as failures (✗, kind ``failure``) and that
#: ``--errors-only`` keeps: the failure events, the circuit breaker opening and a
#: budget exceeded. One definition for both.
LOG_FAILURE_TYPES: Final = FAILURE_EVENT_TYPES | {"circuit_breaker_opened", "budget_exceeded"}


def event_kind(event_type: str) -> str:
    """success | failure | info (the dashboard's colour code)."""
    if event_type in LOG_FAILURE_TYPES:
        return "failure"
    if event_type in SUCCESS_EVENT_TYPES:
        return "success"
    return "info"


def _dur(ms: Any) -> str:
    from .render import fmt_duration

    return fmt_duration(ms)


def describe_event(ev: Mapping[str, Any]) -> str:
    """A short human detail for an event, e.g. ``5.2s, confidence 0.94``."""
    et = ev.get("event_type")
    parts: list[str] = []

    def add(fmt: str, key: str) -> None:
        value = ev.get(key)
        if value is not None:
            parts.append(fmt.format(value))

    if et == "artifact_received":
        add("via {}", "source_channel")
        add("coach {}", "coach_user_id")
        add("org {}", "organization_id")
    elif et == "artifact_status_changed":
        parts.append(f"{ev.get('previous_status') or '?'} → {ev.get('new_status') or '?'}")
    elif et in ("entity_resolution_completed", DISAMBIGUATION_EVENT):
        if ev.get("duration_ms") is not None:
            parts.append(_dur(ev["duration_ms"]))
        entities = ev.get("entity_count")
        pending = ev.get("disambiguation_count") or 0
        if entities is not None:
            parts.append(f"{max(entities - pending, 0)} auto-resolved")
        if pending:
            parts.append(f"{pending} needs review")
    elif et == "entity_user_resolved":
        add("{} resolved by a reviewer", "disambiguation_count")
    elif et in ("retry_initiated", "retry_succeeded", "retry_failed"):
        add("attempt {}", "retry_attempt")
        add("stage {}", "pipeline_stage")
        add("by {}", "actor")
    else:
        if ev.get("duration_ms") is not None:
            parts.append(_dur(ev["duration_ms"]))
        for key, noun in (
            ("transcript_word_count", "word"),
            ("claim_count", "claim"),
            ("draft_count", "draft"),
        ):
            if ev.get(key) is not None:
                parts.append(f"{ev[key]} {noun}{'' if ev[key] == 1 else 's'}")
        if ev.get("confidence_score") is not None:
            parts.append(f"confidence {ev['confidence_score']:.2f}")
        if et == "rate_limit_hit":
            add("model {}", "ai_model")
    if ev.get("ai_cost") is not None and et != "artifact_received":
        from .render import fmt_money

        parts.append(fmt_money(ev["ai_cost"]))
    attrs = ev.get("attributes")
    if isinstance(attrs, list):  # a MAP as (key, value) pairs
        attrs = dict(attrs)
    if isinstance(attrs, Mapping) and attrs:
        # the circuit breaker's dependency, a budget's figures, your own labels
        parts += [f"{k}={v}" for k, v in sorted(attrs.items(), key=lambda kv: (kv[0] != "dependency", kv[0]))]
    if ev.get("error_code") or ev.get("error_message"):
        err = str(ev.get("error_code") or "error")
        if ev.get("error_message"):
            err += f": {ev['error_message']}"
        parts.append(err)
    return ", ".join(parts)


def _event_row(ev: Mapping[str, Any]) -> dict[str, Any]:
    row = {k: ev.get(k) for k in EVENT_COLUMNS if k not in ("kind", "detail")}
    row["kind"] = event_kind(str(ev.get("event_type")))
    row["detail"] = describe_event(ev)
    return {k: row.get(k) for k in EVENT_COLUMNS}


_EVENT_SELECT = (
    "event_id, event_type, timestamp, artifact_id, organization_id, coach_user_id, source_channel, "
    "pipeline_stage, duration_ms, previous_status, new_status, error_code, error_message, claim_count, "
    "entity_count, disambiguation_count, draft_count, transcript_word_count, retry_attempt, "
    "confidence_score, ai_cost, actor"
)


#: The event log reads these (the report columns, the model and your attributes,
#: which its details show).
_LOG_SELECT = _EVENT_SELECT + ", ai_model, attributes"


def _stage_case(mapping: Mapping[str, Sequence[str] | str]) -> str:
    """CASE event_type WHEN ... THEN stage (identifiers from the vocabulary only)."""
    from .sql import sql_str

    whens = []
    for stage, evs in mapping.items():
        for ev in [evs] if isinstance(evs, str) else evs:
            whens.append(f"WHEN {sql_str(ev)} THEN {sql_str(stage)}")
    return "CASE event_type " + " ".join(whens) + " END"


_COMPLETION_STAGE = _stage_case(STAGE_COMPLETION_EVENTS)
_FAILURE_STAGE = _stage_case(STAGE_FAILURE_EVENTS)


def _health(
    failure_rate: float | None, recent_ms: float | None, base_ms: float | None, th: Thresholds
) -> str:
    if failure_rate is None and base_ms is None:
        return "none"
    if failure_rate is not None and failure_rate > th.failure_critical:
        return "red"
    if failure_rate is not None and failure_rate > th.failure_warning:
        return "yellow"
    if recent_ms is not None and base_ms and recent_ms > th.latency_multiplier * base_ms:
        return "yellow"
    return "green"


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or not den:
        return None
    return float(num) / float(den)


#: What a printed retry command says in place of ``--app``'s module when neither
#: ``retry.app`` nor the data root tells which module registers the handlers.
APP_PLACEHOLDER: Final = "MODULE"


@dataclass(frozen=True)
class RetryCommand:
    """How the ``voicepipe retry`` commands a report suggests are spelt, so that one
    pasted into the shell the report ran in works: ``--data`` and ``--config`` when
    the report was given them, and ``--app`` unless ``retry.app`` is configured.

    ``app`` is the module for ``--app`` (None: leave ``--app`` out, because
    ``retry.app`` names it); :data:`APP_PLACEHOLDER` when it is not known.
    """

    data: str | None = None
    config: str | None = None
    app: str | None = APP_PLACEHOLDER

    @classmethod
    def for_root(
        cls,
        root: Path,
        *,
        data_flag: bool | None = None,
        config: str | None = None,
        configured_app: str | None = None,
    ) -> RetryCommand:
        """The spelling for reports on ``root``.

        ``data_flag``: whether the root was given as ``--data`` (then the commands
        carry it); None (a library call) carries it unless ``root`` is what
        ``voicepipe`` finds by itself ($VOICEPIPE_DATA, else ./voicepipe-data).
        ``config``: the ``--config FILE`` the report was given. ``configured_app``:
        ``retry.app`` from the configuration. Without it, a root written by
        ``voicepipe demo`` gets the demo's own handler module, anything else
        :data:`APP_PLACEHOLDER`.
        """
        if data_flag is None:
            try:
                data_flag = Path(root).resolve() != store.resolve_root(None).resolve()
            except OSError:  # pragma: no cover - an unresolvable path
                data_flag = True
        app: str | None = None
        if not configured_app:
            from ._examples.demo import APP_MODULE, MARKER

            app = APP_MODULE if (Path(root) / MARKER).is_file() else APP_PLACEHOLDER
        return cls(data=str(root) if data_flag else None, config=config, app=app)

    @property
    def needs_app(self) -> bool:
        """True when the commands carry :data:`APP_PLACEHOLDER` for the user to replace."""
        return self.app == APP_PLACEHOLDER

    def command(self, artifact_id: str, *, full: bool = False) -> str:
        """``voicepipe [--data ROOT] [--config FILE] retry ID [--full] [--app MODULE]``,
        every word shell-quoted."""
        import shlex

        argv = ["voicepipe"]
        if self.data is not None:
            argv += ["--data", self.data]
        if self.config is not None:
            argv += ["--config", self.config]
        argv += ["retry", artifact_id]
        if full:
            argv.append("--full")
        if self.app:
            argv += ["--app", self.app]
        return shlex.join(argv)


#: What reports say under retry commands that carry :data:`APP_PLACEHOLDER`.
APP_NOTE: Final = (
    f"{APP_PLACEHOLDER}: the module that registers your retry handlers "
    "(set retry.app in voicepipe.toml to leave --app out)"
)


def retry_options(
    artifact: Mapping[str, Any], th: Thresholds, command: RetryCommand | None = None
) -> list[dict[str, str]]:
    """What `voicepipe retry` can do for an artifact in its current state, each
    with the command that does it (spelt by ``command``; default: bare)."""
    status = artifact.get("status")
    if status != "failed":
        return []
    attempts = int(artifact.get("retry_count") or 0)
    if attempts >= th.max_retry_attempts:
        return []
    cmd = command or RetryCommand(app=None)
    aid = str(artifact.get("artifact_id"))
    out = []
    failed = artifact.get("failed_stage")
    if failed in RETRY_STAGES:
        out.append({"stage": str(failed), "command": cmd.command(aid)})
    out.append({"stage": "full", "command": cmd.command(aid, full=True)})
    return out


def _retry_note(command: RetryCommand, options: bool) -> str | None:
    return APP_NOTE if options and command.needs_app else None


# ------------------------------------------------ state over the whole retention

#: What the dashboard's queues read of an open artifact (besides its status).
_QUEUE_FOLD: Final = ("current_stage",)
#: ... and what the pipeline report's "at this stage now" reads (time in stage, who, where).
_AT_STAGE_FOLD: Final = (
    "current_stage",
    "current_stage_at",
    "organization_id",
    "coach_user_id",
    "source_channel",
)


def _open_artifacts(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    *,
    now: dt.datetime,
    fold: Sequence[str],
    keep_partials: str | None = None,
    include: str | None = None,
) -> str:
    """Temp table ``_vp_open`` on ``con``: the ``artifacts`` rows (status,
    received_at and the fold's columns ``fold``; the others NULL) of every artifact
    whose status is neither completed nor failed and that was received by ``now``,
    however long ago it stalled — what alerts.py's queue_depth and stuck rules count.
    From the artifact index where it is current (:mod:`voicepipe_obs.artifact_index`:
    hours it does not cover are read from their events). ``keep_partials``: keep the
    partial rows read as that temp table — the open artifacts' and those of
    ``include`` (a table with an artifact_id column; see :func:`_earliest_receipts`)."""
    from . import artifact_index
    from .query import retry_vanished, vetted_files

    # every event file (within retention), listed again when compaction replaced one
    # meanwhile (as _connect does)
    retry_vanished(
        lambda _attempt: artifact_index.open_artifacts_table(
            con, root, vetted_files(root), "_vp_open_all", fold, keep_partials=keep_partials, include=include
        ),
        what="report",
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _vp_open AS SELECT * FROM _vp_open_all WHERE received_at <= $now",
        {"now": now},
    )
    con.execute("DROP TABLE _vp_open_all")
    return "_vp_open"


def _keep_deciding_outcomes(
    con: duckdb.DuckDBPyConnection, root: Path, until: Mapping[str, dt.datetime]
) -> None:
    """Drop from ``_vp_outcomes`` the outcomes that do not decide their artifact's
    state as of their period's end (``until``: period → time): a stale job's
    failure arriving today for an artifact whose newer attempt completed yesterday
    is no failure of today (as alerts.py's failure_rate;
    :func:`artifact_index.deciding_outcome_keys`)."""
    from . import artifact_index
    from .query import retry_vanished, vetted_files

    for period, end in until.items():
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _vp_among AS SELECT artifact_id FROM _vp_outcomes "
            "WHERE period = $p AND artifact_id IS NOT NULL",
            {"p": period},
        )

        def decide(_attempt: int, end: dt.datetime = end) -> int:
            return artifact_index.deciding_outcome_keys(
                con, root, vetted_files(root), "_vp_deciding", "_vp_among", until=end
            )

        retry_vanished(decide, what="report")
        con.execute(
            "DELETE FROM _vp_outcomes o WHERE period = $p AND artifact_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM _vp_deciding d WHERE d.artifact_id = o.artifact_id AND d.key = o.key)",
            {"p": period},
        )
    con.execute("DROP TABLE IF EXISTS _vp_among")
    con.execute("DROP TABLE IF EXISTS _vp_deciding")


def _earliest_receipts(con: duckdb.DuckDBPyConnection, partials: str, of: str) -> str:
    """Temp table ``_vp_receipts`` (artifact_id, received_at) on ``con``: the
    earliest ``artifact_received`` of each artifact of ``of`` (a table with an
    artifact_id column), wherever it is in the store; artifacts without one are left
    out. ``partials``: partial rows of the artifact index over every event file, with
    ``received_at`` (each hour's earliest receipt), of at least the artifacts of
    ``of`` (kept by :func:`_open_artifacts` with ``include=of``)."""
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _vp_receipts AS
        SELECT artifact_id, min(received_at) AS received_at
        FROM {partials} SEMI JOIN (SELECT artifact_id FROM {of}) USING (artifact_id)
        WHERE received_at IS NOT NULL GROUP BY artifact_id"""
    )
    return "_vp_receipts"


# ------------------------------------------------------------------ dashboard


@retried_read
def dashboard(
    root: Path,
    *,
    now: dt.datetime,
    tz: dt.tzinfo | None = UTC,
    thresholds: Thresholds | None = None,
    recent: int = 20,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Status cards, the per-stage flow graph, active alerts (and how many raises
    wait for their rule's ``for_minutes``: ``alerts_pending``, see
    :func:`pending_alerts`; ``settings`` are the ones ``check`` runs with) and the
    latest events.

    "Today" is the calendar day in ``tz`` (None = local time). The cards count
    artifacts, not events: an artifact finished in a period counts once, by its
    latest outcome in it (one that failed, was retried and completed is completed;
    one that failed four times is one failure), and only if that outcome decides
    its state (a stale job's late failure after a newer attempt completed is none). The end-to-end latency of today's
    completions runs from each artifact's earliest receipt, wherever that was.
    Active artifacts and the per-stage queues are every artifact whose status is
    neither completed nor failed, however long ago it stalled (:func:`_open_artifacts`,
    what alerts.py's queue_depth and stuck rules count).
    """
    th = thresholds or Thresholds()
    now = aware(now)
    today = start_of_day(now, tz)
    yesterday = start_of_day(today - HOUR, tz)
    day_ago = now - DAY
    window = min(yesterday, day_ago)
    require_events(root)
    con = _connect(_files(root, window, None), since=window, columns=_STATUS_COLUMNS)
    # each artifact finished in a period, by its latest outcome there (an outcome
    # without an artifact_id counts as an artifact of its own); latest by retry
    # generation, then time, as the artifacts view: a stale job's late outcome does
    # not replace the newer attempt's (artifact_index.KEY)
    from .artifact_index import KEY as key

    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _vp_outcomes AS
        WITH o AS (
          SELECT 'today' AS period, coalesce(artifact_id, event_id) AS aid, artifact_id, event_type, timestamp,
                 {key} AS key
          FROM events WHERE event_type IN ('artifact_completed', 'artifact_failed')
            AND timestamp >= $today AND timestamp <= $now
          UNION ALL
          SELECT 'yesterday', coalesce(artifact_id, event_id), artifact_id, event_type, timestamp, {key}
          FROM events WHERE event_type IN ('artifact_completed', 'artifact_failed')
            AND timestamp >= $yday AND timestamp < $yday_now)
        SELECT period, aid, any_value(artifact_id) AS artifact_id,
               arg_max(event_type, key) AS outcome, arg_max(timestamp, key) AS outcome_at, max(key) AS key
        FROM o GROUP BY period, aid
        """,
        {"today": today, "now": now, "yday": yesterday, "yday_now": now - DAY},
    )
    _keep_deciding_outcomes(con, root, {"today": now, "yesterday": now - DAY})
    c = _one(
        con,
        """
        SELECT
          count(*) FILTER (WHERE period = 'today' AND outcome = 'artifact_completed') AS completed_today,
          count(*) FILTER (WHERE period = 'yesterday' AND outcome = 'artifact_completed') AS completed_yesterday,
          count(*) FILTER (WHERE period = 'today' AND outcome = 'artifact_failed') AS failed_today,
          (SELECT sum(ai_cost) FROM events WHERE timestamp >= $today AND timestamp <= $now) AS cost_today,
          (SELECT arg_max(event_type, timestamp) FROM events WHERE timestamp <= $now
             AND event_type IN ('circuit_breaker_opened', 'circuit_breaker_closed')) AS breaker_event,
          (SELECT max(timestamp) FROM events WHERE timestamp <= $now
             AND event_type IN ('circuit_breaker_opened', 'circuit_breaker_closed')) AS breaker_at
        FROM _vp_outcomes
        """,
        {"today": today, "now": now},
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _vp_completed_today AS SELECT artifact_id, outcome_at FROM _vp_outcomes "
        "WHERE period = 'today' AND outcome = 'artifact_completed' AND artifact_id IS NOT NULL"
    )
    # one read of the index (or of the events of hours it does not cover) for both
    open_table = _open_artifacts(
        con, root, now=now, fold=_QUEUE_FOLD, keep_partials="_vp_parts", include="_vp_completed_today"
    )
    receipts = _earliest_receipts(con, "_vp_parts", "_vp_completed_today")
    con.execute("DROP TABLE _vp_parts")
    lat = _one(
        con,
        f"""
        SELECT avg(epoch_us(o.outcome_at) - epoch_us(r.received_at)) / 1000.0 AS ms, count(*) AS n
        FROM _vp_completed_today o JOIN {receipts} r USING (artifact_id)
        """,
    )
    queues = {
        r["stage"]: r["n"]
        for r in _dicts(
            con,
            f"""
            SELECT CASE WHEN status = 'received' THEN 'ingestion' ELSE coalesce(current_stage, 'ingestion') END
                   AS stage, count(*) AS n
            FROM {open_table} GROUP BY ALL
            """,
        )
    }
    stage_rows = {
        r["stage"]: r
        for r in _dicts(
            con,
            f"""
            SELECT coalesce({_COMPLETION_STAGE}, {_FAILURE_STAGE}) AS stage,
              count(*) FILTER (WHERE {_COMPLETION_STAGE} IS NOT NULL) AS completions,
              count(*) FILTER (WHERE {_FAILURE_STAGE} IS NOT NULL) AS failures,
              avg(duration_ms) FILTER (WHERE {_COMPLETION_STAGE} IS NOT NULL) AS avg_latency_ms,
              avg(duration_ms) FILTER (WHERE {_COMPLETION_STAGE} IS NOT NULL AND timestamp >= $hour_ago)
                AS recent_latency_ms
            FROM events WHERE timestamp >= $day_ago AND timestamp <= $now
              AND coalesce({_COMPLETION_STAGE}, {_FAILURE_STAGE}) IS NOT NULL
            GROUP BY ALL
            """,
            {"day_ago": day_ago, "now": now, "hour_ago": now - HOUR},
        )
    }
    received_24h = _one(
        con,
        "SELECT count(*) AS n FROM events WHERE event_type = 'artifact_received' "
        "AND timestamp >= $day_ago AND timestamp <= $now",
        {"day_ago": day_ago, "now": now},
    )["n"]
    stages: list[dict[str, Any]] = [
        {
            "stage": "ingestion",
            "queue_depth": int(queues.get("ingestion", 0)),
            "health": "green" if received_24h else "none",
            "avg_latency_ms": None,
            "throughput_per_hour": received_24h / 24.0,
            "failure_rate": None,
        }
    ]
    for stage in TIMED_STAGES:
        r = stage_rows.get(stage, {})
        done, failed = int(r.get("completions") or 0), int(r.get("failures") or 0)
        rate = _ratio(failed, done + failed)
        stages.append(
            {
                "stage": stage,
                "queue_depth": int(queues.get(stage, 0)),
                "health": _health(rate, r.get("recent_latency_ms"), r.get("avg_latency_ms"), th),
                "avg_latency_ms": r.get("avg_latency_ms"),
                "throughput_per_hour": done / 24.0,
                "failure_rate": rate,
            }
        )
    completed, failed_today = int(c.get("completed_today") or 0), int(c.get("failed_today") or 0)
    yday = int(c.get("completed_yesterday") or 0)
    breaker = c.get("breaker_event")
    breaker_at = c.get("breaker_at")
    active = active_alerts(root, now=now)
    if breaker is None:
        # no breaker event in the window: a breaker that opened before it and is
        # still open is what `voicepipe check` keeps as an active circuit_breaker
        # alert (the alert log is small; reading every event file is not)
        opened = [
            a for a in active if a.get("rule") == "circuit_breaker" and a.get("organization_id") is None
        ]
        if opened:
            breaker, breaker_at = "circuit_breaker_opened", opened[0].get("raised_at")
    waiting, _sound = pending_alerts(root, now=now, settings=settings, active=active, judge=False)
    cards = {
        "active_artifacts": int(sum(queues.values())),
        "completed_today": completed,
        "completed_yesterday_same_time": yday,
        "completed_change": _ratio(completed - yday, yday),
        "failed_today": failed_today,
        "failure_rate_today": _ratio(failed_today, completed + failed_today),
        "avg_end_to_end_latency_ms_today": lat.get("ms"),
        "ai_service_status": None
        if breaker is None
        else ("open" if breaker.endswith("opened") else "closed"),
        "ai_service_changed_at": breaker_at,
        "cost_today": c.get("cost_today") or 0.0,
    }
    # only the rows: counting every matching event (the total) read the whole store
    recent_rows = events(root, now=now, limit=recent, count=False)["rows"]
    return {
        "generated_at": now,
        "window_start": window,
        "today_start": today,
        "cards": cards,
        "stages": stages,
        "alerts": active,
        "alerts_pending": sum(1 for w in waiting if w["kind"] == "raise" and not w["stale"]),
        "recent_events": recent_rows,
    }


# ------------------------------------------------------------------- pipeline


@retried_read
def pipeline(
    root: Path,
    *,
    now: dt.datetime,
    stage: str | None = None,
    since: dt.datetime | None = None,
    thresholds: Thresholds | None = None,
    retry_command: RetryCommand | None = None,
    limit: int | None = PIPELINE_LIMIT,
) -> dict[str, Any]:
    """Per stage: artifacts at it now (time in stage, coach, org, channel: every
    artifact in flight there, however long ago it got stuck — :func:`_open_artifacts`),
    hourly latency over the last 24 hours, error breakdown by error_code, and the
    retry queue (artifacts that failed at it) with the commands that retry them
    (spelt by ``retry_command``; default :meth:`RetryCommand.for_root`). ``since``
    bounds the window of the figures, errors and retry queue (default 24h).

    Each stage's two lists hold at most ``limit`` rows (None: all) — the longest in
    the stage, the latest failures — and ``in_progress_total`` /
    ``retry_queue_total`` count them all (a stalled stage can hold tens of
    thousands)."""
    th = thresholds or Thresholds()
    cmd = retry_command or RetryCommand.for_root(root)
    check_choice("stage", stage, TIMED_STAGES)
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be at least 1 (None for all), not {limit}")
    top = "" if limit is None else f"LIMIT {int(limit)}"
    now = aware(now)
    since = aware(since) if since is not None else now - DAY
    chart_start = _floor(now, HOUR) - 23 * HOUR
    con = _open(root, min(since, chart_start))
    open_table = _open_artifacts(con, root, now=now, fold=_AT_STAGE_FOLD)
    stages = [stage] if stage else list(TIMED_STAGES)
    out = []
    queues: list[dict[str, Any]] = []  # every stage's retry queue
    for st in stages:
        done = list(STAGE_COMPLETION_EVENTS[st])
        fail = STAGE_FAILURE_EVENTS[st]
        at_stage = _dicts(
            con,
            f"""
            SELECT artifact_id, status, coach_user_id, organization_id, source_channel,
                   current_stage_at AS entered_at,
                   (epoch_us($now) - epoch_us(current_stage_at)) / 1000.0 AS elapsed_ms,
                   count(*) OVER () AS _total
            FROM {open_table} WHERE current_stage = $stage
            ORDER BY current_stage_at, artifact_id {top}
            """,
            {"now": now, "stage": st},
        )
        hours = {
            r["bucket"]: r
            for r in _dicts(
                con,
                """
                SELECT (epoch_us(timestamp) - epoch_us($start)) // 3600000000 AS bucket, count(*) AS n,
                       avg(duration_ms) AS avg_ms, quantile_cont(duration_ms, 0.95) AS p95_ms
                FROM events WHERE event_type IN (SELECT unnest($types::VARCHAR[]))
                  AND timestamp >= $start AND timestamp <= $now
                GROUP BY ALL
                """,
                {"start": chart_start, "now": now, "types": done},
            )
        }
        chart = [
            {
                "hour_start": chart_start + i * HOUR,
                "count": int(hours[i]["n"]) if i in hours else 0,
                "avg_latency_ms": hours[i]["avg_ms"] if i in hours else None,
                "p95_latency_ms": hours[i]["p95_ms"] if i in hours else None,
            }
            for i in range(24)
        ]
        summary = _one(
            con,
            """
            SELECT count(*) FILTER (WHERE event_type IN (SELECT unnest($types::VARCHAR[]))) AS completions,
                   count(*) FILTER (WHERE event_type = $fail) AS failures,
                   avg(duration_ms) FILTER (WHERE event_type IN (SELECT unnest($types::VARCHAR[])))
                     AS avg_latency_ms,
                   quantile_cont(duration_ms, 0.95) FILTER (
                     WHERE event_type IN (SELECT unnest($types::VARCHAR[]))) AS p95_latency_ms
            FROM events WHERE timestamp >= $since AND timestamp <= $now
            """,
            {"types": done, "fail": fail, "since": since, "now": now},
        )
        errors = _dicts(
            con,
            """
            SELECT coalesce(error_code, 'unknown') AS error_code, count(*) AS count,
                   max(timestamp) AS last_seen, arg_max(error_message, timestamp) AS example_message
            FROM events WHERE event_type = $fail AND timestamp >= $since AND timestamp <= $now
            GROUP BY ALL ORDER BY count DESC, error_code
            """,
            {"fail": fail, "since": since, "now": now},
        )
        queue = _dicts(
            con,
            f"""
            SELECT artifact_id, organization_id, coach_user_id, failed_at, error_code, error_message, retry_count,
                   count(*) OVER () AS _total
            FROM artifacts
            WHERE status = 'failed' AND failed_stage = $stage AND failed_at >= $since AND failed_at <= $now
            ORDER BY failed_at DESC, artifact_id {top}
            """,
            {"stage": st, "since": since, "now": now},
        )
        at_stage_total, queue_total = _pop_total(at_stage), _pop_total(queue)
        for q in queue:
            q["retry_options"] = retry_options({**q, "status": "failed", "failed_stage": st}, th, cmd)
        queues += queue
        completions, failures = int(summary.get("completions") or 0), int(summary.get("failures") or 0)
        out.append(
            {
                "stage": st,
                "completions": completions,
                "failures": failures,
                "failure_rate": _ratio(failures, completions + failures),
                "avg_latency_ms": summary.get("avg_latency_ms"),
                "p95_latency_ms": summary.get("p95_latency_ms"),
                "in_progress": at_stage,
                "in_progress_total": at_stage_total,
                "latency_by_hour": chart,
                "errors": errors,
                "retry_queue": queue,
                "retry_queue_total": queue_total,
            }
        )
    note = _retry_note(cmd, any(q["retry_options"] for q in queues))
    return {"generated_at": now, "since": since, "stages": out, "retry_note": note}


# ------------------------------------------------------------------ artifacts


@retried_read
def artifacts(
    root: Path,
    *,
    now: dt.datetime,
    status: str | None = None,
    org: str | None = None,
    channel: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    search: str | None = None,
    sort: str = "created",
    descending: bool = True,
    limit: int = 50,
    page: int = 1,
    expanded: bool = False,
    thresholds: Thresholds | None = None,
    retry_command: RetryCommand | None = None,
) -> dict[str, Any]:
    """The artifact grid: artifacts received in [since, until), filtered, sorted,
    one page of at most ``limit`` rows; ``next_page`` is None on the last page,
    ``last_page`` the number of the last one. ``expanded`` adds each row's timeline
    and retry commands (spelt by ``retry_command``; default
    :meth:`RetryCommand.for_root`)."""
    th = thresholds or Thresholds()
    cmd = retry_command or RetryCommand.for_root(root)
    check_choice("status", status, ARTIFACT_STATUSES)
    check_choice("sort key", sort, tuple(ARTIFACT_SORTS))
    org, channel, search = (
        check_text("--org", org),
        check_text("--channel", channel),
        check_text("--search", search),
    )
    if not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"--limit must be between 1 and {MAX_LIMIT} (use --page for more)")
    if page < 1:
        raise UsageError("--page must be 1 or more")
    now = aware(now)
    since = aware(since) if since is not None else None
    until = aware(until) if until is not None else now
    require_events(root)
    files = _files(root, since, None)
    scan_where, scan_params = _artifact_prefilter(files, since, status, search)
    con = _connect(files, since=since, where=scan_where, params=scan_params)
    where = ["artifact_id IN (SELECT artifact_id FROM events WHERE event_type = 'artifact_received'"]
    params: dict[str, Any] = {"until": until}
    recv = " AND timestamp < $until"
    if since is not None:
        recv += " AND timestamp >= $since"
        params["since"] = since
    where[0] += recv + ")"
    for key, col, value in (
        ("status", "status", status),
        ("org", "organization_id", org),
        ("channel", "source_channel", channel),
    ):
        if value is not None:
            where.append(f"{col} = ${key}")
            params[key] = value
    if search is not None:
        where.append("starts_with(artifact_id, $search)")
        params["search"] = search
    col = ARTIFACT_SORTS[sort]
    order = (
        f"{col} {'DESC' if descending else 'ASC'} NULLS LAST, artifact_id {'DESC' if descending else 'ASC'}"
    )
    cond = " AND ".join(where)
    total = int(_one(con, f"SELECT count(*) AS n FROM artifacts WHERE {cond}", params)["n"])
    rows = _dicts(
        con,
        f"SELECT * FROM artifacts WHERE {cond} ORDER BY {order} LIMIT $limit OFFSET $offset",
        {**params, "limit": limit, "offset": (page - 1) * limit},
    )
    out_rows = []
    for r in rows:
        row = {k: r.get(k) for k in ARTIFACT_COLUMNS if k != "action"}
        opts = retry_options(r, th, cmd)
        row["action"] = "retry" if opts else None
        if expanded:
            row["entity_count"] = r.get("entity_count")
            row["draft_count"] = r.get("draft_count")
            row["retry_options"] = opts
        out_rows.append(row)
    if expanded and out_rows:
        ids = [str(r["artifact_id"]) for r in out_rows]
        timeline: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for ev in _dicts(
            con,
            f"SELECT {_EVENT_SELECT} FROM events WHERE artifact_id IN (SELECT unnest($ids::VARCHAR[])) "
            "ORDER BY timestamp, event_id",
            {"ids": ids},
        ):
            timeline[ev["artifact_id"]].append(_event_row(ev))
        for row in out_rows:
            row["timeline"] = timeline[str(row["artifact_id"])]
    offset = (page - 1) * limit
    return {
        "generated_at": now,
        "filters": {
            "status": status,
            "org": org,
            "channel": channel,
            "since": since,
            "until": until,
            "search": search,
            "sort": sort,
            "descending": descending,
        },
        "total": total,
        "page": page,
        "limit": limit,
        "first": offset + 1 if rows else 0,
        "last": offset + len(rows) if rows else 0,
        "past_end": not rows and total > 0,
        "next_page": page + 1 if offset + len(rows) < total else None,
        "last_page": max(1, -(-total // limit)),
        "rows": out_rows,
        "retry_note": _retry_note(cmd, expanded and any(r.get("retry_options") for r in out_rows)),
    }


#: status → event types of which an artifact in that status has at least one.
_STATUS_EVIDENCE: Final = {
    "failed": (*sorted(STAGE_FAILURE_EVENTS.values()), "artifact_failed"),
    "completed": ("artifact_completed",),
    "retrying": ("retry_initiated",),
}
#: Above this many candidate ids the prefilter is not worth its SQL.
_MAX_PREFILTER_IDS: Final = 1000


def _artifact_prefilter(
    files: Sequence[Path], since: dt.datetime | None, status: str | None, search: str | None
) -> tuple[str | None, dict[str, Any]]:
    """A filter for the grid's scan that keeps only artifacts that can match:
    those with an id prefix of ``search``, and those with an event that ``status``
    implies (found by a cheap two-column scan). Bound parameters throughout; the
    id list becomes an IN list the Parquet reader can prune row groups with."""
    from .query import parquet_scan

    conds: list[str] = []
    params: dict[str, Any] = {}
    if search is not None:
        conds.append("starts_with(artifact_id, $search)")
        params["search"] = search
    evidence = _STATUS_EVIDENCE.get(status or "")
    if evidence and files:
        con = _connect([], materialise=False)
        sql = (
            f"SELECT DISTINCT artifact_id FROM {parquet_scan(files)} "
            "WHERE event_type IN (SELECT unnest($types::VARCHAR[])) AND artifact_id IS NOT NULL"
        )
        bound: dict[str, Any] = {"types": list(evidence)}
        if since is not None:
            sql += " AND timestamp >= $since"
            bound["since"] = since
        ids = [r[0] for r in con.execute(sql, bound).fetchall()]
        if not ids:
            conds.append("FALSE")
        elif len(ids) <= _MAX_PREFILTER_IDS:
            names = [f"id{i}" for i in range(len(ids))]
            conds.append(f"artifact_id IN ({', '.join('$' + n for n in names)})")
            params.update(zip(names, ids, strict=True))
    return (" AND ".join(conds) if conds else None), params


# ------------------------------------------------------------ artifact detail


def _day_groups(root: Path, since: dt.datetime | None = None) -> list[list[Path]]:
    """Event files grouped by day partition, newest day first (not yet vetted)."""
    by_day: dict[str, list[Path]] = {}
    for f in store.list_parquet(root, store.EVENTS, since=since):
        by_day.setdefault(f.parent.parent.name, []).append(f)
    return [by_day[d] for d in sorted(by_day, reverse=True)]


#: Hour partitions searched one by one (newest first) before whole days.
RECENT_HOURS: Final = 6


def _search_groups(root: Path) -> Iterator[list[Path]]:
    """Event files newest first, listed lazily: the latest RECENT_HOURS hour
    partitions one at a time (a recent artifact is found after a few small reads),
    then the rest a day at a time."""
    base = root / store.EVENTS
    try:
        dates = sorted((d for d in os.listdir(base) if d.startswith("date=")), reverse=True)
    except OSError:
        return
    hours_done = 0
    for date in dates:
        try:
            hours = sorted((h for h in os.listdir(base / date) if h.startswith("hour=")), reverse=True)
        except OSError:
            continue
        rest: list[Path] = []
        for hour in hours:
            hdir = base / date / hour
            try:
                names = sorted(
                    n for n in os.listdir(hdir) if n.endswith(".parquet") and not n.startswith(".")
                )
            except OSError:
                continue
            if not names:
                continue
            files = [hdir / n for n in names]
            if hours_done < RECENT_HOURS:
                hours_done += 1
                yield files
            else:
                rest.extend(files)
        if rest:
            yield rest


def _artifact_connection(root: Path, artifact_id: str) -> duckdb.DuckDBPyConnection | None:
    """A connection whose ``events`` hold exactly one artifact's events, or None.

    Searches partitions newest first (hours, then days) and stops at the one
    holding the artifact's artifact_received (nothing of it can be older), so
    looking up a recent artifact reads an hour or a day of files, not the store. Within a day, DuckDB skips
    row groups whose artifact_id min/max exclude the id (compacted files are sorted
    by artifact_id, which makes that skip effective).
    """
    from .query import parquet_scan

    con = _connect([], materialise=True)
    found = False
    for day in _search_groups(root):
        good = vetted(day)
        if not good:
            continue
        con.execute(
            f"INSERT INTO events SELECT DISTINCT ON (event_id) {_PROJECTION} FROM {parquet_scan(good)} "
            "WHERE artifact_id = $id AND event_id NOT IN (SELECT event_id FROM events)",
            {"id": artifact_id},
        )
        row = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE event_type = 'artifact_received') FROM events"
        ).fetchone()
        assert row is not None
        found = row[0] > 0
        if row[1]:
            break
    return con if found else None


@retried_read
def artifact_detail(
    root: Path,
    artifact_id: str,
    *,
    now: dt.datetime,
    thresholds: Thresholds | None = None,
    retry_command: RetryCommand | None = None,
) -> dict[str, Any]:
    """One artifact: header (status, channel, coach, org, times, cost), its event
    timeline with human details, the retry options its state allows (commands spelt
    by ``retry_command``; default :meth:`RetryCommand.for_root`), and its retry
    history. Raises :class:`NotFoundError` for an unknown id."""
    th = thresholds or Thresholds()
    cmd = retry_command or RetryCommand.for_root(root)
    check_text("artifact id", artifact_id)
    require_events(root)
    now = aware(now)
    con = _artifact_connection(root, artifact_id)
    if con is None:
        raise NotFoundError(
            f"no events for artifact {artifact_id[:80]!r} under {root}; "
            "find ids with `voicepipe report artifacts --search PREFIX`"
        )
    head = _one(con, "SELECT * FROM artifacts WHERE artifact_id = $id", {"id": artifact_id})
    timeline = [
        _event_row(ev)
        for ev in _dicts(con, f"SELECT {_EVENT_SELECT} FROM events ORDER BY timestamp, event_id")
    ]
    processing_ms = head.get("end_to_end_latency_ms")
    if processing_ms is None and head.get("received_at") is not None:
        end = head.get("failed_at") or head.get("last_event_at")
        if head.get("status") not in ("completed", "failed"):
            end = now
        processing_ms = (store.to_us(aware(end or now)) - store.to_us(head["received_at"])) / 1000.0
    header = {
        k: head.get(k)
        for k in (
            "artifact_id",
            "status",
            "source_channel",
            "coach_user_id",
            "organization_id",
            "voice_note_id",
            "current_stage",
            "failed_stage",
            "error_code",
            "error_message",
            "received_at",
            "completed_at",
            "failed_at",
            "last_event_at",
            "end_to_end_latency_ms",
            "claim_count",
            "entity_count",
            "disambiguation_count",
            "draft_count",
            "total_ai_cost",
            "retry_count",
            "event_count",
        )
    }
    header["processing_ms"] = processing_ms
    retries = _retry_rows(con)[::-1]  # oldest first, beside the timeline
    options = retry_options(head, th, cmd)
    return {
        "generated_at": now,
        "artifact": header,
        "timeline": timeline,
        "retry_options": options,
        "retry_note": _retry_note(cmd, bool(options)),
        "retries": retries,
    }


# -------------------------------------------------------------------- metrics


def _through(now: dt.datetime) -> dt.datetime:
    """The exclusive end of a window that counts events up to and including ``now``
    (as the dashboard and pipeline reports do)."""
    return now + dt.timedelta(microseconds=1)


def _sums(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Range-level figures that per-bucket rows add up to exactly: counts and cost
    summed, the overall failure rate from the summed counts, and the auto-resolution
    rate from each bucket's Σ(entity_count − disambiguation_count) (its rate times
    its own Σ entity_count, an integer) over the summed Σ entity_count.

    Nothing else combines: a percentile of a range is not any mean of its buckets'
    percentiles, and snapshots keep no count behind the latency averages and the
    stage failure rates (see :data:`~voicepipe_obs.aggregate.LATENCY_METRICS`)."""
    out: dict[str, Any] = {
        key: sum(int(r.get(key) or 0) for r in rows)
        for key in (
            "artifacts_received",
            "artifacts_completed",
            "artifacts_failed",
            "total_entities_resolved",
        )
    }
    out["total_ai_cost"] = sum(float(r.get("total_ai_cost") or 0.0) for r in rows)
    out["overall_failure_rate"] = _ratio(
        out["artifacts_failed"], out["artifacts_completed"] + out["artifacts_failed"]
    )
    rated = [
        r for r in rows if r.get("auto_resolution_rate") is not None and r.get("total_entities_resolved")
    ]
    out["auto_resolution_rate"] = _ratio(
        sum(round(float(r["auto_resolution_rate"]) * int(r["total_entities_resolved"])) for r in rated),
        sum(int(r["total_entities_resolved"]) for r in rated),
    )
    return out


#: The range-level figures metrics shows that need raw events over the whole range
#: (see :func:`voicepipe_obs.aggregate.window_latency`); listed under ``unavailable``
#: when part of a 7d/30d range is past event retention.
RANGE_LATENCY_FIGURES: Final = (
    "avg_end_to_end_latency_ms",
    "p95_end_to_end_latency_ms",
    *(f"{kind}_{st}_latency_ms" for st in TIMED_STAGES for kind in ("avg", "p95")),
    *(f"{st}_failure_rate" for st in TIMED_STAGES),
)


def _window_rows(
    rows: Sequence[dict[str, Any]], org: str | None
) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """window_metrics rows → (scope row, {org: row})."""
    if not rows:
        return None, {}
    if org is not None:
        return rows[0], {org: rows[0]}
    return rows[0], {str(r["organization_id"]): r for r in rows[1:] if r["organization_id"] is not None}


def _snapshot_rows(
    root: Path, period: str, start: dt.datetime, now: dt.datetime, org: str | None
) -> list[dict[str, Any]]:
    """Snapshot rows of one scope (all organisations, or ``org``) with period_start
    in [start, now), straight from the snapshot files (DESIGN §6 columns)."""
    import duckdb

    from .query import vetted_files

    area = store.SNAPSHOTS_HOURLY if period == "hourly" else store.SNAPSHOTS_DAILY
    files = vetted_files(root, area, since=start, until=now)
    if not files:
        return []
    con = _cursor()
    try:
        return _dicts(
            con,
            f"SELECT * FROM {_snapshot_scan(files)} WHERE period_start >= $start AND period_start < $now "
            "AND (($org IS NULL AND organization_id IS NULL) OR organization_id = $org) "
            "ORDER BY period_start, created_at DESC",
            {"start": start, "now": now, "org": org},
        )
    except duckdb.Error:  # a foreign file under snapshots/: recompute from raw events
        return []


def _snapshot_scan(files: Sequence[Path]) -> str:
    from .sql import sql_str

    return f"read_parquet([{', '.join(sql_str(str(f)) for f in files)}], union_by_name=true, hive_partitioning=false)"


_ORG_KEYS: Final = ("received", "completed", "failed", "cost")


def _org_acc() -> dict[str, Any]:
    return dict.fromkeys(_ORG_KEYS, 0.0) | {"cost": None}


def _add_org(acc: dict[str, Any], r: Mapping[str, Any]) -> None:
    acc["received"] += r.get("artifacts_received") or 0
    acc["completed"] += r.get("artifacts_completed") or 0
    acc["failed"] += r.get("artifacts_failed") or 0
    if r.get("total_ai_cost") is not None:
        acc["cost"] = (acc["cost"] or 0.0) + r["total_ai_cost"]


def _org_totals(acc: Mapping[str, Any], p95: float | None) -> dict[str, Any]:
    done, failed = int(acc["completed"]), int(acc["failed"])
    return {
        "artifacts_received": int(acc["received"]),
        "artifacts_completed": done,
        "artifacts_failed": failed,
        "p95_end_to_end_latency_ms": p95,
        "total_ai_cost": acc["cost"],
        "overall_failure_rate": _ratio(failed, done + failed),
    }


def _daily_snapshot_rows(
    root: Path, days: Sequence[dt.datetime], sql: str, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Rows of ``sql`` over the daily snapshot files covering ``days`` (``{src}`` in
    ``sql`` is their scan); [] without files, or when they cannot answer it (a
    foreign file, or files from before a column existed): callers then use raw events."""
    import duckdb

    from .query import vetted_files

    if not days:
        return []
    files = vetted_files(root, store.SNAPSHOTS_DAILY, since=min(days), until=max(days) + DAY)
    if not files:
        return []
    try:
        return _dicts(_cursor(), sql.replace("{src}", _snapshot_scan(files)), params)
    except duckdb.Error:
        return []


def _snapshot_org_sums(root: Path, days: Sequence[dt.datetime], org: str | None) -> dict[str, dict[str, Any]]:
    """Per organisation, the sums :func:`_org_totals` needs over these daily snapshots."""
    rows = _daily_snapshot_rows(
        root,
        days,
        """
        SELECT organization_id,
          sum(artifacts_received) AS received, sum(artifacts_completed) AS completed,
          sum(artifacts_failed) AS failed, sum(total_ai_cost) AS cost
        FROM (SELECT DISTINCT ON (period_start, organization_id) * FROM {src}
              WHERE organization_id IS NOT NULL AND ($org IS NULL OR organization_id = $org)
                AND period_start IN (SELECT unnest($days::TIMESTAMPTZ[]))
              ORDER BY period_start, organization_id, created_at DESC)
        GROUP BY organization_id
        """,
        {"org": org, "days": list(days)},
    )
    return {
        str(r["organization_id"]): {k: (float(r[k]) if r[k] is not None else None) for k in _ORG_KEYS}
        | {"cost": r["cost"]}
        for r in rows
    }


def _source(row: Mapping[str, Any]) -> str | None:
    """Where a bucket's figures came from: "snapshot", "events" or None (no traffic)."""
    if not row:
        return None
    return "snapshot" if row.get("period_type") in ("hourly", "daily") else "events"


def _raw_buckets(
    root: Path,
    lo: dt.datetime,
    hi: dt.datetime,
    step: dt.timedelta,
    org: str | None,
    whole: list[dict[str, Any]] | None = None,
    *,
    per_org: bool = True,
    buckets: int | None = None,
) -> tuple[dict[dt.datetime, dict[str, Any]], dict[dt.datetime, dict[str, dict[str, Any]]]]:
    """Snapshot metrics per ``step`` bucket of [lo, hi) from raw events, with the
    aggregation's own definitions (:func:`~voicepipe_obs.aggregate.metrics_sql`) over
    one materialised window (as :func:`~voicepipe_obs.aggregate.window_metrics`
    makes it). ``whole``, when given, receives the rows over all of [lo, hi) (as
    ``window_metrics`` returns them), from the same window. ``per_org=False``: no
    per-organisation rows per bucket; ``buckets``: at most this many, the last one
    taking the rest of the window."""
    from . import aggregate

    lo_us, hi_us = store.to_us(lo), store.to_us(hi)
    step_us = int(step.total_seconds() * 1_000_000)
    scope: dict[dt.datetime, dict[str, Any]] = {}
    orgs: dict[dt.datetime, dict[str, dict[str, Any]]] = {}
    if lo_us >= hi_us:
        return scope, orgs
    con = aggregate._connect()
    try:
        table = aggregate._window_table(con, root, lo_us, hi_us, org)
        bucket = f"({lo_us} + (ts - {lo_us}) // {step_us} * {step_us})"
        if buckets is not None:
            bucket = f"least({bucket}, {lo_us + (buckets - 1) * step_us})"
        rows = aggregate._query_metrics(con, table, bucket, per_org=per_org).to_pylist()
        if whole is not None:
            found = aggregate._query_metrics(con, table, str(lo_us)).to_pylist()
            whole.extend(sorted(found, key=lambda r: r.get("organization_id") is not None))
    finally:
        con.close()
    for r in rows:
        start = store.from_us(int(r["bucket"]))
        r["period_type"] = "window"
        oid = r.get("organization_id")
        if oid is None:
            scope[start] = r
        else:
            orgs.setdefault(start, {})[str(oid)] = r
    return scope, orgs


@retried_read
def metrics(
    root: Path,
    *,
    now: dt.datetime,
    range_: str = "24h",
    org: str | None = None,
    exact: bool = False,
) -> dict[str, Any]:
    """Cards, time series (throughput, failure rate, cost, latency), latency by
    stage, a transcript-confidence histogram and the organisation breakdown.

    ``1h``, ``6h`` and ``24h`` cover exactly the hour(s) up to ``now`` — the same
    window as the dashboard's and the pipeline report's "24h" — in 12, 12 and 24
    buckets of 5 minutes, 30 minutes and an hour, all computed from raw events with
    the aggregation's definitions (:func:`voicepipe_obs.aggregate.window_metrics`).

    ``7d`` and ``30d`` cover UTC days, today's part included (``range_label`` says
    which). A complete day is read from its daily snapshot (``voicepipe aggregate``);
    today, and any day whose snapshot is missing, was built before the day ended, or
    misses event files that arrived since (:func:`voicepipe_obs.aggregate.pending_hours`),
    is computed from raw events and listed in ``stale_buckets`` (today excepted),
    with a note naming the command that fixes it. Range-level counts, cost and rates
    of counts add the days up exactly; percentiles, latency averages and stage
    failure rates cannot be combined from days: with ``exact`` they are computed over
    the raw events of the whole range (:func:`voicepipe_obs.aggregate.window_latency`;
    seconds on a large store, where the rest takes well under one); without it, or
    when some of the range's events are past retention, they are left None (listed in
    ``unavailable``, with a note saying why and what to do). Every figure shown is
    exact; counts and costs are 0, never NULL, when there is nothing to add up.
    """
    from . import aggregate

    check_choice("range", range_, tuple(RANGES))
    org = check_text("--org", org)
    require_events(root)
    now = aware(now)
    length, step = RANGES[range_]
    n = int(length / step)
    until = _through(now)
    partitions = list(store.iter_partitions(root, store.EVENTS))  # the backlog reads them too
    # days with event files the last `voicepipe aggregate` has not seen: their
    # snapshots are behind (a listing, no file read)
    pending = aggregate.pending_hours(root)
    behind = {_floor(hour, DAY) for hour in pending}
    scope_rows: dict[int, dict[str, Any]] = {}
    snapshot_buckets = 0
    stale: list[dt.datetime] = []
    notes: list[str] = []
    unavailable: list[str] = []
    if step < DAY:
        # a rolling window: exactly the last 1, 6 or 24 hours, from raw events
        start = now - length
        label = f"last {range_}"
        whole: list[dict[str, Any]] = []
        raw_scope, _ = _raw_buckets(root, start, until, step, org, whole, per_org=False, buckets=n)
        scope_rows = {i: raw_scope[start + i * step] for i in range(n) if start + i * step in raw_scope}
        found, per_org_rows = _window_rows(whole, org)
        totals = found or {}
        per_org_totals: dict[str, dict[str, Any]] = per_org_rows
    else:
        start = _floor(now, DAY) - (n - 1) * DAY
        label = f"{start:%m-%d} → {_floor(now, DAY):%m-%d} ({n} UTC days)"
        for r in _snapshot_rows(root, "daily", start, now, org):
            b_start, b_end = aware(r["period_start"]), aware(r["period_end"])
            if b_end > now or (r.get("created_at") is not None and aware(r["created_at"]) < b_end):
                continue  # today, or built before its day ended
            if b_start in behind:
                continue  # event files arrived since it was built
            # newest first: a rebuilt day's latest row wins
            scope_rows.setdefault((b_start - start) // DAY, r)
        snapshot_buckets = len(scope_rows)
        event_days = {_floor(p.start, DAY) for p in partitions if p.start is not None and p.hour is not None}
        missing = [i for i in range(n) if i not in scope_rows and start + i * DAY in event_days]
        org_rows: dict[int, dict[str, dict[str, Any]]] = {}
        # no usable snapshot at all: the raw window gives the range figures too
        whole_days: list[dict[str, Any]] | None = [] if not snapshot_buckets else None
        if missing:
            lo_raw = start if whole_days is not None else start + missing[0] * DAY
            raw_scope, raw_orgs = _raw_buckets(root, lo_raw, until, DAY, org, whole_days)
            for i in missing:
                b_start = start + i * DAY
                if b_start not in raw_scope:
                    continue  # no traffic
                scope_rows[i] = raw_scope[b_start]
                org_rows[i] = raw_orgs.get(b_start, {})
                if b_start + DAY <= now:
                    stale.append(b_start)
        files_behind = sum(k for hour, k in pending.items() if _floor(hour, DAY) in set(stale))
        if stale and not snapshot_buckets:
            notes.append(
                "no daily snapshots for this range: computed from raw events; "
                "run `voicepipe aggregate` (from cron) to make this report fast"
            )
        elif stale and files_behind:
            notes.append(
                f"snapshots are behind: {files_behind} event file(s) arrived since the last "
                f"`voicepipe aggregate`, so {len(stale)} daily bucket(s) were computed from raw events; "
                "run `voicepipe aggregate` to bring them up to date"
            )
        elif stale:
            notes.append(
                f"snapshots are behind: {len(stale)} daily bucket(s) computed from raw events; "
                "run `voicepipe aggregate` to bring them up to date"
            )
        if whole_days is not None:
            found, per_org_totals = _window_rows(whole_days, org)
            totals = found or {}
        else:
            totals = _sums([scope_rows[i] for i in sorted(scope_rows)])
            snap_days = [start + i * DAY for i in scope_rows if _source(scope_rows[i]) == "snapshot"]
            sums = _snapshot_org_sums(root, snap_days, org)
            for rows in org_rows.values():
                for oid, r in rows.items():
                    _add_org(sums.setdefault(oid, _org_acc()), r)
            # percentiles (and the averages and rates whose counts snapshots do not
            # keep) need the raw events of the whole range
            gone = sorted(d for d in snap_days if d not in event_days)
            latency: dict[str, Any] = {}
            latency_orgs: dict[str, dict[str, Any]] = {}
            if not exact and not gone:
                unavailable = list(RANGE_LATENCY_FIGURES)
                notes.append(
                    "latency averages, percentiles and stage failure rates over several days are not "
                    "shown (–): a percentile cannot be combined from daily snapshots; add --exact to "
                    "compute them from the raw events of the whole range (slower). The daily series "
                    "shows each day's exact values"
                )
            elif gone:
                unavailable = list(RANGE_LATENCY_FIGURES)
                days = f"{gone[0]:%Y-%m-%d}" + (f" … {gone[-1]:%Y-%m-%d}" if len(gone) > 1 else "")
                notes.append(
                    f"latency averages, percentiles and stage failure rates are not shown (–): they need "
                    f"the raw events of the whole range, and those of {days} are past event retention; "
                    "a percentile cannot be combined from daily snapshots. Counts, rates of artifacts "
                    "and costs are complete (from the snapshots)"
                )
            else:
                lat_rows = aggregate.window_latency(
                    root, start, until, organization_id=org, org_metrics=("p95_end_to_end_latency_ms",)
                )
                found, latency_orgs = _window_rows(lat_rows, org)
                latency = found or {}
            totals |= {key: latency.get(key) for key in aggregate.LATENCY_METRICS}
            per_org_totals = {
                oid: _org_totals(acc, latency_orgs.get(oid, {}).get("p95_end_to_end_latency_ms"))
                for oid, acc in sums.items()
            }
    series = []
    for i in range(n):
        r = scope_rows.get(i, {})
        series.append(
            {
                "period_start": start + i * step,
                "artifacts_received": int(r.get("artifacts_received") or 0),
                "artifacts_completed": int(r.get("artifacts_completed") or 0),
                "artifacts_failed": int(r.get("artifacts_failed") or 0),
                "overall_failure_rate": r.get("overall_failure_rate"),
                "avg_end_to_end_latency_ms": r.get("avg_end_to_end_latency_ms"),
                "p95_end_to_end_latency_ms": r.get("p95_end_to_end_latency_ms"),
                "total_ai_cost": r.get("total_ai_cost") or 0.0,
                "source": _source(r),
            }
        )
    # the histogram needs raw events: for 7d/30d, the last 24 hours of them
    hist_since = start if step < DAY else now - DAY
    completed = int(totals.get("artifacts_completed") or 0)
    processed = completed + int(totals.get("artifacts_failed") or 0)
    cards = {
        "artifacts_received": int(totals.get("artifacts_received") or 0),
        "artifacts_processed": processed,
        "completion_rate": _ratio(completed, processed),
        "avg_end_to_end_latency_ms": totals.get("avg_end_to_end_latency_ms"),
        "p95_end_to_end_latency_ms": totals.get("p95_end_to_end_latency_ms"),
        "total_ai_cost": totals.get("total_ai_cost") or 0.0,
        "auto_resolution_rate": totals.get("auto_resolution_rate"),
        "disambiguation_backlog": disambiguation_backlog(
            root, now=now, org=org, partitions=partitions, stale_days=behind
        ),
    }
    stages = [
        {
            "stage": st,
            "avg_latency_ms": totals.get(f"avg_{st}_latency_ms"),
            "p95_latency_ms": totals.get(f"p95_{st}_latency_ms"),
            "failure_rate": totals.get(f"{st}_failure_rate"),
        }
        for st in TIMED_STAGES
    ]
    organizations = sorted(
        (
            {
                "organization_id": oid,
                "artifacts_received": int(r.get("artifacts_received") or 0),
                "artifacts_completed": int(r.get("artifacts_completed") or 0),
                "artifacts_failed": int(r.get("artifacts_failed") or 0),
                "p95_end_to_end_latency_ms": r.get("p95_end_to_end_latency_ms"),
                "total_ai_cost": r.get("total_ai_cost") or 0.0,
                "overall_failure_rate": r.get("overall_failure_rate"),
            }
            for oid, r in per_org_totals.items()
        ),
        key=lambda r: (-int(r["artifacts_received"] or 0), str(r["organization_id"])),
    )
    return {
        "generated_at": now,
        "range": range_,
        "range_label": label,
        "organization_id": org,
        "start": start,
        "bucket_seconds": int(step.total_seconds()),
        "snapshot_buckets": snapshot_buckets,
        "stale_buckets": stale,
        "notes": notes,
        "unavailable": unavailable,
        "cards": cards,
        "series": series,
        "stages": stages,
        "confidence_histogram_since": hist_since,
        "confidence_histogram": confidence_histogram(root, since=hist_since, now=now, org=org),
        "organizations": organizations,
    }


@retried_read
def confidence_histogram(
    root: Path, *, since: dt.datetime, now: dt.datetime, org: str | None = None, bins: int = 10
) -> list[dict[str, Any]]:
    """Counts of transcription_completed confidence_score in ``bins`` equal bins over [0, 1]
    (the view reads its files at the query: :func:`~voicepipe_obs.query.retried_read`
    lists them again if compaction replaced one)."""
    con = _connect(_files(root, since, None), materialise=False)
    counts = {
        int(r["b"]): int(r["n"])
        for r in _dicts(
            con,
            """
            SELECT least(floor(confidence_score * $bins), $bins - 1)::INT AS b, count(*) AS n
            FROM (SELECT DISTINCT ON (event_id) event_id, confidence_score FROM events_raw
                  WHERE event_type = 'transcription_completed' AND confidence_score IS NOT NULL
                    AND timestamp >= $since AND timestamp <= $now
                    AND ($org IS NULL OR organization_id = $org))
            GROUP BY ALL
            """,
            {"bins": bins, "since": since, "now": now, "org": org},
        )
    }
    return [{"lo": i / bins, "hi": (i + 1) / bins, "count": counts.get(i, 0)} for i in range(bins)]


@retried_read
def disambiguation_backlog(
    root: Path,
    *,
    now: dt.datetime,
    org: str | None = None,
    partitions: Sequence[store.Partition] | None = None,
    stale_days: Collection[dt.datetime] = (),
) -> int:
    """Σ disambiguation_count of entity_needs_disambiguation − Σ of entity_user_resolved,
    over every event in the store (that is, within event retention), never below 0.

    A whole day takes the two sums from its daily snapshot (columns
    ``disambiguations_flagged`` / ``disambiguations_resolved``) when that was built
    after the day ended; today, the oldest retained day (cleanup may have dropped part
    of it), days without such a snapshot and ``stale_days`` (days with event files
    the snapshot has not seen) are read from raw events. ``partitions``: the event
    partitions when the caller has listed them already."""
    from .query import complete, retry_vanished

    now = aware(now)
    by_day: dict[dt.datetime, list[Path]] = {}
    for part in store.iter_partitions(root, store.EVENTS) if partitions is None else partitions:
        if part.start is not None and part.start <= now:
            by_day.setdefault(_floor(part.start, DAY), []).append(part.path)
    if not by_day:
        return 0
    days = sorted(by_day)
    by_snapshot = _snapshot_backlog(
        root, [d for d in days[1:] if d + DAY <= now and d not in stale_days], org
    )
    total = sum(by_snapshot.values())

    def read(_attempt: int) -> dict[str, Any]:
        # the files of each partition as they are now: listed again (the partitions
        # stay) when compaction replaced one meanwhile
        files = complete(
            sorted(
                f
                for d in days
                if d not in by_snapshot
                for hour in by_day[d]
                for f in store.parquet_files(hour)
            )
        )
        if not files:
            return {}
        con = _connect(files, materialise=False)
        return _one(
            con,
            """
            SELECT coalesce(sum(disambiguation_count) FILTER (WHERE event_type = 'entity_needs_disambiguation'), 0)
                 - coalesce(sum(disambiguation_count) FILTER (WHERE event_type = 'entity_user_resolved'), 0) AS n
            FROM (SELECT DISTINCT ON (event_id) event_id, event_type, disambiguation_count FROM events_raw
                  WHERE event_type IN ('entity_needs_disambiguation', 'entity_user_resolved')
                    AND timestamp <= $now AND ($org IS NULL OR organization_id = $org))
            """,
            {"now": now, "org": org},
        )

    row = retry_vanished(read, what="report")
    total += int(row.get("n") or 0)
    return max(total, 0)


def _snapshot_backlog(root: Path, days: Sequence[dt.datetime], org: str | None) -> dict[dt.datetime, int]:
    """day → flagged − resolved of ``org`` (None: all) for the ``days`` whose daily
    snapshot was built after the day ended and carries both sums."""
    rows = _daily_snapshot_rows(
        root,
        days,
        """
        SELECT period_start, organization_id, created_at >= period_end AS complete,
               disambiguations_flagged - disambiguations_resolved AS n
        FROM {src}
        WHERE organization_id IS NULL OR organization_id = $org
        ORDER BY created_at
        """,
        {"org": org},
    )
    wanted = set(days)
    complete: dict[dt.datetime, bool] = {}
    value: dict[dt.datetime, int] = {}
    for r in rows:  # oldest first: a rebuilt day's latest row wins
        day = aware(r["period_start"])
        if day not in wanted:
            continue
        if r["organization_id"] is None:
            complete[day] = bool(r["complete"]) and r["n"] is not None
            if org is None:
                value[day] = int(r["n"] or 0)
        else:
            value[day] = int(r["n"] or 0)
    return {day: value.get(day, 0) for day, ok in complete.items() if ok}


# --------------------------------------------------------------------- events


@dataclass(frozen=True)
class EventFilter:
    """Filters of the event log; every value is bound as a parameter."""

    types: tuple[str, ...] = ()
    stage: str | None = None
    org: str | None = None
    artifact: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    errors_only: bool = False

    def validated(self) -> EventFilter:
        for t in self.types:
            check_choice("event type", t, EVENT_TYPES)
        check_choice("stage", self.stage, STAGES)
        check_text("--org", self.org)
        check_text("--artifact", self.artifact)
        return self

    def as_dict(self) -> dict[str, Any]:
        """The filters as a report's JSON shows them."""
        return {
            "types": list(self.types),
            "stage": self.stage,
            "org": self.org,
            "artifact": self.artifact,
            "since": self.since,
            "until": self.until,
            "errors_only": self.errors_only,
        }

    def sql(self) -> tuple[str, dict[str, Any]]:
        where = ["TRUE"]
        params: dict[str, Any] = {}
        if self.types:
            where.append("event_type IN (SELECT unnest($types::VARCHAR[]))")
            params["types"] = list(self.types)
        for key, col, value in (
            ("stage", "pipeline_stage", self.stage),
            ("org", "organization_id", self.org),
            ("artifact", "artifact_id", self.artifact),
        ):
            if value is not None:
                where.append(f"{col} = ${key}")
                params[key] = value
        if self.since is not None:
            where.append("timestamp >= $since")
            params["since"] = aware(self.since)
        if self.until is not None:
            where.append("timestamp < $until")
            params["until"] = aware(self.until)
        if self.errors_only:
            where.append("(event_type IN (SELECT unnest($failures::VARCHAR[])) OR error_code IS NOT NULL)")
            params["failures"] = sorted(LOG_FAILURE_TYPES)
        return " AND ".join(where), params


def _hours_newest_first(root: Path, since: dt.datetime | None, until: dt.datetime | None) -> list[list[Path]]:
    by_hour: dict[tuple[str, str], list[Path]] = {}
    for f in store.list_parquet(root, store.EVENTS, since=since, until=until):
        by_hour.setdefault((f.parent.parent.name, f.parent.name), []).append(f)
    return [by_hour[k] for k in sorted(by_hour, reverse=True)]


def _log_query(
    root: Path, f: EventFilter, limit: int | None, now: dt.datetime
) -> tuple[str, dict[str, Any], dt.datetime]:
    """The condition and parameters of ``f`` for events up to ``now`` (aware), after
    checking ``limit`` (None: no limit) and that the store has events."""
    if limit is not None and not 1 <= limit <= MAX_EVENT_LIMIT:
        raise UsageError(f"--limit must be between 1 and {MAX_EVENT_LIMIT}")
    require_events(root)
    now = aware(now)
    cond, params = f.sql()
    return cond + " AND timestamp <= $now", params | {"now": now}, now


#: Most rows one page of the event log (or of the retry history) holds.
MAX_EVENT_LIMIT: Final = 10_000
#: Rows fetched from DuckDB at a time while the log is streamed.
_LOG_BATCH: Final = 5_000


def _log_rows(
    root: Path, f: EventFilter, cond: str, params: Mapping[str, Any], *, want: int | None = None
) -> Iterator[dict[str, Any]]:
    """Matching events, newest first, an hour partition at a time and
    :data:`_LOG_BATCH` rows at a time (memory stays bounded whatever the window);
    with ``want``, each hour's query asks only for what is still wanted. An event
    stored twice is yielded once."""
    from .query import parquet_scan

    con = _connect([], materialise=False)
    given = 0
    recent: set[str] = set()  # ids of this hour and the one before (copies share an hour)
    for hour_files in _hours_newest_first(root, f.since, f.until):
        good = vetted(hour_files)
        if not good:
            continue
        sql = (
            f"SELECT * FROM (SELECT DISTINCT ON (event_id) {_LOG_SELECT} FROM {parquet_scan(good)} "
            f"WHERE {cond}) ORDER BY timestamp DESC, event_id DESC"
        )
        bound = dict(params)
        if want is not None:
            sql += " LIMIT $limit"
            bound["limit"] = want - given
        cur = con.execute(sql, bound)
        names = [d[0] for d in cur.description]
        this_hour: set[str] = set()
        while batch := cur.fetchmany(_LOG_BATCH):
            for values in batch:
                ev = dict(zip(names, values, strict=True))
                if ev["event_id"] in recent or ev["event_id"] in this_hour:
                    continue
                this_hour.add(ev["event_id"])
                given += 1
                yield _event_row(ev)
        recent = this_hour
        if want is not None and given >= want:
            return


def iter_events(
    root: Path, *, now: dt.datetime, filters: EventFilter | None = None
) -> Iterator[dict[str, Any]]:
    """Every event matching ``filters`` up to ``now``, newest first, as the rows of
    :func:`events` — streamed (an hour partition and a batch at a time), so an
    export of the whole store keeps memory bounded. What ``report events --format
    csv|json`` writes when no ``--limit`` is given."""
    f = (filters or EventFilter()).validated()
    cond, params, now = _log_query(root, f, None, now)
    return _log_rows(root, f, cond, params)


@retried_read
def count_events(root: Path, *, now: dt.datetime, filters: EventFilter | None = None) -> int:
    """How many events match ``filters`` up to ``now`` (each event_id once): one
    pass over the window's files — except, with no filter but time, for the hours
    that are one compacted file wholly inside the window: compaction dropped their
    duplicates, and an event's copies share its hour, so their Parquet row counts
    (footers, no scan) add up exactly (measured: 2.5 s → ~0.1 s on a compacted
    month of 10 million events)."""
    from .maintenance import compacted_alone
    from .query import parquet_scan

    f = (filters or EventFilter()).validated()
    cond, params, now = _log_query(root, f, None, now)
    time_only = not (f.types or f.stage or f.org or f.artifact or f.errors_only)
    whole: list[Path] = []
    scan: list[Path] = []
    for hour in _hours_newest_first(root, f.since, f.until):
        start = _partition_start(hour[0])
        inside = (
            start is not None
            and (f.since is None or start >= f.since)
            and start + HOUR <= min(now + dt.timedelta(microseconds=1), f.until or now + HOUR)
        )
        if time_only and inside and compacted_alone(hour):
            whole.append(hour[0])
        else:
            scan.extend(hour)
    con = _connect([], materialise=False)
    n = 0
    good = vetted(whole)
    if good:  # count(*) of a whole file is answered from its footer
        n += int(_one(con, f"SELECT count(*) AS n FROM {parquet_scan(good)}").get("n") or 0)
    good = vetted(scan)
    if good:
        row = _one(
            con, f"SELECT count(DISTINCT event_id) AS n FROM {parquet_scan(good)} WHERE {cond}", params
        )
        n += int(row.get("n") or 0)
    return n


def _partition_start(path: Path) -> dt.datetime | None:
    """Start of an event file's hour partition (…/date=YYYY-MM-DD/hour=HH/f)."""
    try:
        hour = int(path.parent.name.removeprefix("hour="))
    except ValueError:
        return None
    return store.Partition(path.parent.parent.name.removeprefix("date="), hour, path.parent).start


@retried_read
def events(
    root: Path,
    *,
    now: dt.datetime,
    filters: EventFilter | None = None,
    limit: int = 50,
    page: int = 1,
    count: bool = True,
) -> dict[str, Any]:
    """One page of the raw event log, newest first: at most ``limit`` rows, after
    ``(page - 1) * limit`` newer ones. Reads an hour partition at a time, newest
    first, and stops as soon as the page (and one row more) is found.

    ``truncated`` says whether other events match (on other pages); ``total`` is how
    many match — counted in one more pass over the window when the page does not
    hold them all (None when ``count`` is false and the page is truncated)."""
    f = (filters or EventFilter()).validated()
    if page < 1:
        raise UsageError("--page must be 1 or more")
    cond, params, now = _log_query(root, f, limit, now)
    offset = (page - 1) * limit
    from itertools import islice

    page_rows = list(islice(_log_rows(root, f, cond, params, want=offset + limit + 1), offset, None))
    rows = page_rows[:limit]
    truncated = len(page_rows) > limit or offset > 0
    total: int | None = len(rows)
    if truncated:
        total = count_events(root, now=now, filters=f) if count else None
    return {
        "generated_at": now,
        "filters": f.as_dict(),
        "limit": limit,
        "page": page,
        "offset": offset,
        "total": total,
        "truncated": truncated,
        "rows": rows,
    }


@retried_read
def organizations(root: Path) -> list[str]:
    """Every organization_id in the store's events (sorted): one pass over one
    column of every event file."""
    from .query import parquet_scan

    good = vetted(store.list_parquet(root, store.EVENTS))
    if not good:
        return []
    cur = _connect([], materialise=False).execute(
        f"SELECT DISTINCT organization_id FROM {parquet_scan(good)} "
        "WHERE organization_id IS NOT NULL ORDER BY 1"
    )
    return [str(r[0]) for r in cur.fetchall()]


@retried_read
def require_organization(root: Path, org: str, *, alerts: bool = False) -> None:
    """Raise :class:`NotFoundError` (exit 1) when no event of the store names the
    organisation ``org``, with the closest known id and the list. For the CLI to
    call when a report for ``--org`` came back empty: an unknown (misspelt)
    organisation is an error, a known one with nothing in the window is not.
    With ``alerts``, an organisation the alert log names is known too (the log is
    kept longer than the events)."""
    known = organizations(root)
    if org in known:
        return
    if alerts:
        from .alerts import alert_history

        if alert_history(root, organization_id=org):
            return
    hint = closest(org[:64], tuple(known))
    listed = ", ".join(known[:12]) + (f" (and {len(known) - 12} more)" if len(known) > 12 else "")
    raise NotFoundError(
        f"no organisation {org[:80]!r} in the events{' or the alert log' if alerts else ''} under {root}"
        + (f" (did you mean {hint!r}?)" if hint else "")
        + (f"; organisations: {listed}" if known else "")
    )


@retried_read
def require_artifact(root: Path, artifact_id: str) -> None:
    """Raise :class:`NotFoundError` (exit 1) when the store holds no event of
    ``artifact_id`` (what ``report artifact ID`` says for an unknown id)."""
    check_text("artifact id", artifact_id)
    if _artifact_connection(root, artifact_id) is None:
        raise NotFoundError(
            f"no events for artifact {artifact_id[:80]!r} under {root}; find ids with "
            "`voicepipe report artifacts --search PREFIX` (--since 30d looks further back)"
        )


@retried_read
def event(root: Path, event_id: str) -> dict[str, Any]:
    """One event's full payload (every column, attributes as a dict)."""
    from .query import parquet_scan

    check_text("event id", event_id)
    require_events(root)
    con = _connect([], materialise=False)
    for day_files in _day_groups(root):
        good = vetted(day_files)
        if not good:
            continue
        rows = _dicts(
            con, f"SELECT * FROM {parquet_scan(good)} WHERE event_id = $id LIMIT 1", {"id": event_id}
        )
        if rows:
            ev = rows[0]
            attrs = ev.get("attributes")
            if isinstance(attrs, list):
                ev["attributes"] = dict(attrs)
            ev["kind"] = event_kind(str(ev["event_type"]))
            ev["detail"] = describe_event(ev)
            return ev
    raise NotFoundError(
        f"no event {event_id[:80]!r} under {root}; list ids with `voicepipe report events --format json`"
    )


def follow_events(
    root: Path,
    *,
    filters: EventFilter | None = None,
    poll_interval: float = 1.0,
    seen_files: set[Path] | None = None,
    skip_before: dt.datetime | None = None,
    stop_after: float | None = None,
    before_poll: Callable[[], object] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield events as new files land under the root (like ``tail -f``), oldest
    first within each batch, each event once.

    ``before_poll`` runs before every poll but the first (the CLI pulls an
    object-store root's mirror there).

    Files in ``seen_files`` (default: those present at the first poll) are not read.
    Events older than ``skip_before`` are not yielded, so an hour that
    ``voicepipe compact`` rewrites into a new file is not replayed. Runs until the
    caller stops iterating (or for ``stop_after`` seconds).
    """
    import duckdb

    from .query import parquet_scan, skip_unreadable, vanished_file

    f = (filters or EventFilter()).validated()
    cond, params = f.sql()
    if skip_before is not None:
        cond += " AND timestamp >= $skip_before"
        params["skip_before"] = aware(skip_before)
    known = set(store.list_parquet(root, store.EVENTS)) if seen_files is None else set(seen_files)
    seen_ids: set[str] = set()
    deadline = None if stop_after is None else time.monotonic() + stop_after
    con = _connect([], materialise=False)
    first = True
    while deadline is None or time.monotonic() < deadline:
        if before_poll is not None and not first:
            before_poll()
        first = False
        fresh = [p for p in store.list_parquet(root, store.EVENTS) if p not in known]
        if fresh:
            known.update(fresh)
            good = vetted(fresh)
            rows: list[dict[str, Any]] = []
            while good:
                try:
                    rows = _dicts(
                        con,
                        f"SELECT * FROM (SELECT DISTINCT ON (event_id) {_LOG_SELECT} FROM {parquet_scan(good)} "
                        f"WHERE {cond}) ORDER BY timestamp, event_id",
                        params,
                    )
                    break
                except duckdb.Error as exc:
                    # a file compacted away since (its merged file is new: the next
                    # poll reads it), or one with corrupt data pages (now skipped)
                    drop = {Path(g) for g in [vanished_file(exc)] if g} | set(skip_unreadable(exc))
                    if not drop:
                        raise
                    good = [g for g in good if g not in drop]
            for ev in rows:
                if ev["event_id"] in seen_ids:
                    continue
                seen_ids.add(ev["event_id"])
                yield _event_row(ev)
        time.sleep(poll_interval)


# --------------------------------------------------------------------- alerts


@retried_read
def active_alerts(root: Path, *, now: dt.datetime) -> list[dict[str, Any]]:
    """Alerts currently raised (not resolved), newest first; [] without an alert log."""
    rows: list[dict[str, Any]] = alerts(root, now=now, pending=False)["rows"]
    return rows


#: What the alerts report shows of an alert's state (alerts.STATE_COLUMNS, less the
#: long text and delivery bookkeeping).
ALERT_COLUMNS: Final = tuple(
    c
    for c in _alerts.STATE_COLUMNS
    if c not in ("ack_comment", "description", "notifications_sent", "notifications_failed")
)


@retried_read
def alerts(
    root: Path,
    *,
    now: dt.datetime,
    history: bool = False,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    rule: str | None = None,
    org: str | None = None,
    severity: str | None = None,
    settings: Settings | None = None,
    pending: bool = True,
) -> dict[str, Any]:
    """Active alerts (current state per alert, most urgent first: critical before
    warning, then oldest raised, as ``voicepipe alerts list`` and ``check``) or, with
    ``history``, every alert as it stands, raised in [since, until), newest first.
    Reads the alert log (see :mod:`voicepipe_obs.alerts`) and, with ``pending``, what
    waits for its rule's ``for_minutes`` / ``keep_firing_minutes``
    (:func:`pending_alerts`, with ``settings`` — the ones ``check`` runs with — and
    the same ``rule``, ``org`` and ``severity`` filters; ``since`` / ``until`` do
    not apply: nothing pending has been raised)."""
    import duckdb

    from . import alerts as alerts_mod
    from .query import session_defaults

    rule, org, severity = (
        check_choice("rule", check_text("--rule", rule), _alerts.RULES),
        check_text("--org", org),
        check_choice("severity", check_text("--severity", severity), ("warning", "critical")),
    )
    now = aware(now)
    con = session_defaults(duckdb.connect())
    alerts_mod.register_views(con, root)
    states = alerts_mod.list_alerts(
        root,
        status="all" if history else "active",
        rule=rule,
        organization_id=org,
        severity=severity,
        con=con,
    )
    rows = []
    for st in states:
        d = {k: getattr(st, k) for k in ALERT_COLUMNS}
        raised = d["raised_at"]
        if since is not None and raised < aware(since):
            continue
        if until is not None and raised >= aware(until):
            continue
        rows.append(d)
    if history:
        rows.sort(key=lambda r: (r["raised_at"], r["alert_id"]), reverse=True)
    row = con.execute("SELECT EXISTS (SELECT 1 FROM alert_log)").fetchone()
    has_log = bool(row and row[0])
    data: dict[str, Any] = {
        "generated_at": now,
        "history": history,
        "alert_log_present": has_log,
        "last_check": alerts_mod.last_check(root),
        "rows": rows,
    }
    if pending:
        active = rows
        if history or rule or org or severity or since is not None or until is not None:
            states = alerts_mod.list_alerts(root, status="active", con=con)
            active = [{k: getattr(st, k) for k in ALERT_COLUMNS} for st in states]
        waits, sound = pending_alerts(root, now=now, settings=settings, active=active)
        data["pending"] = [
            w
            for w in waits
            if (rule is None or w["rule"] == rule)
            and (org is None or w["organization_id"] == org)
            and (severity is None or w["severity"] == severity)
        ]
        data["pending_state_ok"] = sound
    return data


#: What ``report alerts`` shows of a raise or resolution that waits (JSON
#: ``pending``); see :func:`pending_alerts`.
PENDING_COLUMNS: Final = (
    "kind",
    "rule",
    "scope",
    "organization_id",
    "severity",
    "since",
    "until",
    "remaining_seconds",
    "seen_at",
    "stale",
    "found_now",
    "alert_id",
    "summary",
    "value",
    "threshold",
)
#: ``report alerts --format csv``: the alerts' columns, then what says a row is a
#: pending wait (its status is ``pending``; an alert's own row leaves them empty).
ALERT_CSV_COLUMNS: Final = (
    *ALERT_COLUMNS,
    "pending",
    "pending_since",
    "pending_until",
    "remaining_seconds",
    "seen_at",
    "stale",
    "found_now",
)


def alert_csv_rows(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``report alerts``' rows for CSV: every alert, then every pending wait as a row
    of status ``pending`` (``pending``: ``raise`` or ``resolve``)."""
    rows: list[dict[str, Any]] = list(data["rows"])
    for w in data.get("pending") or ():
        rows.append(
            {
                **{k: w.get(k) for k in ("alert_id", "rule", "scope", "organization_id", "severity")},
                **{k: w.get(k) for k in ("summary", "value", "threshold")},
                "status": "pending",
                "pending": w["kind"],
                "pending_since": w["since"],
                "pending_until": w["until"],
                **{k: w[k] for k in ("remaining_seconds", "seen_at", "stale", "found_now")},
            }
        )
    return rows


def pending_alerts(
    root: Path,
    *,
    now: dt.datetime,
    settings: Settings | None = None,
    active: Sequence[Mapping[str, Any]] | None = None,
    judge: bool = True,
) -> tuple[list[dict[str, Any]], bool]:
    """Raises and resolutions that wait for their rule's ``for_minutes`` /
    ``keep_firing_minutes`` (what ``voicepipe check`` keeps in
    ``_state/pending.json``, :func:`voicepipe_obs.damping.read_waits`), as rows of
    :data:`PENDING_COLUMNS`, and whether that file was sound (missing is; a damaged
    one is taken as empty, with a warning, as ``check`` does). Reads only: never
    writes the file, never takes the check lock.

    ``settings`` must be the ones ``check`` runs with: the file keeps when a wait
    started, not how long it is. ``active``: the active alerts (rows of
    :data:`ALERT_COLUMNS`; read from the log when None); a raise whose alert is already active, or a
    resolution of one no longer active, is what the next check drops (a check that
    stopped between writing the log and this file) and is left out. A resolution
    carries its alert's id, severity and summary.

    A wait is ``stale`` when the latest check that found it as it was is longer ago
    than the gap that breaks a run of checks (:func:`voicepipe_obs.damping.max_gap`:
    3 × the wait, at least 15 min) — checks stopped — or after ``now``: the next
    check starts it again, so it is not about to happen (``until`` and
    ``remaining_seconds`` are null). ``remaining_seconds`` 0: at the next check.

    With ``judge``, the rules of the raises that are not stale are evaluated at
    ``now`` (read-only, as ``check --dry-run``) for the severity, summary, value
    and threshold they would be raised with; ``found_now`` says whether the
    condition still holds (null: not judged — no wait to judge, too few finished
    artifacts, or the evaluation failed, with a warning).
    """
    from . import alerts as alerts_mod
    from . import damping
    from .config import Settings

    settings = settings or Settings()
    now = aware(now)
    waits, sound = damping.read_waits(root, settings, now)
    if not waits:
        return [], sound
    if active is None:
        states = alerts_mod.list_alerts(root, status="active")
        active = [{k: getattr(st, k) for k in ALERT_COLUMNS} for st in states]
    by_key = {(a["rule"], a["scope"]): a for a in active}
    rows: list[dict[str, Any]] = []
    for p, seen, stale in waits:
        alert = by_key.get(p.key)
        if (p.kind == "raise") == (alert is not None):
            continue
        row: dict[str, Any] = {
            "kind": p.kind,
            "rule": p.rule,
            "scope": p.scope,
            "organization_id": p.organization_id,
            "severity": None,
            "since": p.since,
            "until": None if stale else p.until,
            "remaining_seconds": None if stale else p.remaining(now).total_seconds(),
            "seen_at": seen,
            "stale": stale,
            "found_now": None,
            "alert_id": None,
            "summary": None,
            "value": None,
            "threshold": None,
        }
        if alert is not None:
            row |= {k: alert.get(k) for k in ("organization_id", "severity", "alert_id", "summary")}
            row |= {"value": alert.get("value"), "threshold": alert.get("threshold")}
        rows.append(row)
    judged = sorted({r["rule"] for r in rows if r["kind"] == "raise" and not r["stale"]})
    if judge and judged:
        try:
            ev = alerts_mod.evaluate(root, settings, now=now, rules=judged)
        except VoicepipeError as exc:
            log.warning("cannot tell what the pending raises would be raised with: %s", exc)
        else:
            found = {f.key: f for f in ev.findings}
            for r in rows:
                if r["kind"] != "raise" or r["stale"]:
                    continue
                f = found.get((r["rule"], r["scope"]))
                if f is not None:
                    r |= {"severity": f.severity, "summary": f.summary, "value": f.value}
                    r |= {"threshold": f.threshold, "found_now": True}
                elif r["rule"] in ev.evaluated and not ev.unjudged(r["rule"], r["scope"]):
                    r["found_now"] = False
    rows.sort(key=lambda r: (r["stale"], r["until"] or r["since"], r["rule"], r["scope"]))
    return rows, sound


# -------------------------------------------------------------------- retries

RETRY_COLUMNS: Final = (
    "initiated_at",
    "finished_at",
    "artifact_id",
    "organization_id",
    "actor",
    "stage",
    "attempt",
    "mode",
    "outcome",
    "duration_ms",
    "error_code",
    "error_message",
    "forced",
)


def _retry_rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Retries paired from their events (retry.retry_history), newest first."""
    from .retry import retry_history

    records = [r.to_dict() for r in retry_history(con)]
    records.sort(key=lambda r: r["initiated_at"] or r["finished_at"], reverse=True)
    return [{k: r.get(k) for k in RETRY_COLUMNS} for r in records]


@retried_read
def retries(
    root: Path,
    *,
    now: dt.datetime,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    artifact: str | None = None,
    org: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """Retry history, newest first: when, who, which stage, attempt, mode, outcome,
    duration and error — one row per retry (retry_initiated paired with its
    retry_succeeded / retry_failed by artifact and attempt), with outcome totals."""
    f = EventFilter(
        types=("retry_initiated", "retry_succeeded", "retry_failed"),
        org=org,
        artifact=artifact,
        since=since,
        until=until,
    ).validated()
    cond, params, now = _log_query(root, f, limit, now)
    con = _connect(_files(root, since, until), where=cond, params=params)
    rows = _retry_rows(con)
    totals = {"retries": len(rows)} | {
        k: sum(1 for r in rows if r["outcome"] == k) for k in ("succeeded", "failed", "pending")
    }
    return {"generated_at": now, "totals": totals, "rows": rows[:limit]}


# ------------------------------------------------------------------------ sql


def locked_connection(root: Path) -> duckdb.DuckDBPyConnection:
    """The views of :func:`voicepipe_obs.query.connect` on a connection that cannot
    touch files outside the root, install or load extensions, or change settings."""
    from .query import connect, session_defaults

    root = root.resolve()
    con = session_defaults(connect(root, live=False))
    con.execute("SET allowed_directories = $dirs", {"dirs": [str(root) + os.sep]})
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def unique_columns(names: Sequence[str]) -> list[str]:
    """Result column names made unique: a repeated name gets ``_2``, ``_3``, … (the
    first free suffix that no other column uses), so ``SELECT 1 AS a, 2 AS a``
    gives ``a, a_2`` and no value is lost in JSON, CSV or the table."""
    taken = set(names)
    seen: set[str] = set()
    out = []
    for name in names:
        unique = name
        if name in seen:
            k = 2
            while f"{name}_{k}" in taken or f"{name}_{k}" in seen:
                k += 1
            unique = f"{name}_{k}"
        seen.add(unique)
        out.append(unique)
    return out


def _statement_word(statement: Any) -> str:
    """The statement's first keyword as written (INSTALL, COPY, …): DuckDB reports
    some statements under another type (INSTALL as LOAD)."""
    import re

    text = str(getattr(statement, "query", "") or "")
    text = re.sub(r"^(\s+|--[^\n]*\n?|/\*.*?\*/)*", "", text, flags=re.S)
    m = re.match(r"[A-Za-z_]+", text)
    word = m.group(0).upper() if m else ""
    return word if word and word != "WITH" else str(statement.type.name)


@retried_read
def run_sql(root: Path, sql: str, *, max_rows: int = 1000) -> dict[str, Any]:
    """Run one read-only statement (SELECT, WITH … SELECT, DESCRIBE, SHOW, EXPLAIN)
    over the views; anything else is refused before it runs. ``columns`` are the
    result's names made unique (:func:`unique_columns`); ``renamed`` maps each
    renamed column to the name the query gave it."""
    import duckdb

    if not sql.strip():
        raise UsageError('empty query; try: voicepipe sql "SELECT count(*) FROM events"')
    if len(sql) > 100_000:
        raise UsageError("query too long (at most 100000 characters)")
    con = locked_connection(store.resolve_root(root))
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise UsageError(f"SQL error: {str(exc).splitlines()[0]}") from exc
    if len(statements) != 1:
        raise UsageError("run one statement at a time")
    kind = statements[0].type
    if kind not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN):
        raise UsageError(
            f"only read-only queries are allowed (got {_statement_word(statements[0])}); "
            "use SELECT over the views events, events_raw, artifacts, snapshots_hourly, snapshots_daily, alerts, alert_log"
        )
    try:
        cur = con.execute(statements[0])
        names = [d[0] for d in cur.description]
        rows = cur.fetchmany(max_rows + 1)
    except duckdb.Error as exc:
        raise UsageError(f"SQL error: {str(exc).splitlines()[0]}") from exc
    columns = unique_columns(names)
    return {
        "columns": columns,
        "renamed": {c: n for c, n in zip(columns, names, strict=True) if c != n},
        "rows": [dict(zip(columns, r, strict=True)) for r in rows[:max_rows]],
        "truncated": len(rows) > max_rows,
    }


__all__ = [
    "ALERT_COLUMNS",
    "APP_PLACEHOLDER",
    "ARTIFACT_COLUMNS",
    "ARTIFACT_SORTS",
    "EVENT_COLUMNS",
    "LOG_FAILURE_TYPES",
    "MAX_EVENT_LIMIT",
    "RANGES",
    "RETRY_COLUMNS",
    "EventFilter",
    "RetryCommand",
    "Thresholds",
    "alerts",
    "artifact_detail",
    "artifacts",
    "confidence_histogram",
    "count_events",
    "dashboard",
    "disambiguation_backlog",
    "event",
    "events",
    "follow_events",
    "iter_events",
    "locked_connection",
    "metrics",
    "organizations",
    "pipeline",
    "require_artifact",
    "require_organization",
    "retries",
    "run_sql",
    "unique_columns",
]


def _local_root_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` refusing an object-store URI as its ``root`` with the one-line
    :class:`StoreError` of :func:`voicepipe_obs.store.local_root` (use its mirror)."""
    import functools

    @functools.wraps(fn)
    def checked(root: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        return fn(store.local_root(root), *args, **kwargs)

    return checked


def _guard_public_readers() -> None:
    """The one choke point: every public function whose first parameter is ``root``."""
    import inspect

    for name in __all__:
        fn = globals()[name]
        if inspect.isfunction(fn) and next(iter(inspect.signature(fn).parameters), None) == "root":
            globals()[name] = _local_root_only(fn)


_guard_public_readers()
