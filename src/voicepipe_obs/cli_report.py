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

from .cli import AppContext, OneLineGroup, Seconds, format_option, parse_now, pass_app
from .events import ARTIFACT_STATUSES, STAGES, TIMED_STAGES

F = TypeVar("F", bound=Callable[..., Any])
UTC = dt.timezone.utc

_NOW_KEY = "voicepipe.report.now"
#: --follow does not replay events older than this before it started (compaction
#: rewrites closed hours into new files).
FOLLOW_SKIP = dt.timedelta(minutes=10)
#: The highest --page: a billion pages of the largest page is still a row offset the
#: queries can take (far beyond any store; past its end the report says so).
MAX_PAGE = 1_000_000_000


def _now(ctx: click.Context) -> dt.datetime:
    frozen = ctx.meta.get(_NOW_KEY)
    return frozen if isinstance(frozen, dt.datetime) else dt.datetime.now(UTC)


def _style(utc: bool, width: int | None = None) -> Any:
    """Colour on a TTY without NO_COLOR; times in UTC or local time; the width from
    --width, else the terminal's on a TTY, else 100."""
    from .render import Style, colour_wanted, output_width

    return Style(
        colour=colour_wanted(sys.stdout), tz=UTC if utc else None, width=output_width(sys.stdout, width)
    )


def _zone(utc: bool) -> dt.tzinfo | None:
    """The zone times typed in are read in: the one the tables show (None: local)."""
    return UTC if utc else None


def _out(text: str) -> None:
    click.echo(text.rstrip("\n"))


def report_options(*formats: str) -> Callable[[F], F]:
    """--format, --utc and --width, shared by every report."""

    def decorate(fn: F) -> F:
        fn = click.option(
            "--width",
            metavar="N",
            type=click.IntRange(60, 1000),
            help="Lay tables out for N columns (default: the terminal's width on a TTY, else 100).",
        )(fn)
        fn = click.option(
            "--utc",
            is_flag=True,
            help="Times in UTC, shown and typed in (default: local time). JSON/CSV are always UTC.",
        )(fn)
        return format_option(*(formats or ("table", "json", "csv")))(fn)

    return decorate


_WHEN_HELP = (
    "30m, 2h, 7d (ago), today, or an ISO date/time (local time, UTC with --utc, unless it has an offset)"
)


def since_until(fn: F) -> F:
    fn = click.option("--until", metavar="WHEN", help=f"Up to (exclusive): {_WHEN_HELP}.")(fn)
    return click.option("--since", metavar="WHEN", help=f"From: {_WHEN_HELP}.")(fn)


def _range(
    since: str | None, until: str | None, now: dt.datetime, utc: bool
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """--since/--until as UTC datetimes; naive times, today and yesterday are read
    in the zone the tables show (local time, or UTC with --utc)."""
    from .timeparse import parse_range

    return parse_range(since, until, now, _zone(utc))


def _thresholds(app: AppContext) -> Any:
    from .reports import Thresholds

    return Thresholds.from_settings(app.settings)


def _retry_command(app: AppContext) -> Any:
    """How suggested retry commands are spelt so they work pasted into this shell:
    with this invocation's --data and --config, and --app unless retry.app is set."""
    from .reports import RetryCommand

    command = RetryCommand.for_root(
        app.root,
        data_flag=app.data is not None,
        config=app.config_path,
        configured_app=app.settings.retry.app,
    )
    if app.remote_url is not None:  # the URL the report was given, not the local mirror
        from dataclasses import replace

        from .remote import display

        command = replace(command, data=display(app.data) if app.data is not None else None)
    return command


# ------------------------------------------------------------------------ group


@click.group(cls=OneLineGroup)
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


def _emit(fmt: str, data: Any, csv: Callable[[], str], table: Callable[[], str]) -> None:
    """Write a report in the chosen format: JSON of ``data``, else ``csv()`` or
    ``table()`` (only the chosen one is made)."""
    from .render import to_json

    _out(to_json(data) if fmt == "json" else csv() if fmt == "csv" else table())


@report.command()
@report_options()
@click.option(
    "--watch",
    metavar="SECONDS",
    type=Seconds(0.5, 86_400),
    help="Redraw every SECONDS (0.5 to 86400) until Ctrl-C.",
)
@pass_app
@click.pass_context
def dashboard(
    ctx: click.Context, app: AppContext, fmt: str, utc: bool, width: int | None, watch: float | None
) -> None:
    """Status cards, the pipeline flow graph, active alerts and the latest events."""
    from . import reports
    from .render import csv_dashboard, render_dashboard, to_json

    style = _style(utc, width)
    th = _thresholds(app)

    def draw() -> str:
        data = reports.dashboard(app.root, now=_now(ctx), tz=style.tz, thresholds=th, settings=app.settings)
        if fmt == "json":  # --watch: one compact object per line (JSON Lines)
            return to_json(data, indent=None if watch is not None else 2)
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
            if not tty and fmt != "json":
                click.echo("")
            sys.stdout.flush()
            time.sleep(watch)
            app.redraw_refresh()
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
    "--since",
    metavar="WHEN",
    default="24h",
    show_default=True,
    help=f"Window for errors and the retry queue: {_WHEN_HELP}.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,  # reports.PIPELINE_LIMIT (not imported: it would load DuckDB for --help)
    show_default=True,
    help="Artifacts listed per stage, in flight and in the retry queue (0: all); the counts are always whole.",
)
@pass_app
@click.pass_context
def pipeline(
    ctx: click.Context,
    app: AppContext,
    fmt: str,
    utc: bool,
    width: int | None,
    stage: str | None,
    since: str,
    limit: int,
) -> None:
    """Per stage: artifacts at it now, hourly latency, errors by code, retry queue."""
    from . import reports
    from .render import csv_pipeline, render_pipeline

    now = _now(ctx)
    lo, _ = _range(since, None, now, utc)
    data = reports.pipeline(
        app.root,
        now=now,
        stage=stage,
        since=lo,
        thresholds=_thresholds(app),
        retry_command=_retry_command(app),
        limit=limit or None,
    )
    _emit(fmt, data, lambda: csv_pipeline(data), lambda: render_pipeline(data, _style(utc, width)))


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
    help=f"Received from: {_WHEN_HELP}.",
)
@click.option("--until", metavar="WHEN", help=f"Received before: {_WHEN_HELP}.")
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
@click.option("--page", type=click.IntRange(1, MAX_PAGE), default=1, show_default=True, help="Page number.")
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
    width: int | None,
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
    from .render import render_artifacts, to_csv

    if collapsed and expanded:
        raise click.UsageError("--collapsed and --expanded exclude each other")
    now = _now(ctx)
    lo, hi = _range(since, until, now, utc)
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
    if not data["total"] and org is not None:
        reports.require_organization(app.root, org)  # a misspelt --org is an error, not "no artifacts"
    if data.get("past_end") and fmt != "table":  # the table's footer says so
        click.echo(
            f"voicepipe: note: page {page} is past the end ({data['total']} artifacts, {limit} per page): "
            f"the last page is --page {data['last_page']}",
            err=True,
        )
    _emit(
        fmt,
        data,
        lambda: to_csv(data["rows"], reports.ARTIFACT_COLUMNS),
        lambda: render_artifacts(data, _style(utc, width), collapsed=collapsed, expanded=expanded),
    )


@report.command()
@click.argument("artifact_id")
@report_options()
@pass_app
@click.pass_context
def artifact(
    ctx: click.Context, app: AppContext, artifact_id: str, fmt: str, utc: bool, width: int | None
) -> None:
    """One artifact: header, event timeline, retry options and retry history."""
    from . import reports
    from .render import csv_artifact, render_artifact

    data = reports.artifact_detail(
        app.root, artifact_id, now=_now(ctx), thresholds=_thresholds(app), retry_command=_retry_command(app)
    )
    _emit(fmt, data, lambda: csv_artifact(data), lambda: render_artifact(data, _style(utc, width)))


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
    ctx: click.Context,
    app: AppContext,
    fmt: str,
    utc: bool,
    width: int | None,
    range_: str,
    org: str | None,
    exact: bool,
) -> None:
    """Cards, throughput, latency by stage, failure and cost trends, confidence
    histogram and the organisation breakdown."""
    from . import reports
    from .render import CSV_COLUMNS, render_metrics, to_csv

    data = reports.metrics(app.root, now=_now(ctx), range_=range_, org=org, exact=exact)
    if org is not None and not data["cards"].get("artifacts_received") and not data["organizations"]:
        reports.require_organization(app.root, org)  # a misspelt --org is an error, not all zeros
    if fmt != "table":
        for note in data["notes"]:
            click.echo(f"voicepipe: note: {note}", err=True)
    _emit(
        fmt,
        data,
        lambda: to_csv(data["series"], CSV_COLUMNS["metrics"]),
        lambda: render_metrics(data, _style(utc, width)),
    )


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
    "--limit",
    type=click.IntRange(1, 10_000),
    help="Events per page (at most 10000). Default: 50 in a table; --format csv/json export every "
    "matching event unless --limit or --page is given.",
)
@click.option("--page", type=click.IntRange(1, MAX_PAGE), help="Page number (of --limit events, default 50).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they land, until Ctrl-C.")
@click.option(
    "--interval",
    type=Seconds(0.05, 3_600),
    default=1.0,
    show_default=True,
    help="Seconds between polls with --follow (0.05 to 3600).",
)
@pass_app
@click.pass_context
def events(
    ctx: click.Context,
    app: AppContext,
    fmt: str,
    utc: bool,
    width: int | None,
    types: tuple[str, ...],
    stage: str | None,
    org: str | None,
    artifact: str | None,
    since: str | None,
    until: str | None,
    errors_only: bool,
    limit: int | None,
    page: int | None,
    follow: bool,
    interval: float,
) -> None:
    """The raw event log, newest first (`--format csv` is the export; --follow tails it)."""
    from . import reports
    from .render import render_events, to_csv

    now = _now(ctx)
    lo, hi = _range(since, until, now, utc)
    filters = reports.EventFilter(
        types=types, stage=stage, org=org, artifact=artifact, since=lo, until=hi, errors_only=errors_only
    )
    if follow:
        if page is not None:
            raise click.UsageError("--page does not go with --follow")
        _follow(app, filters, fmt, utc, width, limit or EVENTS_PER_PAGE, interval, now)
        return
    if fmt != "table" and limit is None and page is None:
        _export_events(app, filters, fmt, now)
        return
    data = reports.events(app.root, now=now, filters=filters, limit=limit or EVENTS_PER_PAGE, page=page or 1)
    if not data["rows"] and not data["total"]:
        _require_known(app, filters)
    if data["truncated"] and fmt != "table":
        first = data["offset"] + 1
        shown = f"events {first:,}–{first + len(data['rows']) - 1:,}" if data["rows"] else "no events"
        click.echo(
            f"voicepipe: note: wrote {shown} of {data['total']:,} matching (--limit {data['limit']}, "
            f"--page {data['page']}); without --limit and --page, --format {fmt} exports them all",
            err=True,
        )
    _emit(
        fmt,
        data,
        lambda: to_csv(data["rows"], reports.EVENT_COLUMNS),
        lambda: render_events(data, _style(utc, width)),
    )


#: Events in a page of the table (and with --page but no --limit).
EVENTS_PER_PAGE = 50


def _require_known(app: AppContext, filters: Any) -> None:
    """An --org or --artifact that the store does not know is an error (exit 1, with
    a "did you mean"), not an empty log."""
    from . import reports

    if filters.artifact is not None:
        reports.require_artifact(app.root, filters.artifact)
    if filters.org is not None:
        reports.require_organization(app.root, filters.org)


def _export_events(app: AppContext, filters: Any, fmt: str, now: dt.datetime) -> None:
    """Every matching event, newest first, streamed as CSV or JSON (memory stays
    bounded): the export is complete, or the command fails."""
    from . import reports
    from .render import write_csv, write_json_rows

    rows = reports.iter_events(app.root, now=now, filters=filters)
    first = next(rows, None)
    if first is None:
        _require_known(app, filters)
    stream = sys.stdout

    def everything() -> Any:
        if first is not None:
            yield first
            yield from rows

    if fmt == "csv":
        write_csv(everything(), reports.EVENT_COLUMNS, stream)
        return
    f = filters.validated()
    head = {
        "generated_at": now,
        "filters": f.as_dict(),
        "limit": None,
        "page": 1,
        "offset": 0,
    }
    write_json_rows(head, everything(), lambda n: {"total": n, "truncated": False}, stream)


def _follow(
    app: AppContext,
    filters: Any,
    fmt: str,
    utc: bool,
    width: int | None,
    limit: int,
    interval: float,
    now: dt.datetime,
) -> None:
    """--follow: the latest ``limit`` events oldest first, then each new one."""
    import json

    from . import reports
    from .render import render_event_line, to_csv, to_json

    style = _style(utc, width)

    def line(ev: dict[str, Any]) -> str:
        if fmt == "json":
            return json.dumps(json.loads(to_json(ev)), ensure_ascii=False)
        if fmt == "csv":
            return to_csv([ev], reports.EVENT_COLUMNS).split("\n", 1)[1].rstrip("\n")
        return render_event_line(ev, style)

    seen = set(reports.event_files(app.root))
    if fmt == "csv":
        click.echo(",".join(reports.EVENT_COLUMNS))
    elif fmt == "table":  # the lines carry no zone: say it once, off stdout (grep-able lines)
        click.echo(
            app.shown(
                f"voicepipe: following events under {app.root}, times in {style.tzname()} (Ctrl-C to stop)"
            ),
            err=True,
        )
    if reports.has_events(app.root):
        initial = reports.events(app.root, now=now, filters=filters, limit=limit, count=False)["rows"]
        for ev in reversed(initial):
            click.echo(line(ev))
    else:
        click.echo(app.shown(f"voicepipe: waiting for events under {app.root} (Ctrl-C to stop)"), err=True)
    sys.stdout.flush()
    try:
        for ev in reports.follow_events(
            app.root,
            filters=filters,
            poll_interval=interval,
            seen_files=seen,
            skip_before=dt.datetime.now(UTC) - FOLLOW_SKIP,
            before_poll=app.redraw_refresh,
        ):
            click.echo(line(ev))
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@report.command("event")
@click.argument("event_id")
@report_options()
@pass_app
def event_cmd(app: AppContext, event_id: str, fmt: str, utc: bool, width: int | None) -> None:
    """One event's full payload."""
    from . import reports
    from .render import render_event, to_csv

    data = reports.event(app.root, event_id)
    _emit(fmt, data, lambda: to_csv([data], list(data)), lambda: render_event(data, _style(utc, width)))


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
    width: int | None,
    history: bool,
    since: str | None,
    until: str | None,
    rule: str | None,
    org: str | None,
    severity: str | None,
) -> None:
    """Active alerts (or --history) as `voicepipe check` recorded them, and pending ones."""
    from . import reports
    from .render import render_alerts, to_csv

    now = _now(ctx)
    lo, hi = _range(since, until, now, utc)
    data = reports.alerts(
        app.root,
        now=now,
        history=history,
        since=lo,
        until=hi,
        rule=rule,
        org=org,
        severity=severity,
        settings=app.settings,
    )
    if not data["rows"] and not data["pending"] and org is not None:
        reports.require_organization(app.root, org, alerts=True)
    _emit(
        fmt,
        data,
        lambda: to_csv(reports.alert_csv_rows(data), reports.ALERT_CSV_COLUMNS),
        lambda: render_alerts(data, _style(utc, width)),
    )


@report.command()
@report_options()
@click.option(
    "--since",
    metavar="WHEN",
    default="7d",
    show_default=True,
    help=f"From: {_WHEN_HELP}.",
)
@click.option("--until", metavar="WHEN", help=f"Up to (exclusive): {_WHEN_HELP}.")
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
    width: int | None,
    since: str | None,
    until: str | None,
    artifact_id: str | None,
    artifact: str | None,
    org: str | None,
    limit: int,
) -> None:
    """Retry history: who retried what, when, which stage, and how it ended."""
    from . import reports
    from .render import render_retries, to_csv

    if artifact_id and artifact and artifact_id != artifact:
        raise click.UsageError("give the artifact once: as the argument or with --artifact")
    artifact = artifact_id or artifact
    now = _now(ctx)
    lo, hi = _range(since, until, now, utc)
    data = reports.retries(app.root, now=now, since=lo, until=hi, artifact=artifact, org=org, limit=limit)
    if not data["rows"]:  # an unknown artifact or organisation is an error, not "no retries"
        if artifact is not None:
            reports.require_artifact(app.root, artifact)
        if org is not None:
            reports.require_organization(app.root, org)
    _emit(
        fmt,
        data,
        lambda: to_csv(data["rows"], reports.RETRY_COLUMNS),
        lambda: render_retries(data, _style(utc, width)),
    )


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
def sql(app: AppContext, query: str, fmt: str, utc: bool, width: int | None, max_rows: int) -> None:
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
        _out(render_sql(data, _style(utc, width)))
