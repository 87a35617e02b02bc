"""The library side of ``voicepipe demo``: decide whether a data root may take demo
data, write a week of history plus a few live artifacts with the example pipeline
(:mod:`voicepipe_obs._examples.voice_pipeline`), and summarise what the store now
holds, read back through the ``events`` and ``artifacts`` views.

A root that holds demo data is marked by ``<root>/_state/demo.json`` (written before
the first event, so an interrupted demo is still recognised). Resetting removes
only the layout's own directories (events, snapshots, alerts, quarantine, _spool,
_state), never the root itself or other files in it. Rendering is ``cli_demo.py``'s.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .. import store
from ..errors import StoreError, UsageError

MARKER = Path(store.STATE) / "demo.json"
#: What --reset removes (the storage layout's directories, DESIGN §5).
LAYOUT_DIRS = (store.EVENTS, "snapshots", store.ALERTS, store.QUARANTINE, store.SPOOL, store.STATE)
APP_MODULE = "voicepipe_obs._examples.voice_pipeline"

RootState = Literal["empty", "demo", "other"]


class DemoRootError(UsageError):
    """The data root already holds data and --reset was not given."""


def root_state(root: Path) -> RootState:
    """ "empty" (no events), "demo" (written by the demo) or "other" (someone's data)."""
    if (root / MARKER).is_file():
        return "demo"
    has_events = any((root / store.EVENTS).rglob("*.parquet")) if (root / store.EVENTS).is_dir() else False
    has_spool = any((root / store.SPOOL).glob("*.spool")) if (root / store.SPOOL).is_dir() else False
    return "other" if has_events or has_spool else "empty"


def prepare_root(root: Path, *, reset: bool) -> RootState:
    """Check (and with ``reset``, clear) the root before writing; the state found.

    Raises :class:`DemoRootError` when the root holds data and ``reset`` is false.
    """
    state = root_state(root)
    if state == "demo" and not reset:
        raise DemoRootError(
            f"{root} already holds demo data; run the demo again with --reset to replace it, "
            "or pass --data DIR to write somewhere else"
        )
    if state == "other" and not reset:
        raise DemoRootError(
            f"{root} holds events that `voicepipe demo` did not write; pass --data DIR to use "
            "another directory, or --reset to DELETE its events, snapshots and alerts first"
        )
    if reset and state != "empty":
        reset_root(root)
    return state


def reset_root(root: Path) -> None:
    """Remove the layout's directories under ``root`` (not the root, not other files),
    all or nothing (:func:`voicepipe_obs.maintenance.reset_layout`)."""
    from ..maintenance import reset_layout

    reset_layout(root, LAYOUT_DIRS)


def _write_marker(root: Path, info: Mapping[str, Any]) -> None:
    path = root / MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dict(info), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class DemoSummary:
    """What the store holds after the demo (read back through the views)."""

    root: str
    seconds: float
    days: float
    live: int
    artifacts: int
    events: int
    statuses: dict[str, int]
    organizations: list[str]
    first_event: str | None
    last_event: str | None
    failures_by_stage: dict[str, int]
    failures_by_error: dict[str, int]
    disambiguations: int
    user_resolutions: int
    breaker_opened: int
    breaker_closed: int
    rate_limits: int
    total_ai_cost: float
    example_failed: str | None
    example_failed_stage: str | None
    commands: list[list[str]] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return self.statuses.get("completed", 0)

    @property
    def failed(self) -> int:
        return self.statuses.get("failed", 0)

    @property
    def in_flight(self) -> int:
        return self.artifacts - self.completed - self.failed

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(completed=self.completed, failed=self.failed, in_flight=self.in_flight)
        return out


def run_demo(
    root: str | os.PathLike[str],
    *,
    days: float = 7,
    per_day: int = 150,
    live: int = 5,
    in_flight: int = 2,
    seed: int = 7,
    reset: bool = False,
    recorder_options: Mapping[str, Any] | None = None,
    data_flag: bool = False,
    end: dt.datetime | None = None,
) -> DemoSummary:
    """Write the demo into ``root`` and summarise it.

    ``days`` of history are backfilled on a simulated clock (``per_day`` artifacts
    on a weekday), then ``live`` artifacts run on the real clock and ``in_flight``
    more are left unfinished (none when ``live`` is 0). ``recorder_options`` are
    passed to the live Recorder (the config's [recorder] section). ``data_flag``:
    the suggested commands carry ``--data ROOT``. ``end``: when the history ends
    (default: a minute ago); the history's shape follows the weekday and hour
    (fewer artifacts at weekends), so a fixed ``end`` makes it reproducible.
    """
    from ..emit import Recorder
    from . import voice_pipeline as vpl

    rootp = Path(root)
    started = time.perf_counter()
    if rootp.exists() and not rootp.is_dir():
        raise DemoRootError(f"{rootp} is a file, not a directory; pass --data DIR")
    prepare_root(rootp, reset=reset)
    try:
        rootp.mkdir(parents=True, exist_ok=True)
        _write_marker(
            rootp,
            {
                "written_by": "voicepipe demo",
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "days": days,
                "artifacts_per_day": per_day,
                "live": live,
                "seed": seed,
            },
        )
    except OSError as exc:
        raise StoreError(f"cannot write under {rootp} ({exc.strerror or exc}); pass --data DIR") from exc
    lost = vpl.backfill(rootp, days=days, per_day=per_day, seed=seed, end=end).lost
    if live > 0:
        with Recorder(rootp, **dict(recorder_options or {})) as rec:
            vpl.run_live(rec, count=live, in_flight=in_flight, seed=seed)
        lost += rec.stats()["dropped"]
    if lost:  # the recorder never raises (it warned, above): the demo's summary would lie
        raise StoreError(
            f"cannot write under {rootp}: {lost:,} of the demo's events could not be stored (the warnings "
            "above say why: a full or read-only disk?); fix that, then run `voicepipe demo --reset`"
        )
    return summarize(rootp, seconds=time.perf_counter() - started, days=days, live=live, data_flag=data_flag)


def summarize(
    root: Path, *, seconds: float = 0.0, days: float = 0.0, live: int = 0, data_flag: bool = False
) -> DemoSummary:
    """Read the store back through the views and describe it."""
    from ..query import connect

    con = connect(root)
    try:
        per_type = con.execute(
            "SELECT event_type, count(*), min(timestamp), max(timestamp), sum(ai_cost) FROM events GROUP BY 1"
        ).fetchall()
        con.execute(
            "CREATE TEMP TABLE demo_artifacts AS SELECT artifact_id, status, organization_id, "
            "failed_stage, error_code, failed_at FROM artifacts"
        )
        statuses = dict(
            con.execute("SELECT status, count(*) FROM demo_artifacts GROUP BY 1 ORDER BY 1").fetchall()
        )
        orgs = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT organization_id FROM demo_artifacts WHERE organization_id IS NOT NULL ORDER BY 1"
            ).fetchall()
        ]
        by_stage = dict(
            con.execute(
                "SELECT failed_stage, count(*) FROM demo_artifacts WHERE status = 'failed' "
                "GROUP BY 1 ORDER BY 2 DESC, 1"
            ).fetchall()
        )
        by_error = dict(
            con.execute(
                "SELECT error_code, count(*) FROM demo_artifacts WHERE status = 'failed' "
                "GROUP BY 1 ORDER BY 2 DESC, 1"
            ).fetchall()
        )
        example = con.execute(
            "SELECT artifact_id, failed_stage FROM demo_artifacts WHERE status = 'failed' "
            "ORDER BY failed_at DESC, artifact_id LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    counts = {str(r[0]): int(r[1]) for r in per_type}
    summary = DemoSummary(
        root=str(root),
        seconds=round(seconds, 2),
        days=days,
        live=live,
        artifacts=sum(statuses.values()),
        events=sum(int(r[1]) for r in per_type),
        statuses={str(k): int(v) for k, v in statuses.items()},
        organizations=[str(o) for o in orgs],
        first_event=_iso(min((r[2] for r in per_type), default=None)),
        last_event=_iso(max((r[3] for r in per_type), default=None)),
        failures_by_stage={str(k): int(v) for k, v in by_stage.items()},
        failures_by_error={str(k): int(v) for k, v in by_error.items()},
        disambiguations=int(counts.get("entity_needs_disambiguation", 0)),
        user_resolutions=int(counts.get("entity_user_resolved", 0)),
        breaker_opened=int(counts.get("circuit_breaker_opened", 0)),
        breaker_closed=int(counts.get("circuit_breaker_closed", 0)),
        rate_limits=int(counts.get("rate_limit_hit", 0)),
        total_ai_cost=round(sum(float(r[4] or 0) for r in per_type), 4),
        example_failed=example[0] if example else None,
        example_failed_stage=example[1] if example else None,
    )
    return replace(summary, commands=next_commands(summary, root if data_flag else None))


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        # "Z", like every other JSON timestamp voicepipe prints
        return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(value)


def next_commands(summary: DemoSummary, root: Path | str | None) -> list[list[str]]:
    """[command, what it shows] pairs to try next (``--data ROOT`` when ``root`` is
    given: a directory or an object-store URL)."""
    vp = "voicepipe" + (f" --data {shlex.quote(str(root))}" if root is not None else "")
    failed = summary.example_failed
    cmds = [
        [f"{vp} report dashboard", "the whole pipeline at a glance"],
        [f"{vp} report artifacts --status failed", "what failed, where and why"],
    ]
    if failed:
        cmds.append([f"{vp} report artifact {shlex.quote(failed)}", "one failed artifact's timeline"])
    cmds += [
        [f"{vp} report metrics --range 7d", "latency percentiles, failure rates, cost"],
        [f"{vp} aggregate", "build the hourly and daily snapshots (cron)"],
        [f"{vp} check", "evaluate the alert rules (cron; exit 0-3)"],
    ]
    if failed:
        cmds.append(
            [f"{vp} retry {shlex.quote(failed)} --app {APP_MODULE}", "re-run the failed stage by hand"]
        )
    sql = (
        "SELECT organization_id, count(*) AS artifacts, round(sum(total_ai_cost), 2) AS cost_usd "
        "FROM artifacts GROUP BY 1 ORDER BY 2 DESC"
    )
    cmds.append([f"{vp} sql {shlex.quote(sql)}", "your own SQL over the views"])
    return cmds
