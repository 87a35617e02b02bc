"""``voicepipe check`` (evaluate rules, record lifecycle changes, notify; exit
0 OK / 1 warning / 2 critical / 3 could not evaluate — usage errors included, as
Nagios reads 2 as CRITICAL) and ``voicepipe alerts`` (``ack``, ``list``). Parses,
calls :mod:`voicepipe_obs.alerts`, renders."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

from _voicepipe_entry import CHECK_EXIT_UNKNOWN, CHECK_INTERRUPTED, CHECK_TERMINATED, unknown_line
from _voicepipe_entry import wants_json as _wants_json

from .cli import AppContext, OneLineGroup, format_option, parse_now, pass_app, stdout_may_close
from .errors import VoicepipeError

if TYPE_CHECKING:  # pragma: no cover
    from .damping import PendingAlert

#: ``check`` exit code when it could not evaluate (Nagios UNKNOWN).
EXIT_UNKNOWN = CHECK_EXIT_UNKNOWN
#: Set (non-empty) to let an unexpected error in ``check`` end in its traceback
#: instead of the one-line UNKNOWN.
DEBUG_ENV = "VOICEPIPE_DEBUG"
#: ``alerts list`` tables fit this many columns (``--wide``: no limit).
TABLE_WIDTH = 100


def _json(data: Any) -> str:
    """JSON as the reports write it (floats without binary noise, UTC times)."""
    from .render import to_json

    return to_json(data)


def _unknown(message: str, as_json: bool) -> NoReturn:
    """``check`` could not evaluate: one line on stderr (for cron's log) and the status
    on stdout — ``UNKNOWN …``, the line a Nagios plugin's output starts with, or the
    JSON status with --format json — exit 3 (Nagios UNKNOWN)."""
    raise _say_unknown(message, as_json)


def _say_unknown(message: str, as_json: bool) -> click.exceptions.Exit:
    """What :func:`_unknown` writes; the Exit it raises."""
    if as_json:
        click.echo(_json({"status": "UNKNOWN", "exit_code": EXIT_UNKNOWN, "error": message}))
    else:
        click.echo(unknown_line(message))
    click.echo(f"voicepipe: error: check could not evaluate: {message}", err=True)
    return click.exceptions.Exit(EXIT_UNKNOWN)


def _check_failed(exc: Exception, as_json: bool) -> NoReturn:
    """``check`` could not evaluate because of ``exc``: UNKNOWN, one line (an
    unexpected error is a bug, and says so; ``VOICEPIPE_DEBUG=1`` re-raises it)."""
    if isinstance(exc, VoicepipeError):
        _unknown(str(exc), as_json)
    if isinstance(exc, OSError):
        from .store import PERMISSION_ERRNOS, cannot_access

        if exc.errno in PERMISSION_ERRNOS:  # as every other command says it
            _unknown(cannot_access(exc), as_json)
        _unknown(f"{type(exc).__name__}: {exc}", as_json)
    if os.environ.get(DEBUG_ENV):
        raise exc
    first = (str(exc).splitlines() or [""])[0]
    _unknown(
        f"unexpected {type(exc).__name__}: {first} (a bug: please report it; set {DEBUG_ENV}=1 for the traceback)",
        as_json,
    )


def check_interrupted(exc: BaseException, args: Sequence[str]) -> click.exceptions.Exit:
    """``check`` stopped by Ctrl-C or SIGTERM (``exc``) before it could install its
    own handling (while its modules load): the UNKNOWN status as :func:`_unknown`
    writes it, never 130. ``args``: the raw command line, for --format json.
    Returns the Exit (code 3) to raise."""
    return _say_unknown(_interruption(exc), _wants_json(args))


def _interruption(exc: BaseException) -> str:
    from .cli import signal_of

    return _signal_message(signal_of(exc))


def _signal_message(signum: int) -> str:
    """``check``'s UNKNOWN reason after the signal ``signum`` (SIGTERM or Ctrl-C)."""
    import signal

    return CHECK_TERMINATED if signum == signal.SIGTERM else CHECK_INTERRUPTED


def _usage(exc: click.UsageError) -> str:
    return exc.format_message().rstrip(".") + "; see `voicepipe check --help`"


class _NagiosCommand(click.Command):
    """A command whose usage errors (unknown option, bad --format or --now value)
    exit 3 with one line instead of click's usage block and exit 2: ``check`` is a
    Nagios plugin, and 2 would read as CRITICAL."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        raw = list(args)
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            _unknown(_usage(exc), _wants_json(raw))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _unknown(_usage(exc), ctx.params.get("fmt") == "json")


def _line(alert: Mapping[str, Any]) -> str:
    scope = alert["scope"]
    ack = f", acked by {alert['acknowledged_by']}" if alert.get("acknowledged_by") else ""
    return f"{str(alert['severity']).upper()} {alert['rule']} [{scope}] {alert.get('summary') or ''} (id {alert['alert_id']}{ack})"


def _when(value: dt.datetime) -> str:
    return f"{value.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"


def _pending_line(pending: PendingAlert, now: dt.datetime) -> str:
    """A raise or resolution that waits (``for_minutes`` / ``keep_firing_minutes``):
    printed after the alert lines, never first (Nagios reads the first line)."""
    import math

    left = pending.remaining(now)
    minutes = max(1, math.ceil(left.total_seconds() / 60))
    if not left:  # kept by a check that could not judge it
        wait = "waits until enough artifacts finish to judge it"
    elif pending.kind == "raise":
        wait = f"{pending.severity.upper() if pending.severity else 'raised'} if it holds {minutes} min more"
    else:
        wait = f"resolves if it stays clear {minutes} min more"
    if pending.kind == "raise":
        summary = f" {pending.summary}" if pending.summary else ""
        return (
            f"PENDING {pending.rule} [{pending.scope}]{summary} (found since {_when(pending.since)}; {wait})"
        )
    return (
        f"PENDING resolution {pending.rule} [{pending.scope}] "
        f"(clear since {_when(pending.since)}; {wait}; id {pending.alert_id})"
    )


@click.command(cls=_NagiosCommand)
@format_option(
    "text",
    "json",
    default="text",
    help="text: one line per alert, for people and Nagios; json: for machines.",
)
@click.option(
    "--now",
    "now_s",
    metavar="TIME",
    help="Evaluate as of this ISO time (tests, backfills); not later than the clock, "
    "nor earlier than the alert log's latest record, unless --dry-run.",
)
@click.option("--no-notify", is_flag=True, help="Record lifecycle changes but send no notifications.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Evaluate and show what the check would record; write, lock and send nothing.",
)
@pass_app
@click.pass_context
def check(
    ctx: click.Context, app: AppContext, fmt: str, now_s: str | None, no_notify: bool, dry_run: bool
) -> None:
    """Evaluate every alert rule now, record raises/escalations/resolutions,
    send notifications, and print one line per active alert (then a PENDING
    line per raise or resolution held back by for_minutes / keep_firing_minutes).

    Exit status follows the Nagios plugin convention: 0 no active alert,
    1 warning, 2 critical, 3 could not evaluate (bad configuration or option,
    unreadable store, another check holding the lock). Meant for cron:

        */5 * * * * voicepipe --data /srv/voicepipe check >/dev/null
    """
    import signal

    # duckdb and pyarrow load here, before check's own handler: raising in their
    # initialisation can abort the interpreter; the console script's handler exits
    # UNKNOWN at once during an import, and without it the root group says UNKNOWN
    from .alerts import run_check

    stdout_may_close()  # `check | head -1` still exits with the alert state
    now = parse_now(now_s)
    # the signals received while the check runs: DuckDB answers an interrupted query
    # with its own error (a RuntimeError, or a StoreError "cannot read …" once a
    # library call wrapped it), which must still read as the interruption it was
    interrupted: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        interrupted.append(signum)
        interrupt = KeyboardInterrupt()
        interrupt.signum = signum  # type: ignore[attr-defined]  # see cli.signal_of
        raise interrupt

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread (an embedding caller): leave signals alone
            break
    try:
        result = run_check(app.root, app.settings, now=now, notify=not no_notify, dry_run=dry_run)
    except KeyboardInterrupt as exc:  # UNKNOWN, never 130: a plugin's codes are 0-3
        _unknown(_interruption(exc), fmt == "json")
    except Exception as exc:
        if interrupted:
            _unknown(_signal_message(interrupted[0]), fmt == "json")
        _check_failed(exc, fmt == "json")
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)
    if fmt == "json":
        click.echo(_json(result.to_dict()))
    elif not result.active:
        click.echo(f"OK: no active alerts ({len(result.evaluated)} rules evaluated)")
    else:
        for alert in result.active:
            click.echo(_line(alert.to_dict()))
    if fmt != "json":
        for pending in result.pending:
            click.echo(_pending_line(pending, result.now))
    ctx.exit(result.exit_code)


@click.group(cls=OneLineGroup)
def alerts() -> None:
    """Acknowledge and list alerts (the state `voicepipe check` records)."""


@alerts.command("ack")
@click.argument("alert_id")
@click.option("--by", "by", required=True, metavar="NAME", help="Who acknowledges (recorded).")
@click.option("--comment", metavar="TEXT", help="Why, or what is being done.")
@format_option(
    "text",
    "json",
    default="text",
    help="text: one confirmation line; json: the alert's state after the acknowledgement.",
)
@pass_app
def ack(app: AppContext, alert_id: str, by: str, comment: str | None, fmt: str) -> None:
    """Acknowledge an active alert (holds until it resolves)."""
    from .alerts import acknowledge

    state = acknowledge(app.root, alert_id, by, comment=comment)
    if fmt == "json":
        click.echo(_json(state.to_dict()))
    else:
        click.echo(
            f"acknowledged {state.alert_id} ({state.rule} [{state.scope}]) by {by} at {state.to_dict()['acknowledged_at']}"
        )


#: json/csv (and --wide) columns.
_LIST_COLUMNS = (
    "alert_id",
    "status",
    "severity",
    "rule",
    "scope",
    "raised_at",
    "resolved_at",
    "acknowledged_by",
    "summary",
)
#: The history's columns with --wide and in CSV: everything the default table's
#: ``detail`` cell says (see :func:`_history_detail`), each in its own column.
_HISTORY_COLUMNS = (
    "timestamp",
    "record_type",
    "alert_id",
    "rule",
    "scope",
    "severity",
    "previous_severity",
    "actor",
    "comment",
    "notifier",
    "ref_record_type",
    "delivered",
    "summary",
    "description",
    "error",
)
#: How tables are cut to fit TABLE_WIDTH: in this order, each stage shortens its
#: columns (widest first) down to its floor until the table fits. Ids, times,
#: severities and record types always show whole.
_SHRINK_STAGES: tuple[tuple[frozenset[str], int], ...] = (
    (frozenset({"summary", "detail"}), 40),
    (frozenset({"acked_by"}), 12),
    (frozenset({"scope"}), 24),
    (frozenset({"summary", "detail"}), 28),
    (frozenset({"rule"}), 14),
    (frozenset({"scope"}), 16),
    (frozenset({"acked_by"}), 8),
    (frozenset({"summary", "detail"}), 20),
    (frozenset({"scope"}), 12),
    (frozenset({"rule"}), 10),
    (frozenset({"summary", "detail"}), 12),
)
#: Columns cut in the middle (org ids often share a prefix); the rest lose their end.
_CUT_MIDDLE = frozenset({"scope"})


def _minute(value: Any) -> str:
    """A table time: UTC, month-day and minute (json/csv/--wide: full ISO time)."""
    if value is None:
        return "–"
    if not isinstance(value, dt.datetime):
        value = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return f"{value.astimezone(dt.timezone.utc):%m-%d %H:%M}"


def _text(value: Any) -> str:
    return "–" if value is None or value == "" else " ".join(str(value).split())


def _cut(value: str, width: int, middle: bool) -> str:
    if len(value) <= width:
        return value
    if not middle:
        return value[: width - 1] + "…"
    head = (width - 1) // 2
    return value[:head] + "…" + value[len(value) - (width - 1 - head) :]


def _fit(headers: Sequence[str], rows: list[list[str]], width: int) -> list[list[str]]:
    """Cut columns, stage by stage (see _SHRINK_STAGES), until the table fits ``width``."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    for names, floor in _SHRINK_STAGES:
        while excess > 0:
            cuttable = [i for i, h in enumerate(headers) if h in names and widths[i] > max(floor, len(h))]
            if not cuttable:
                break
            i = max(cuttable, key=lambda j: widths[j])
            widths[i] -= 1
            excess -= 1
    return [[_cut(v, w, h in _CUT_MIDDLE) for v, w, h in zip(r, widths, headers, strict=True)] for r in rows]


def _table(headers: Sequence[str], rows: list[list[str]], wide: bool) -> str:
    """A plain table: headers, a dashed rule, rows; two spaces between columns.
    Cut to TABLE_WIDTH unless ``wide``."""
    if not wide:
        rows = _fit(headers, rows, TABLE_WIDTH)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _state_table(states: Sequence[Any], show_all: bool, wide: bool) -> str:
    """Alerts as a table: by default what fits 100 columns (times to the minute,
    long text cut); ``wide``: every list column in full."""
    if wide:
        dicts = [s.to_dict() for s in states]
        return _table(_LIST_COLUMNS, [[_text(d[c]) for c in _LIST_COLUMNS] for d in dicts], wide=True)
    last = "resolved" if show_all else "acked_by"  # resolved "–": still active
    headers = ("alert_id", "severity", "rule", "scope", "raised", last, "summary")
    rows = [
        [
            s.alert_id,
            _text(s.severity),
            s.rule,
            s.scope,
            _minute(s.raised_at),
            _minute(s.resolved_at) if show_all else _text(s.acknowledged_by),
            _text(s.summary),
        ]
        for s in states
    ]
    return _table(headers, rows, wide=False)


def _history_detail(rec: Mapping[str, Any]) -> str:
    """What a log record says, in one cell of the history table."""
    kind = rec["record_type"]
    if kind == "notification":
        outcome = "delivered" if rec["delivered"] else f"failed: {_text(rec['error'])}"
        return f"{rec['notifier']}: {rec['ref_record_type']} {outcome}"
    if kind == "notifier_added":
        return f"{rec['notifier']}: {_text(rec['description'])}"
    if kind == "acknowledged":
        return f"{rec['actor']}: {_text(rec['comment'])}"
    severity = rec["severity"]
    if kind == "escalated":
        severity = f"{rec['previous_severity']} → {severity}"
    return f"[{severity}] {_text(rec['summary'])}"


def _history_table(records: Sequence[Mapping[str, Any]], wide: bool) -> str:
    if wide:
        rows = [[_text(r.get(c)) for c in _HISTORY_COLUMNS] for r in records]
        return _table(_HISTORY_COLUMNS, rows, wide=True)
    headers = ("timestamp", "record_type", "alert_id", "rule", "scope", "detail")
    rows = [
        [
            _minute(r["timestamp"]),
            r["record_type"],
            _text(r["alert_id"]),
            _text(r["rule"]),
            _text(r["scope"]),
            _history_detail(r),
        ]
        for r in records
    ]
    return _table(headers, rows, wide=False)


def _render(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str) -> str:
    if fmt == "json":
        return _json(list(rows))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().rstrip("\n")


@alerts.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include resolved alerts.")
@click.option("--history", is_flag=True, help="Every log record: raises, escalations, acks, notifications.")
@click.option("--rule", metavar="RULE", help="Only this rule (e.g. failure_rate).")
@click.option("--org", "organization_id", metavar="ORG", help="Only this organisation.")
@click.option("--severity", type=click.Choice(["warning", "critical"]), help="Only this severity.")
@click.option("--alert-id", metavar="ID", help="Only this alert (with --history).")
@click.option("--wide", is_flag=True, help="Tables: every column in full (default: fit 100 columns).")
@format_option()
@pass_app
def list_(
    app: AppContext,
    show_all: bool,
    history: bool,
    rule: str | None,
    organization_id: str | None,
    severity: str | None,
    alert_id: str | None,
    wide: bool,
    fmt: str,
) -> None:
    """List active alerts (--all: also resolved; --history: the log)."""
    from .alerts import RULES, alert_history, list_alerts
    from .reports import require_organization

    if rule is not None and rule not in RULES:
        raise click.BadParameter(f"unknown rule; choose from {', '.join(RULES)}", param_hint="--rule")
    root = app.root  # an existing directory (AppContext.root checks)
    if history:
        rows = alert_history(root, alert_id=alert_id, rule=rule, organization_id=organization_id)
        if severity is not None:
            rows = [r for r in rows if r["severity"] == severity]
        if not rows and organization_id is not None:  # a misspelt --org is an error
            require_organization(root, organization_id, alerts=True)
        if fmt == "table":
            click.echo(_history_table(rows, wide) if rows else "no alert records")
        else:
            click.echo(_render(rows, _HISTORY_COLUMNS, fmt))
        return
    states = list_alerts(
        root,
        status="all" if show_all else "active",
        rule=rule,
        organization_id=organization_id,
        severity=severity,
    )
    if alert_id is not None:
        states = [s for s in states if s.alert_id == alert_id]
    if not states and organization_id is not None:
        require_organization(root, organization_id, alerts=True)
    if fmt == "table":
        empty = "no alerts" if show_all else "no active alerts"
        click.echo(_state_table(states, show_all, wide) if states else empty)
    else:
        click.echo(_render([s.to_dict() for s in states], _LIST_COLUMNS, fmt))
