"""``voicepipe check`` (evaluate rules, record lifecycle changes, notify; exit
0 OK / 1 warning / 2 critical / 3 could not evaluate) and ``voicepipe alerts``
(``ack``, ``list``). Parses, calls :mod:`voicepipe_obs.alerts`, renders."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import click

from .cli import AppContext, format_option, parse_now, pass_app
from .errors import VoicepipeError

#: ``check`` exit code when it could not evaluate (Nagios UNKNOWN).
EXIT_UNKNOWN = 3

_text_or_json = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: one line per alert, for people and Nagios; json: for machines.",
)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


def _line(alert: Mapping[str, Any]) -> str:
    scope = alert["scope"]
    ack = f", acked by {alert['acknowledged_by']}" if alert.get("acknowledged_by") else ""
    return f"{str(alert['severity']).upper()} {alert['rule']} [{scope}] {alert.get('summary') or ''} (id {alert['alert_id']}{ack})"


@click.command()
@_text_or_json
@click.option("--now", "now_s", metavar="TIME", help="Evaluate as of this ISO time (tests, backfills).")
@click.option("--no-notify", is_flag=True, help="Record lifecycle changes but send no notifications.")
@pass_app
@click.pass_context
def check(ctx: click.Context, app: AppContext, fmt: str, now_s: str | None, no_notify: bool) -> None:
    """Evaluate every alert rule now, record raises/escalations/resolutions,
    send notifications, and print one line per active alert.

    Exit status follows the Nagios plugin convention: 0 no active alert,
    1 warning, 2 critical, 3 could not evaluate (bad configuration, unreadable
    store, another check holding the lock). Meant for cron:

        */5 * * * * voicepipe --data /srv/voicepipe check >/dev/null
    """
    from .alerts import run_check

    now = parse_now(now_s)
    try:
        result = run_check(app.root, app.settings, now=now, notify=not no_notify)
    except (VoicepipeError, OSError) as exc:
        message = str(exc) if isinstance(exc, VoicepipeError) else f"{type(exc).__name__}: {exc}"
        if fmt == "json":
            click.echo(_json({"status": "UNKNOWN", "exit_code": EXIT_UNKNOWN, "error": message}))
        click.echo(f"voicepipe: error: check could not evaluate: {message}", err=True)
        ctx.exit(EXIT_UNKNOWN)
    if fmt == "json":
        click.echo(_json(result.to_dict()))
    elif not result.active:
        click.echo(f"OK: no active alerts ({len(result.evaluated)} rules evaluated)")
    else:
        for alert in result.active:
            click.echo(_line(alert.to_dict()))
    ctx.exit(result.exit_code)


@click.group()
def alerts() -> None:
    """Acknowledge and list alerts (the state `voicepipe check` records)."""


@alerts.command("ack")
@click.argument("alert_id")
@click.option("--by", "by", required=True, metavar="NAME", help="Who acknowledges (recorded).")
@click.option("--comment", metavar="TEXT", help="Why, or what is being done.")
@_text_or_json
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
_HISTORY_COLUMNS = (
    "timestamp",
    "record_type",
    "alert_id",
    "rule",
    "scope",
    "severity",
    "actor",
    "notifier",
    "delivered",
    "summary",
    "error",
)


def _render(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str, empty: str) -> str:
    if fmt == "json":
        return _json(list(rows))
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    if not rows:
        return empty
    from tabulate import tabulate

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        text = str(v)
        return text if len(text) <= 60 else text[:59] + "…"

    return tabulate([[cell(r.get(c)) for c in columns] for r in rows], headers=list(columns))


@alerts.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include resolved alerts.")
@click.option("--history", is_flag=True, help="Every log record: raises, escalations, acks, notifications.")
@click.option("--rule", metavar="RULE", help="Only this rule (e.g. failure_rate).")
@click.option("--org", "organization_id", metavar="ORG", help="Only this organisation.")
@click.option("--severity", type=click.Choice(["warning", "critical"]), help="Only this severity.")
@click.option("--alert-id", metavar="ID", help="Only this alert (with --history).")
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
    fmt: str,
) -> None:
    """List active alerts (--all: also resolved; --history: the log)."""
    from .alerts import RULES, alert_history, list_alerts

    if rule is not None and rule not in RULES:
        raise click.BadParameter(f"unknown rule; choose from {', '.join(RULES)}", param_hint="--rule")
    if history:
        rows = alert_history(app.root, alert_id=alert_id, rule=rule, organization_id=organization_id)
        if severity is not None:
            rows = [r for r in rows if r["severity"] == severity]
        click.echo(_render(rows, _HISTORY_COLUMNS, fmt, "no alert records"))
        return
    states = list_alerts(
        app.root,
        status="all" if show_all else "active",
        rule=rule,
        organization_id=organization_id,
        severity=severity,
    )
    if alert_id is not None:
        states = [s for s in states if s.alert_id == alert_id]
    click.echo(
        _render(
            [s.to_dict() for s in states],
            _LIST_COLUMNS,
            fmt,
            "no active alerts" if not show_all else "no alerts",
        )
    )
