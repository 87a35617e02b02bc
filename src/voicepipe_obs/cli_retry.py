"""``voicepipe retry``: retry one failed artifact, or every failed artifact that
matches a filter, by running the user's registered retry handler.

Parses options, imports the ``--app`` module, calls :mod:`voicepipe_obs.retry`
and renders: results on stdout, progress and diagnostics on stderr. Exit codes:
0 retried and succeeded (or handed to a queue, or dry run); 1 the retry ran and
failed; 2 usage or configuration error; 4 refused; 130 interrupted (Ctrl-C);
143 terminated (SIGTERM: the running retry is recorded as failed, as on Ctrl-C).
"""

from __future__ import annotations

import datetime as dt
import signal
import sys
from typing import Any

import click

from .cli import AppContext, format_option, pass_app, signals_always_raise, stdout_may_close
from .errors import RetryError
from .retry import (
    RESUMABLE_STAGES,
    ArtifactReader,
    BulkSummary,
    Eligibility,
    RetryInterrupted,
    RetryOutcome,
    RetryPlan,
    RetryRefused,
    check_actor,
    check_eligibility,
    default_actor,
    load_app,
    parse_since,
    retry_all,
    retry_artifact,
    select_failed,
)
from .timeparse import refuse_empty

_MODE_WORDS = {"inline": "in-process", "deferred": "hand-off to a queue"}


def _seconds(ms: float | None) -> str:
    return "?" if ms is None else f"{ms / 1000:.2f} s"


def _describe_plan(plan: RetryPlan) -> str:
    where = "from the beginning" if plan.stage == "full" else f"from {plan.stage}"
    forced = ", forced" if plan.forced else ""
    return (
        f"{plan.artifact_id} {where} (attempt {plan.attempt} of {plan.max_attempts}{forced}) "
        f"as {plan.actor} with {plan.handler.name} "
        f"({_MODE_WORDS[plan.handler.mode]})"
    )


def _describe_outcome(o: RetryOutcome) -> str:
    where = "full" if o.stage == "full" else o.stage
    head = f"{o.artifact_id} [{where}, attempt {o.attempt}]"
    if o.status == "succeeded":
        return f"retry succeeded: {head} in {_seconds(o.duration_ms)}; artifact completed"
    if o.status == "deferred":
        return f"retry queued: {head} handed to {o.handler}; its worker records the outcome"
    if o.status == "dry_run":
        return f"would retry {head} as {o.actor} with {o.handler} ({_MODE_WORDS[o.mode]})"
    return f"retry {o.status}: {head} after {_seconds(o.duration_ms)}: {o.error_code}: {o.error_message}"


def _emit_json(data: Any) -> None:
    """JSON as the reports write it (floats without binary noise, UTC times)."""
    from .render import to_json

    click.echo(to_json(data))


def _refused_json(exc: RetryRefused, fmt: str) -> None:
    """With --format json a refusal is an object on stdout too (the one-line error
    still goes to stderr, exit 4), so a script reads why from the JSON it expects."""
    if fmt == "json":
        _emit_json(
            {"status": "refused", "reason": exc.reason, "message": str(exc), "exit_code": exc.exit_code}
        )


@click.command()
@click.argument("artifact_id", required=False)
@click.option(
    "--stage",
    type=click.Choice(RESUMABLE_STAGES),
    help="Stage to resume at (default: the one that failed). With --all-failed: only artifacts that failed there.",
)
@click.option("--full", is_flag=True, help="Re-run the whole pipeline (the handler registered for 'full').")
@click.option(
    "--app",
    "app_module",
    metavar="MODULE",
    help="Module (or .py file) whose import registers the retry handlers (default: retry.app).",
)
@click.option(
    "--by", "actor", metavar="NAME", help="Who is retrying, for the audit trail (default: OS user)."
)
@click.option("--dry-run", is_flag=True, help="Say what would run, run nothing.")
@click.option(
    "--force", is_flag=True, help="Also retry completed artifacts, lost retries and stuck artifacts."
)
@click.option(
    "--all-failed", is_flag=True, help="Retry every failed artifact (filter with --stage/--org/--since)."
)
@click.option("--org", metavar="ORG", help="With --all-failed: only this organization_id.")
@click.option("--since", metavar="WHEN", help="With --all-failed: failed since 24h, 30m, 7d or an ISO time.")
@click.option("-y", "--yes", is_flag=True, help="With --all-failed: do not ask for confirmation.")
@format_option("table", "json")
@pass_app
@click.pass_context
def retry(
    ctx: click.Context,
    app: AppContext,
    artifact_id: str | None,
    stage: str | None,
    full: bool,
    app_module: str | None,
    actor: str | None,
    dry_run: bool,
    force: bool,
    all_failed: bool,
    org: str | None,
    since: str | None,
    yes: bool,
    fmt: str,
) -> None:
    """Retry a failed artifact's stage by running its registered retry handler.

    \b
    voicepipe retry ART-1 --app mypipeline          # resume at the stage that failed
    voicepipe retry ART-1 --full --by alice         # re-run everything, audited as alice
    voicepipe retry --all-failed --stage transcription --since 24h --yes

    Exit codes: 0 succeeded (or queued, or dry run), 1 the retry ran and failed,
    2 usage error, 4 refused, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """
    refuse_empty("--since", since)
    if stage and full:
        raise click.UsageError("give either --stage or --full, not both")
    if all_failed and artifact_id:
        raise click.UsageError("give an ARTIFACT_ID or --all-failed, not both")
    if not all_failed and not artifact_id:
        raise click.UsageError("give an ARTIFACT_ID to retry, or --all-failed")
    if not all_failed and (org or since or yes):
        raise click.UsageError("--org, --since and --yes only apply with --all-failed")

    stdout_may_close()  # `retry ... | head -1` still retries everything and exits with the outcome
    settings = app.settings
    if actor is not None and not actor.strip():  # the audit trail needs a name
        raise click.BadParameter(
            "must not be empty; give a name, or leave --by out for the OS user", param_hint="--by"
        )
    if actor is not None and any(ord(c) < 32 or ord(c) == 127 for c in actor):
        # a newline or escape in the audit trail forges lines in every report that shows it
        raise click.BadParameter(
            f"{actor!r} holds a control character (a newline, a tab, an escape); give a plain name",
            param_hint="--by",
        )
    actor = actor or default_actor()
    common: dict[str, Any] = {
        "root": app.root,
        "settings": settings.retry,
        "stage": stage,
        "full": full,
        "actor": actor,
        "force": force,
        "stuck_minutes": float(settings.alerts.stuck.minutes),
    }
    terminated: list[int] = []

    def on_sigterm(signum: int, _frame: Any) -> None:
        # a service manager or a timeout stopping us: end like Ctrl-C, so the running
        # retry is recorded as failed instead of staying "retrying" for ever
        terminated.append(signum)
        raise KeyboardInterrupt

    try:
        previous: Any = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread (an embedding caller): leave signals alone
        previous = None
    try:
        check_actor(actor, settings.retry.allowed_actors)  # before the app is imported
        module = app_module or settings.retry.app
        if module:
            load_app(module, root=app.root, recorder_settings=settings.recorder)
        signals_always_raise()  # a handler's first-use import is interrupted like its other code
        if all_failed:
            code = _bulk(app, common, org=org, since=since, yes=yes, dry_run=dry_run, fmt=fmt)
        else:
            assert artifact_id is not None
            code = _single(artifact_id, common, dry_run=dry_run, fmt=fmt)
    except RetryRefused as exc:
        _refused_json(exc, fmt)
        raise
    except RetryInterrupted as exc:
        o = exc.outcome
        what = f"retry of {o.artifact_id} (attempt {o.attempt})" if o is not None else "retry"
        how = "terminated (SIGTERM)" if terminated else "interrupted"
        click.echo(f"voicepipe: {how}: {what} recorded as failed ({exc.error_code})", err=True)
        ctx.exit(143 if terminated else 130)
    except KeyboardInterrupt:
        click.echo("voicepipe: terminated (SIGTERM)" if terminated else "voicepipe: interrupted", err=True)
        ctx.exit(143 if terminated else 130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    ctx.exit(code)


def _started(plan: RetryPlan) -> None:
    click.echo(f"Retrying {_describe_plan(plan)} …", err=True)


def _single(artifact_id: str, common: dict[str, Any], *, dry_run: bool, fmt: str) -> int:
    outcome = retry_artifact(
        artifact_id, dry_run=dry_run, on_start=None if fmt == "json" else _started, **common
    )
    if fmt == "json":
        _emit_json(outcome.to_dict())
    else:
        click.echo(_describe_outcome(outcome))
    return outcome.exit_code


def _bulk(
    app: AppContext,
    common: dict[str, Any],
    *,
    org: str | None,
    since: str | None,
    yes: bool,
    dry_run: bool,
    fmt: str,
) -> int:
    since_at = parse_since(since) if since else None
    reader = ArtifactReader(app.root)  # one scan of the store for the list and every retry
    try:
        return _bulk_run(app, common, reader, org=org, since_at=since_at, yes=yes, dry_run=dry_run, fmt=fmt)
    finally:
        reader.close()


def _dry_run_json(plans: list[tuple[str, Eligibility]]) -> dict[str, Any]:
    """`retry --all-failed --dry-run --format json`: an object, as a real bulk run's
    summary is (counts, then one entry per artifact)."""
    return {
        "dry_run": True,
        "would_retry": sum(1 for _a, e in plans if e.ok),
        "would_skip": sum(1 for _a, e in plans if not e.ok),
        "artifacts": [
            {
                "artifact_id": a,
                "would_run": e.ok,
                "plan": e.plan.to_dict() if e.plan else None,
                "reason": e.message,
            }
            for a, e in plans
        ],
    }


def _bulk_run(
    app: AppContext,
    common: dict[str, Any],
    reader: ArtifactReader,
    *,
    org: str | None,
    since_at: dt.datetime | None,
    yes: bool,
    dry_run: bool,
    fmt: str,
) -> int:
    failed = select_failed(
        app.root, stage=common["stage"], organization_id=org, since=since_at, reader=reader
    )
    to_stdout = fmt != "json"
    if not failed:
        if org is not None:  # a misspelt --org is refused (exit 4, as an unknown artifact is)
            from .errors import NotFoundError
            from .reports import require_organization

            try:
                require_organization(app.root, org)
            except NotFoundError as exc:
                raise RetryRefused("unknown_organization", str(exc)) from None
        if fmt == "json":
            _emit_json(_dry_run_json([]) if dry_run else BulkSummary().to_dict())
        else:
            click.echo("No failed artifacts match.")
        return 0
    from tabulate import tabulate

    rows = [
        (
            f.artifact_id,
            f.organization_id or "",
            f.failed_stage or "",
            f.error_code or "",
            f.failed_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if f.failed_at else "",
            f.retry_count,
        )
        for f in failed
    ]
    click.echo(
        tabulate(rows, headers=["artifact", "org", "failed stage", "error", "failed at (UTC)", "retries"]),
        err=not to_stdout,
    )
    if dry_run:
        plans = [(f.artifact_id, check_eligibility(f.artifact_id, reader=reader, **common)) for f in failed]
        if fmt == "json":
            _emit_json(_dry_run_json(plans))
        else:
            click.echo("")
            for a, e in plans:
                click.echo(
                    f"would retry {_describe_plan(e.plan)}" if e.plan else f"would skip {a}: {e.message}"
                )
        return 0
    if not yes:
        try:
            ok = click.confirm(f"Retry these {len(failed)} artifacts?", default=False, err=True)
        except click.Abort:
            ok = False
        if not ok:
            raise RetryError("not confirmed: nothing retried (pass --yes to skip the question)")
    show_bar = sys.stderr.isatty()
    ids = [f.artifact_id for f in failed]
    if show_bar:
        with click.progressbar(length=len(ids), label="Retrying", file=sys.stderr) as bar:
            summary = retry_all(ids, on_result=lambda *_: bar.update(1), reader=reader, **common)
    else:
        summary = retry_all(ids, on_start=None if fmt == "json" else _started, reader=reader, **common)
    if fmt == "json":
        _emit_json(summary.to_dict())
    else:
        _render_summary(summary)
    return summary.exit_code


def _render_summary(summary: BulkSummary) -> None:
    click.echo("")
    for o in summary.outcomes:
        click.echo(_describe_outcome(o))
    deferred = f", {summary.deferred} queued" if summary.deferred else ""
    click.echo(
        f"\nRetried {summary.retried}: {summary.succeeded} succeeded, {summary.failed} failed{deferred}; "
        f"skipped {len(summary.skipped)}."
    )
    for artifact_id, reason in summary.skipped:
        click.echo(f"  skipped {artifact_id}: {reason}")
    if summary.interrupted:
        click.echo("Interrupted: the remaining artifacts were not retried.")
