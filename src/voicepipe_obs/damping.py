"""Flapping damping for alerts, as Prometheus' ``for`` and ``keep_firing_for``:
which of a check's lifecycle changes wait, and the state of those that wait
(``<root>/_state/pending.json``).

Per rule, ``for_minutes`` holds back a raise until the condition has been found
at every check for that long, and ``keep_firing_minutes`` holds back a resolution
until the condition has been clear at every check for that long (see
:func:`damp`). A raise or resolution that waits is *pending*: nothing is recorded
or notified for it. A pending raise does not count for ``check``'s exit status; an
alert waiting to resolve is still active, and does. A raised alert's start is the
check that raised it (not the first check of its wait).

What is pending is the only alert state kept outside the alert log: one small JSON
file, replaced atomically (:func:`voicepipe_obs.store.write_text_atomic`) by a
check that holds the check lock, after it has appended its records to the log. A
check that dies before writing it leaves the previous file, whose entries the next
check reconciles with the log (an entry for a raise that did get recorded is
dropped). A file that cannot be read or parsed is taken as empty, with a warning:
at worst a pending raise or resolution starts its wait again.

This module reads and writes only that file; :func:`voicepipe_obs.alerts.run_check`
calls it under the check lock. It never reads events or writes the alert log.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from . import store
from .errors import StoreError

if TYPE_CHECKING:  # pragma: no cover
    from .alerts import AlertState, Evaluation
    from .config import Settings

log = logging.getLogger("voicepipe_obs.alerts")

PENDING_FILE: Final = "pending.json"
#: Version of the pending-state file's layout.
PENDING_VERSION: Final = 1
#: A gap between two checks longer than this many times a rule's wait breaks a
#: run of checks (see :func:`max_gap`)...
GAP_FACTOR: Final = 3
#: ... but never a gap up to this long: three 5-minute cron periods, so that a wait
#: shorter than the check interval still completes at the next check.
MIN_GAP: Final = dt.timedelta(minutes=15)

Kind = Literal["raise", "resolve"]
_KINDS: Final = ("raise", "resolve")
_UTC = dt.timezone.utc


def max_gap(wait: dt.timedelta) -> dt.timedelta:
    """The longest time between two checks that still counts as continuous for a
    rule waiting ``wait``: ``GAP_FACTOR`` × ``wait``, at least :data:`MIN_GAP`.

    If checks stop for longer (cron paused, the host down), nobody looked in
    between: the condition may have come and gone. The run starts again at the next
    check, so a pending raise or resolution waits its full time once more — an
    alert is never raised, nor resolved, on the strength of a time nobody watched.
    """
    return max(wait * GAP_FACTOR, MIN_GAP)


@dataclass(frozen=True)
class Run:
    """An unbroken run of checks that found the same thing (a condition for a
    pending raise, its absence for a pending resolution): the first and the latest."""

    since: dt.datetime
    seen: dt.datetime


#: (kind, rule, scope) → its run
PendingState = dict[tuple[str, str, str], Run]


@dataclass(frozen=True)
class PendingAlert:
    """A raise or resolution that waits for its rule's ``for_minutes`` /
    ``keep_firing_minutes``: it happens at the first check at or after ``until``
    if every check until then finds the same."""

    kind: Kind
    rule: str
    scope: str
    organization_id: str | None
    #: the severity it would be raised with (a raise), or the alert's (a resolution)
    severity: str | None
    #: the first check of the run (condition found, or found clear)
    since: dt.datetime
    until: dt.datetime
    #: of the alert to be resolved (None for a raise: it has no id yet)
    alert_id: str | None
    summary: str | None
    value: float | None
    threshold: float | None

    @property
    def key(self) -> tuple[str, str]:
        return self.rule, self.scope

    def remaining(self, now: dt.datetime) -> dt.timedelta:
        return max(self.until - now, dt.timedelta(0))

    def to_dict(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rule": self.rule,
            "scope": self.scope,
            "organization_id": self.organization_id,
            "severity": self.severity,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "remaining_seconds": self.remaining(now).total_seconds(),
            "alert_id": self.alert_id,
            "summary": self.summary,
            "value": self.value,
            "threshold": self.threshold,
        }


def _iso(value: dt.datetime) -> str:
    return value.astimezone(_UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO time, got {value!r}")
    at = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError(f"time without a time zone: {value!r}")
    return at.astimezone(_UTC)


def pending_path(root: Path) -> Path:
    return root / store.STATE / PENDING_FILE


def load_pending(root: Path) -> tuple[PendingState, bool]:
    """The pending state, and whether the file was sound (missing counts as sound:
    nothing pending). An unreadable or malformed file is empty, with a warning, and
    is replaced by the next check that records."""
    path = pending_path(root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, True
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s (%s); taking nothing as pending", path, exc)
        return {}, False
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != PENDING_VERSION:
            raise ValueError(f"not a version-{PENDING_VERSION} pending-state file")
        entries = data["entries"]
        if not isinstance(entries, list):
            raise ValueError("`entries` is not a list")
        state: PendingState = {}
        for entry in entries:
            kind, rule, scope = entry["kind"], entry["rule"], entry["scope"]
            if kind not in _KINDS or not isinstance(rule, str) or not isinstance(scope, str):
                raise ValueError(f"bad entry {entry!r}")
            run = Run(_parse_time(entry["since"]), _parse_time(entry["seen"]))
            if run.since > run.seen:
                raise ValueError(f"entry {rule} [{scope}] is seen before its run starts")
            state[(kind, rule, scope)] = run
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        log.warning("%s is malformed (%s); taking nothing as pending", path, exc)
        return {}, False
    return state, True


def save_pending(root: Path, state: PendingState) -> None:
    """Replace the pending-state file (atomically). Raises :class:`StoreError`: a
    state that cannot be kept would hold every damped raise back for ever."""
    entries = [
        {"kind": kind, "rule": rule, "scope": scope, "since": _iso(run.since), "seen": _iso(run.seen)}
        for (kind, rule, scope), run in sorted(state.items())
    ]
    path = pending_path(root)
    try:
        store.write_text_atomic(path, json.dumps({"version": PENDING_VERSION, "entries": entries}, indent=1))
    except OSError as exc:
        raise StoreError(f"cannot write the pending-alert state {path}: {exc.strerror or exc}") from exc


def _continue(previous: Run | None, now: dt.datetime, wait: dt.timedelta) -> Run:
    """The run after a check at ``now`` that found the same as ``previous``'s
    checks: continued, or started afresh when there was none, when it is not
    before ``now`` (a clock set back), or after a gap (:func:`max_gap`)."""
    if previous is None or stale(previous, now, wait):
        return Run(now, now)
    return Run(previous.since, now)


def damp(
    changes: Sequence[dict[str, Any]],
    active: Sequence[AlertState],
    ev: Evaluation,
    settings: Settings,
    state: Mapping[tuple[str, str, str], Run],
) -> tuple[list[dict[str, Any]], PendingState, list[PendingAlert]]:
    """Hold back the raises and resolutions of ``changes`` (what
    :func:`~voicepipe_obs.alerts.lifecycle_records` would record) whose rule has
    them wait; returns the changes to record, the new pending state and what is
    pending.

    - A **raise** of a new alert (rule with ``for_minutes`` > 0) waits until the
      condition has been found by consecutive checks for ``for_minutes``, measured
      from the first of them to this one. A check that does not find it drops the
      wait (the next finding starts again); one that could not judge the scope
      (too few finished artifacts) keeps it as it was.
    - A **resolution** (rule with ``keep_firing_minutes`` > 0) waits until the
      condition has been clear at consecutive checks for ``keep_firing_minutes``,
      from the first clear check. A check that finds the condition again cancels
      it; one that could not judge keeps it as it was. Escalation is not damped,
      and an alert whose rule was disabled resolves at once.
    - Checks further apart than :func:`max_gap` are not consecutive: the wait
      starts again at the later one.
    """
    now = ev.now
    active_keys = {a.key for a in active}
    found = {f.key for f in ev.findings}
    evaluated = set(ev.evaluated)
    kept: list[dict[str, Any]] = []
    new_state: PendingState = {}
    pending: list[PendingAlert] = []
    for rec in changes:
        kind: Kind
        rule, scope = str(rec["rule"]), str(rec["scope"])
        if rec["record_type"] == "raised" and (rule, scope) not in active_keys:
            kind = "raise"
        elif rec["record_type"] == "resolved" and rule in evaluated:
            kind = "resolve"
        else:
            kept.append(rec)
            continue
        minutes = wait_minutes(settings, rule, kind)
        if minutes <= 0:
            kept.append(rec)
            continue
        wait = dt.timedelta(minutes=minutes)
        run = _continue(state.get((kind, rule, scope)), now, wait)
        if now - run.since >= wait:
            kept.append(rec)
            continue
        new_state[(kind, rule, scope)] = run
        pending.append(_pending(kind, rec, run, wait))
    # not judged this time (too few finished artifacts): the wait is kept as it was
    for (waiting, rule, scope), run in state.items():
        kind = "raise" if waiting == "raise" else "resolve"
        if (kind, rule, scope) in new_state or rule not in evaluated or (rule, scope) in found:
            continue
        minutes = wait_minutes(settings, rule, kind)
        if minutes <= 0 or ((rule, scope) in active_keys) != (kind == "resolve"):
            continue
        if not ev.unjudged(rule, scope):
            continue
        wait = dt.timedelta(minutes=minutes)
        if stale(run, now, wait):
            continue  # unjudged for longer than a gap breaks a run: the wait is over
        new_state[(kind, rule, scope)] = run
        alert = next((a for a in active if a.key == (rule, scope)), None)
        known: dict[str, Any] = {"rule": rule, "scope": scope, "organization_id": _org_of(scope)}
        if alert is not None:  # what a resolution waits on; a raise has nothing yet
            known |= {"organization_id": alert.organization_id, "severity": alert.severity}
            known |= {"alert_id": alert.alert_id, "summary": alert.summary}
        pending.append(_pending(kind, known, run, wait))
    pending.sort(key=lambda p: (p.until, p.rule, p.scope))
    return kept, new_state, pending


def wait_minutes(settings: Settings, rule: str, kind: str) -> float:
    """``rule``'s ``for_minutes`` (``kind`` "raise") or ``keep_firing_minutes``
    ("resolve"); 0, no wait, for a rule the settings do not know (a log written by
    another version, or by hand): its records are never held back."""
    value = getattr(
        getattr(settings.alerts, rule, None), "for_minutes" if kind == "raise" else "keep_firing_minutes", 0
    )
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def stale(run: Run, now: dt.datetime, wait: dt.timedelta) -> bool:
    """Whether the run of checks behind a wait is broken at ``now``: the latest
    check that continued it is after ``now``, or further back than :func:`max_gap`."""
    return run.seen > now or now - run.seen > max_gap(wait)


def _org_of(scope: str) -> str | None:
    return scope.removeprefix("org:") if scope.startswith("org:") else None


def _pending(kind: Kind, rec: Mapping[str, Any], run: Run, wait: dt.timedelta) -> PendingAlert:
    return PendingAlert(
        kind=kind,
        rule=str(rec["rule"]),
        scope=str(rec["scope"]),
        organization_id=rec.get("organization_id"),
        severity=rec.get("severity"),
        since=run.since,
        until=run.since + wait,
        alert_id=rec.get("alert_id") if kind == "resolve" else None,
        summary=rec.get("summary"),
        value=rec.get("value"),
        threshold=rec.get("threshold"),
    )


def read_waits(
    root: Path, settings: Settings, now: dt.datetime
) -> tuple[list[tuple[PendingAlert, dt.datetime, bool]], bool]:
    """What ``pending.json`` says waits, for readers outside a check (reports): each
    wait as a :class:`PendingAlert` (only what the file keeps: no severity, summary
    or alert id), the latest check that found it as it was (``seen``), and whether
    it is *stale* at ``now`` — that check is after ``now`` or longer ago than
    :func:`max_gap`, so the next check starts it again rather than acts on it — and
    whether the file was sound (:func:`load_pending`: missing is sound, damaged is
    empty with a warning). Waits the next check would drop at once (rule disabled,
    or no wait configured for it: are these the settings ``check`` runs with?) are
    left out, with a warning. Reads only: no lock (the file is replaced
    atomically), never writes."""
    state, sound = load_pending(root)
    waits: list[tuple[PendingAlert, dt.datetime, bool]] = []
    unknown: list[str] = []
    for (kind, rule, scope), run in sorted(state.items()):
        waiting: Kind = "raise" if kind == "raise" else "resolve"
        minutes = wait_minutes(settings, rule, waiting)
        if minutes <= 0 or getattr(getattr(settings.alerts, rule, None), "enabled", True) is False:
            unknown.append(f"{rule} [{scope}]")
            continue
        wait = dt.timedelta(minutes=minutes)
        known = {"rule": rule, "scope": scope, "organization_id": _org_of(scope)}
        waits.append((_pending(waiting, known, run, wait), run.seen, stale(run, now, wait)))
    if unknown:
        log.warning(
            "%s: no wait in these settings for %s; left out (does `check` run with another configuration?)",
            pending_path(root),
            ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""),
        )
    return waits, sound
