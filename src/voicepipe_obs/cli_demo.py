"""``voicepipe demo``: parse the options, call :func:`voicepipe_obs._examples.demo.run_demo`
(which writes a week of history plus a few live artifacts with the example
pipeline) and render its summary and the commands to try next.

The logic (root checks, reset, backfill, summary queries) lives in
``_examples/demo.py``; this module only parses, calls and renders.
"""

from __future__ import annotations

import json

import click

from .cli import AppContext, format_option, pass_app, signals_always_raise


@click.command()
@click.option(
    "--days",
    type=click.IntRange(1, 90),
    default=7,
    show_default=True,
    help="Days of history to backfill (simulated clock, written in seconds).",
)
@click.option(
    "--artifacts-per-day",
    "per_day",
    type=click.IntRange(1, 5_000),
    default=150,
    show_default=True,
    help="Voice notes on a weekday (weekends are quieter).",
)
@click.option(
    "--live",
    type=click.IntRange(0, 100),
    default=5,
    show_default=True,
    help="Artifacts then run on the real clock; 2 more are left in flight (none with --live 0).",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the simulated history.")
@click.option(
    "--reset",
    is_flag=True,
    help="Delete the root's events/, snapshots/, alerts/, quarantine/, _spool/ and _state/ first "
    "(needed when it already holds data); all or nothing, other files in the root are kept.",
)
@format_option("table", "json")
@pass_app
def demo(app: AppContext, days: int, per_day: int, live: int, seed: int, reset: bool, fmt: str) -> None:
    """Write 7 days of demo history (and a few live artifacts) into the data root,
    then show what was written and the commands to try next.

    Refuses a root that already holds data unless --reset is given. Example:

        voicepipe --data /tmp/vp demo --days 7 --artifacts-per-day 150
    """
    from ._examples.demo import run_demo

    signals_always_raise()  # the demo's Recorder flushes what it took on the way out
    root = app.root_path  # may not exist yet: the demo creates it (an object store's: its mirror)
    if reset and app.mirror is not None:
        # clearing the mirror's _state drops its manifest: say so, or the push would
        # upload only and the old demo data would stay in the store beside the new
        app.mirror.expect_reset()
    # --reset is all or nothing (maintenance.reset_layout, via run_demo)
    summary = run_demo(
        root,
        days=days,
        per_day=per_day,
        live=live,
        in_flight=2 if live else 0,
        seed=seed,
        reset=reset,
        recorder_options=app.settings.recorder.model_dump(),
        data_flag=app.data is not None,
    )
    url = app.remote_url
    if url is not None:  # written into the mirror, pushed after the command: name the store
        from dataclasses import replace

        from ._examples.demo import next_commands
        from .remote import display

        summary = replace(summary, root=display(url))
        summary = replace(
            summary, commands=next_commands(summary, display(url) if app.data is not None else None)
        )
    if fmt == "json":
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    s = summary
    click.echo(f"Wrote demo data to {s.root} in {s.seconds:.1f} s")
    rows = [
        (
            "history",
            f"{_short(s.first_event)} → {_short(s.last_event)} UTC "
            f"({s.days:g} day{'s' if s.days != 1 else ''} backfilled, "
            f"{s.live} live artifact{'s' if s.live != 1 else ''})",
        ),
        (
            "artifacts",
            f"{s.artifacts:,}: {s.completed:,} completed, {s.failed:,} failed, {s.in_flight:,} in flight",
        ),
        ("events", f"{s.events:,}"),
        ("orgs", f"{len(s.organizations)}: {', '.join(s.organizations)}"),
        ("failed at", ", ".join(f"{k} {v}" for k, v in s.failures_by_stage.items()) or "-"),
        ("errors", ", ".join(f"{k} {v}" for k, v in s.failures_by_error.items()) or "-"),
        (
            "also",
            f"{s.disambiguations} disambiguations ({s.user_resolutions} resolved by reviewers), "
            f"circuit breaker opened {s.breaker_opened}× / closed {s.breaker_closed}×, "
            f"{s.rate_limits} rate limits, ${s.total_ai_cost:,.2f} AI cost",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"  {key:<{width}}  {value}")
    click.echo("\nTry next:")
    for cmd, what in s.commands:
        click.echo(f"  # {what}\n  {cmd}")


def _short(iso: str | None) -> str:
    return iso[:16].replace("T", " ") if iso else "-"
