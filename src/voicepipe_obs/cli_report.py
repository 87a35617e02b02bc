"""``voicepipe report ...`` and ``voicepipe sql``: parse options, call
:mod:`voicepipe_obs.reports`, render with :mod:`voicepipe_obs.render`.

No logic lives here that a notebook user could not reach through the library:
every report is ``reports.<name>(root, now=..., ...)`` returning plain data.
stdout carries only the report; diagnostics go to stderr.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .cli import AppContext, format_option, parse_now, pass_app
from .events import ARTIFACT_STATUSES, STAGES, TIMED_STAGES

F = TypeVar("F", bound=Callable[..., Any])
UTC = dt.timezone.utc

_NOW_KEY = "voicepipe.report.now"
#: --follow does not replay events older than this before it started (compaction
#: rewrites closed hours into new files).
FOLLOW_SKIP = dt.timedelta(minutes=10)


def _now(ctx: click.Context) -> dt.datetime:
    frozen = ctx.meta.get(_NOW_KEY)
    return frozen if isinstance(frozen, dt.datetime) else dt.datetime.now(UTC)


def _style(utc: bool) -> Any:
    from .render import Style, colour_wanted

    return Style(colour=colour_wanted(sys.stdout), tz=UTC if utc else None)


def _out(text: str) -> None:
    click.echo(text.rstrip("\n"))


def report_options(*formats: str) -> Callable[[F], F]:
    """--format and --utc, shared by every report."""

    def decorate(fn: F) -> F:
        fn = click.option(
            "--utc", is_flag=True, help="Show times in UTC (default: local time). JSON/CSV are always UTC."
        )(fn)
        return format_option(*(formats or ("table", "json", "csv")))(fn)

    return decorate


def since_until(fn: F) -> F:
    fn = click.option(
        "--until", metavar="WHEN", help="Up to (exclusive): 30m, 2h, 7d (ago) or an ISO date/time."
    )(fn)
    return click.option("--since", metavar="WHEN", help="From: 30m, 2h, 7d (ago) or an ISO date/time (UTC).")(
        fn
    )


def _range(
    since: str | None, until: str | None, now: dt.datetime
) -> tuple[dt.datetime | None, dt.datetime | None]:
    from .timeparse import parse_range

    return parse_range(since, until, now)


def _thresholds(app: AppContext) -> Any:
    from .reports import Thresholds

    return Thresholds.from_settings(app.settings)


def _retry_command(app: AppContext) -> Any:
    """How suggested retry commands are spelt so they work pasted into this shell:
    with this invocation's --data and --config, and --app unless retry.app is set."""
    from .reports import RetryCommand

    return RetryCommand.for_root(
        app.root,
        data_flag=app.data is not None,
        config=app.config_path,
        configured_app=app.settings.retry.app,
    )


# ------------------------------------------------------------------------ group


@click.group()
@click.option(
    "--now",
    "now_value",
    metavar="ISO",
    hidden=True,
    help="Freeze the clock at this time (tests, reproducible output).",
)
@click.pass_context
def report(ctx: click.Context, now_value: str | None) -> None:
    """Dashboards, artifacts, metrics, events, alerts and retries.

    Every report takes --format table|json|csv; times are local unless --utc.
    """
    frozen = parse_now(now_value)
    if frozen is not None:
        ctx.meta[_NOW_KEY] = frozen


@report.command()
@report_options()
@click.option(
    "--watch", metavar="SECONDS", type=click.FloatRange(min=0.5), help="Redraw every SECONDS until Ctrl-C."
)
@pass_app
@click.pass_context
def dashboard(ctx: click.Context, app: AppContext, fmt: str, utc: bool, watch: float | None) -> None:
    """Status cards, the pipeline flow graph, active alerts and the latest events."""
    from . import reports
    from .render import csv_dashboard, render_dashboard, to_json

    style = _style(utc)
    th = _thresholds(app)

    def draw() -> str:
        data = reports.dashboard(app.root, now=_now(ctx), tz=style.tz, thresholds=th)
        if fmt == "json":
            return to_json(data)
        if fmt == "csv":
            return csv_dashboard(data)
        return render_dashboard(data, style)

    if watch is None:
        _out(draw())
        return
    tty = sys.stdout.isatty()
    try:
        while True:
            text = draw()
            if tty:
                click.echo("\x1b[H\x1b[2J", nl=False)
            _out(text)
            if not tty:
                click.echo("")
            sys.stdout.flush()
            time.sleep(watch)
    except KeyboardInterrupt:
        ctx.exit(0)


@report.command()
@report_options()
@click.option(
    "--stage",
    type=click.Choice(list(TIMED_STAGES)),
    help="Only this stage.",
)
@click.option(
    "--since", metavar="WHEN", default="24h", show_default=True, help="Window for errors and the retry queue."
)
@pass_app
@click.pass_context
def pipeline(ctx: click.Context, app: AppContext, fmt: str, utc: bool, stage: str | None, since: str) -> None:
    """Per stage: artifacts at it now, hourly latency, errors by code, retry queue."""
    from . import reports
    from .render import csv_pipeline, render_pipeline, to_json

    now = _now(ctx)
    lo, _ = _range(since, None, now)
    data = reports.pipeline(
        app.root,
        now=now,
        stage=stage,
        since=lo,
        thresholds=_thresholds(app),
        retry_command=_retry_command(app),
    )
    if fmt == "json":
        _out(to_json(data))
    elif fmt == "csv":
        _out(csv_pipeline(data))
    else:
        _out(render_pipeline(data, _style(utc)))


@report.command()
@report_options()
@click.option(
    "--status",
    type=click.Choice(list(ARTIFACT_STATUSES)),
    help="Only artifacts whose derived status is this.",
)
@click.option("--org", metavar="ORG", help="Only this organization_id.")
@click.option("--channel", metavar="CHANNEL", help="Only this source channel (whatsapp, app, ...).")
@click.option(
    "--since",
    metavar="WHEN",
    default="24h",
    show_default=True,
    help="Received from: 30m, 2h, 7d or an ISO date/time.",
)
@click.option("--until", metavar="WHEN", help="Received before: 30m, 2h, 7d (ago) or an ISO date/time.")
@click.option("--search", metavar="PREFIX", help="Artifact id starts with PREFIX.")
@click.option(
    "--sort",
    type=click.Choice(["created", "updated", "status", "latency", "cost", "claims", "org", "id"]),
    default="created",
    show_default=True,
    help="Sort column.",
)
@click.option("--asc", "ascending", is_flag=True, help="Ascending order (default: descending).")
@click.option(
    "--limit", type=click.IntRange(1, 200), default=50, show_default=True, help="Rows per page (at most 200)."
)
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True, help="Page number.")
@click.option("--collapsed", is_flag=True, help="Only id, status, org and time.")
@click.option(
    "--expanded", is_flag=True, help="Each row followed by its timeline, counts, error and retry options."
)
@pass_app
@click.pass_context
def artifacts(
    ctx: click.Context,
    app: AppContext,
    fmt: str,
    utc: bool,
    status: str | None,
    org: str | None,
    channel: str | None,
    since: str | None,
    until: str | None,
    search: str | None,
    sort: str,
    ascending: bool,
    limit: int,
    page: int,
    collapsed: bool,
    expanded: bool,
) -> None:
    """The artifact grid, newest first; `retry` marks failed artifacts that can be retried."""
    from . import reports
    from .render import render_artifacts, to_csv, to_json

    if collapsed and expanded:
        raise click.UsageError("--collapsed and --expanded exclude each other")
    now = _now(ctx)
    lo, hi = _range(since, until, now)
    data = reports.artifacts(
        app.root,
        now=now,
        status=status,
        org=org,
        channel=channel,
        since=lo,
        until=hi,
        search=search,
        sort=sort,
        descending=not ascending,
        limit=limit,
        page=page,
        expanded=expanded,
        thresholds=_thresholds(app),
        retry_command=_retry_command(app),
    )
    if fmt == "json":
        _out(to_json(data))
    elif fmt == "csv":
        _out(to_csv(data["rows"], reports.ARTIFACT_COLUMNS))
    else:
        _out(render_artifacts(data, _style(utc), collapsed=collapsed, expanded=expanded))


@report.command()
@click.argument("artifact_id")
@report_options()
@pass_app
@click.pass_context
def artifact(ctx: click.Context, app: AppContext, artifact_id: str, fmt: str, utc: bool) -> None:
    """One artifact: header, event timeline, retry options and retry history."""
    from . import reports
    from .render import csv_artifact, render_artifact, to_json

    data = reports.artifact_detail(
        app.root, artifact_id, now=_now(ctx), thresholds=_thresholds(app), retry_command=_retry_command(app)
    )
    if fmt == "json":
        _out(to_json(data))
    elif fmt == "csv":
        _out(csv_artifact(data))
    else:
        _out(render_artifact(data, _style(utc)))


@report.command()
@report_options()
@click.option(
    "--range",
    "range_",
    type=click.Choice(["1h", "6h", "24h", "7d", "30d"]),
    default="24h",
    show_default=True,
    help="Time range: 1h (5-minute buckets), 6h (30-minute), 24h (hourly), 7d or 30d (UTC days).",
)
@click.option("--org", metavar="ORG", help="Only this organization_id.")
@click.option(
    "--exact",
    is_flag=True,
    help="7d/30d: compute the range's latency averages, percentiles and stage failure rates "
    "from the raw events (slower); without it they are left out (a percentile cannot be "
    "combined from daily snapshots).",
)
@pass_app
@click.pass_context
def metrics(
    ctx: click.Context, app: AppContext, fmt: str, utc: bool, range_: str, org: str | None, exact: bool
) -> None:
    """Cards, throughput, latency by stage, failure and cost trends, confidence
    histogram and the organisation breakdown."""
    from . import reports
    from .render import CSV_COLUMNS, render_metrics, to_csv, to_json

    data = reports.metrics(app.root, now=_now(ctx), range_=range_, org=org, exact=exact)
    if fmt != "table":
        for note in data["notes"]:
            click.echo(f"voicepipe: note: {note}", err=True)
    if fmt == "json":
        _out(to_json(data))
    elif fmt == "csv":
        _out(to_csv(data["series"], CSV_COLUMNS["metrics"]))
    else:
        _out(render_metrics(data, _style(utc)))


@report.command()
@report_options()
@click.option(
    "--type", "types", multiple=True, metavar="EVENT_TYPE", help="Only this event type (repeatable)."
)
@click.option(
    "--stage",
    type=click.Choice(list(STAGES)),
    help="Only events of this pipeline stage.",
)
@click.option("--org", metavar="ORG", help="Only this organization_id.")
@click.option("--artifact", metavar="ID", help="Only this artifact_id.")
@since_until
@click.option("--errors-only", is_flag=True, help="Only failures and events with an error_code.")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Rows to show at most."
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they land, until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between polls with --follow.",
)
@pass_app
@click.pass_context
def events(
    ctx: click.Context,
    app: AppContext,
    fmt: str,
    utc: bool,
    types: tuple[str, ...],
    stage: str | None,
    org: str | None,
    artifact: str | None,
    since: str | None,
    until: str | None,
    errors_only: bool,
    limit: int,
    follow: bool,
    interval: float,
) -> None:
    """The raw event log, newest first (`--format csv` is the export; --follow tails it)."""
    from . import reports
    from .render import render_events, to_csv, to_json

    now = _now(ctx)
    lo, hi = _range(since, until, now)
    filters = reports.EventFilter(
        types=types, stage=stage, org=org, artifact=artifact, since=lo, until=hi, errors_only=errors_only
    )
    if not follow:
        data = reports.events(app.root, now=now, filters=filters, limit=limit)
        if fmt == "json":
            _out(to_json(data))
        elif fmt == "csv":
            _out(to_csv(data["rows"], reports.EVENT_COLUMNS))
        else:
            _out(render_events(data, _style(utc)))
        return
    _follow(app, filters, fmt, utc, limit, interval, now)


def _follow(
    app: AppContext,
    filters: Any,
    fmt: str,
    utc: bool,
    limit: int,
    interval: float,
    now: dt.datetime,
) -> None:
    import json

    from . import reports
    from .render import render_event_line, to_csv, to_json

    style = _style(utc)

    def line(ev: dict[str, Any]) -> str:
        if fmt == "json":
            return json.dumps(json.loads(to_json(ev)), ensure_ascii=False)
        if fmt == "csv":
            return to_csv([ev], reports.EVENT_COLUMNS).split("\n", 1)[1].rstrip("\n")
        return render_event_line(ev, style)

    seen = set(reports.event_files(app.root))
    if fmt == "csv":
        click.echo(",".join(reports.EVENT_COLUMNS))
    if reports.has_events(app.root):
        initial = reports.events(app.root, now=now, filters=filters, limit=limit)["rows"]
        for ev in reversed(initial):
            click.echo(line(ev))
    else:
        click.echo(f"voicepipe: waiting for events under {app.root} (Ctrl-C to stop)", err=True)
    sys.stdout.flush()
    try:
        for ev in reports.follow_events(
            app.root,
            filters=filters,
            poll_interval=interval,
            seen_files=seen,
            skip_before=dt.datetime.now(UTC) - FOLLOW_SKIP,
        ):
            click.echo(line(ev))
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@report.command("event")
@click.argument("event_id")
@report_options()
@pass_app
def event_cmd(app: AppContext, event_id: str, fmt: str, utc: bool) -> None:
    """One event's full payload."""
    from . import reports
    from .render import render_event, to_csv, to_json

    data = reports.event(app.root, event_id)
    if fmt == "json":
        _out(to_json(data))
    elif fmt == "csv":
        _out(to_csv([data], list(data)))
    else:
        _out(render_event(data, _style(utc)))


@report.command("alerts")
@report_options()
@click.option("--history", is_flag=True, help="Every alert (resolved too), not just active ones.")
@since_until
@click.option("--rule", metavar="RULE", help="Only this rule (failure_rate, latency, ...).")
@click.option("--org", metavar="ORG", help="Only this organization_id.")
@click.option("--severity", type=click.Choice(["warning", "critical"]), help="Only alerts of this severity.")
@pass_app
@click.pass_context
def alerts_cmd(
    ctx: click.Context,
    app: AppContext,
    fmt: str,
    utc: bool,
    history: bool,
    since: str | None,
    until: str | None,
    rule: str | None,
    org: str | None,
    severity: str | None,
) -> None:
    """Active alerts (or --history) as `voicepipe check` recorded them."""
    from . import reports
    from .render import render_alerts, to_csv, to_json

    now = _now(ctx)
    lo, hi = _range(since, until, now)
    data = reports.alerts(
        app.root, now=now, history=history, since=lo, until=hi, rule=rule, org=org, severity=severity
    )
    if fmt == "json":
        _out(to_json(data))
    elif fmt == "csv":
        _out(to_csv(data["rows"], reports.ALERT_COLUMNS))
    else:
        _out(render_alerts(data, _style(utc)))


@report.command()
@report_options()
@click.option(
    "--since",
    metavar="WHEN",
    default="7d",
    show_default=True,
    help="From: 30m, 2h, 7d (ago) or an ISO date/time.",
)
@click.option("--until", metavar="WHEN", help="Up to (exclusive): 30m, 2h, 7d (ago) or an ISO date/time.")
@click.argument("artifact_id", required=False, metavar="[ARTIFACT_ID]")
@click.option("--artifact", metavar="ID", help="Only this artifact_id (same as the argument).")
@click.option("--org", metavar="ORG", help="Only this organization_id.")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Rows to show at most."
)
@pass_app
@click.pass_context
def retries(
    ctx: click.Context,
    app: AppContext,
    fmt: str,
    utc: bool,
    since: str | None,
    until: str | None,
    artifact_id: str | None,
    artifact: str | None,
    org: str | None,
    limit: int,
) -> None:
    """Retry history: who retried what, when, which stage, and how it ended."""
    from . import reports
    from .render import render_retries, to_csv, to_json

    if artifact_id and artifact and artifact_id != artifact:
        raise click.UsageError("give the artifact once: as the argument or with --artifact")
    artifact = artifact_id or artifact
    now = _now(ctx)
    lo, hi = _range(since, until, now)
    data = reports.retries(app.root, now=now, since=lo, until=hi, artifact=artifact, org=org, limit=limit)
    if fmt == "json":
        _out(to_json(data))
    elif fmt == "csv":
        _out(to_csv(data["rows"], reports.RETRY_COLUMNS))
    else:
        _out(render_retries(data, _style(utc)))


# -------------------------------------------------------------------------- sql


@click.command()
@click.argument("query")
@report_options()
@click.option(
    "--max-rows",
    type=click.IntRange(1, 1_000_000),
    default=1000,
    show_default=True,
    help="Print at most this many rows (a note on stderr says when more matched).",
)
@pass_app
def sql(app: AppContext, query: str, fmt: str, utc: bool, max_rows: int) -> None:
    """Run one read-only SQL query on the views (events, events_raw, artifacts,
    snapshots_hourly, snapshots_daily, alerts, alert_log).

    DuckDB is locked down: no files outside the data root, no extensions, no
    settings changes, no writes.

    \b
    Example:
      voicepipe sql "SELECT status, count(*) FROM artifacts GROUP BY ALL"
    """
    from . import reports
    from .render import render_sql, to_csv, to_json

    data = reports.run_sql(app.root, query, max_rows=max_rows)
    if data["truncated"]:
        click.echo(f"voicepipe: note: output cut at {max_rows} rows (--max-rows)", err=True)
    if data["renamed"]:
        names = ", ".join(f"{new} ({old})" for new, old in data["renamed"].items())
        click.echo(f"voicepipe: note: repeated column names made unique: {names}", err=True)
    if fmt == "json":
        _out(to_json(data["rows"], rounded=False))
    elif fmt == "csv":
        _out(to_csv(data["rows"], data["columns"], rounded=False))
    else:
        _out(render_sql(data, _style(utc)))
