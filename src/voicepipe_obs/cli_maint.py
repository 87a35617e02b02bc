"""``voicepipe aggregate``, ``voicepipe compact`` and ``voicepipe cleanup``: the cron
commands. Parse options, call ``aggregate.py`` / ``maintenance.py``, print one line.

Cron-friendly: no progress bar unless stderr is a terminal (with ``-v``, progress
is logged as lines instead); ``compact`` and ``cleanup`` print nothing when there was
nothing to do; warnings (quarantined files) go to stderr; the exit status is
non-zero only on a real failure (a missing or unwritable root: 1; a bad option: 2).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from .cli import AppContext, Seconds, interruptible, pass_app

if TYPE_CHECKING:  # pragma: no cover
    from .maintenance import Leftovers

log = logging.getLogger("voicepipe_obs.cli")


def _now(value: str | None) -> dt.datetime:
    now = dt.datetime.now(dt.timezone.utc)
    if value is None:
        return now
    from .timeparse import parse_since

    return parse_since(value, now)


_now_option = click.option(
    "--now",
    "now_value",
    hidden=True,
    metavar="TIME",
    help="Pretend the current time is TIME (tests, backfills).",
)


@contextmanager
def _progress(label: str, noun: str) -> Iterator[Callable[[int, int], None] | None]:
    """The progress bar on a terminal; with ``-v`` (INFO logging) also a log line
    per step, at most one a second (cron mail stays short), and the last one."""
    from .progress import progress_bar

    with progress_bar(label) as bar:
        if not log.isEnabledFor(logging.INFO):
            yield bar
            return
        last = 0.0

        def update(done: int, total: int) -> None:
            nonlocal last
            if bar is not None:
                bar(done, total)
            now = time.monotonic()
            if done >= total or now - last >= 1.0:
                last = now
                log.info("%s: %d of %d %s done", label, done, total, noun)

        yield update


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


#: what Ctrl-C (exit 130) or SIGTERM (143) leaves: every file is written under a
#: temporary name and renamed into place, aggregate records the event files it has
#: done last, and cleanup moves a partition to its trash before deleting it (the next
#: run removes what an interrupted one left).
AGGREGATE_INTERRUPTED = "nothing half-written; run it again to catch up"
INTERRUPTED = "nothing half-written or lost; run it again to finish"

_wait_option = click.option(
    "--wait",
    "wait_s",
    type=Seconds(0, math.inf),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long for another run of the command to finish, then exit 5 having done nothing "
    "(0: do not wait; inf: wait as long as it takes).",
)


@click.command()
@click.option("--since", metavar="TIME", help="Recompute buckets from TIME (30m, 2h, 7d, 2026-11-01, ...).")
@click.option("--until", metavar="TIME", help="Recompute buckets before TIME (default: now).")
@click.option("--rebuild", is_flag=True, help="Recompute every snapshot within retention.")
@_wait_option
@_now_option
@pass_app
def aggregate(
    app: AppContext, since: str | None, until: str | None, rebuild: bool, wait_s: float, now_value: str | None
) -> None:
    """Build hourly and daily snapshots under snapshots/.

    By default only the hours (and days) that received new event files since the
    last run are recomputed, wherever their timestamps fall (late events included).
    --since/--until recompute a range; --rebuild recomputes everything within
    retention. Safe to run from cron and to interrupt: the next run converges.
    """
    from .aggregate import aggregate as run_aggregate
    from .errors import UsageError
    from .timeparse import parse_range

    now = _now(now_value)
    if rebuild and (since or until):
        raise UsageError("--rebuild recomputes everything within retention: drop --since/--until")
    lo, hi = parse_range(since, until, now)
    with (
        interruptible(click.get_current_context(), AGGREGATE_INTERRUPTED),
        _progress("aggregating days", "days") as bar,
        _progress("indexing artifacts", "hours") as ibar,
    ):
        result = run_aggregate(
            app.root,
            now=now,
            since=lo,
            until=hi,
            rebuild=rebuild,
            retention=app.settings.retention,
            progress=bar,
            index_progress=ibar,
            lock_timeout=wait_s,
        )
    if result.nothing_to_do and result.mode == "incremental":
        click.echo("snapshots up to date (no new event files)")
        return
    what = {
        "incremental": f"{_plural(result.new_files, 'new event file')}",
        "range": "the requested range",
        "rebuild": "everything within retention",
    }[result.mode]
    line = (
        f"aggregated {what}: {_plural(result.hourly_written, 'hourly snapshot')} and "
        f"{_plural(result.daily_written, 'daily snapshot')} written"
    )
    if result.removed:
        line += f", {_plural(result.removed, 'empty bucket')} removed"
    line += f" ({result.events_scanned:,} events, {result.seconds:.1f}s)"
    if result.kept_past_events:
        kept = _plural(result.kept_past_events, "older snapshot")
        line += f"; {kept} kept as they are: their events are past retention"
    click.echo(line)


@click.command()
@click.option(
    "--grace",
    default="5m",
    show_default=True,
    metavar="DURATION",
    help="Leave files younger than this alone (a live writer may still be settling).",
)
@_wait_option
@_now_option
@pass_app
def compact(app: AppContext, grace: str, wait_s: float, now_value: str | None) -> None:
    """Merge each closed hour's event files into one sorted file.

    Duplicate events are dropped, spools of dead processes are recovered, and
    unreadable files are moved to quarantine/ (named on stderr). Readers running
    meanwhile never miss an event. Idempotent; prints nothing when there is
    nothing to do.
    """
    from .maintenance import compact as run_compact
    from .timeparse import parse_duration

    grace_td = parse_duration(grace)
    now = _now(now_value)
    root = app.root
    with (
        interruptible(click.get_current_context(), INTERRUPTED),
        _progress("compacting hours", "hours") as bar,
    ):
        # each quarantined file is named on stderr by the library's warning
        result = run_compact(root, now=now, grace=grace_td, progress=bar, lock_timeout=wait_s)
    parts = []
    if result.files_in:
        parts.append(
            f"compacted {_plural(result.files_in, 'file')} into {result.files_out} "
            f"({_plural(result.hours, 'hour')}, {_plural(result.duplicates_dropped, 'duplicate event')} dropped)"
        )
    if result.spool_segments:
        parts.append(
            f"recovered {_plural(result.spool_events, 'event')} from "
            f"{_plural(result.spool_segments, 'spool segment')}"
        )
    if result.quarantined:
        parts.append(f"quarantined {_plural(len(result.quarantined), 'file')}")
    if result.leftovers:
        parts.append(_leftover_line("removed", result.leftovers))
    if parts:
        click.echo("; ".join(parts))


def _leftover_line(verb: str, left: Leftovers) -> str:
    """What interrupted runs left: ``removed what interrupted runs left: 1 trashed
    partition, 2 temporary files (157.0 MB)``."""
    parts = []
    if left.trash:
        parts.append(_plural(len(left.trash), "trashed partition"))
    if left.tmp_files:
        parts.append(_plural(len(left.tmp_files), "temporary file"))
    return f"{verb} what interrupted runs left: {', '.join(parts)} ({_size(left.bytes)})"


@click.command()
@click.option("--dry-run", is_flag=True, help="List what would be dropped, drop nothing.")
@_wait_option
@_now_option
@pass_app
def cleanup(app: AppContext, dry_run: bool, wait_s: float, now_value: str | None) -> None:
    """Drop date partitions past retention (events 30 days, hourly snapshots 7,
    daily snapshots 90, alerts 90; see [retention] in voicepipe.toml).

    Prints one line per dropped partition; nothing when nothing is past retention.
    Dropping events waits for a running compact or aggregate (--wait), then exits 5
    having dropped nothing.
    """
    from .maintenance import cleanup as run_cleanup
    from .maintenance import leftovers

    now = _now(now_value)
    with interruptible(click.get_current_context(), INTERRUPTED):
        left = leftovers(app.root)
        dropped = run_cleanup(app.root, app.settings.retention, now=now, dry_run=dry_run, lock_timeout=wait_s)
    if left:
        click.echo(_leftover_line("would remove" if dry_run else "removed", left))
    verb = "would drop" if dry_run else "dropped"
    for part in dropped:
        click.echo(
            f"{verb} {part.area}/date={part.date} ({_plural(part.files, 'file')}, {_size(part.bytes)})"
        )
    if dropped:
        total = sum(p.bytes for p in dropped)
        click.echo(f"{verb} {_plural(len(dropped), 'partition')} ({_size(total)})")
