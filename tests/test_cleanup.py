"""Retention: cleanup drops exactly the date partitions past each area's retention,
`--dry-run` lists them without dropping, and the command is quiet when nothing is
due."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from voicepipe_obs import maintenance, store
from voicepipe_obs.cli import main
from voicepipe_obs.config import RetentionSettings

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 5, 7, 12, 0, tzinfo=UTC)
AREAS = (store.EVENTS, store.SNAPSHOTS_HOURLY, store.SNAPSHOTS_DAILY, store.ALERTS)


def populate(root: Path, days_back: int = 100) -> None:
    """A file in every area for each of the last ``days_back`` days (incl. today)."""
    for back in range(days_back):
        date = (NOW - dt.timedelta(days=back)).strftime("%Y-%m-%d")
        for area in AREAS:
            part = root / area / f"date={date}"
            if area == store.EVENTS:
                part = part / "hour=07"
            part.mkdir(parents=True)
            (part / "x.parquet").write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")


def dates(root: Path, area: str) -> set[str]:
    base = root / area
    return {p.name[5:] for p in base.iterdir()} if base.is_dir() else set()


def expected(days: int, days_back: int = 100) -> set[str]:
    """Dates whose whole day ended at least ``days`` days before NOW are dropped."""
    cutoff = NOW - dt.timedelta(days=days)
    out = set()
    for back in range(days_back):
        day = (NOW - dt.timedelta(days=back)).replace(hour=0, minute=0)
        if day + dt.timedelta(days=1) <= cutoff:
            out.add(day.strftime("%Y-%m-%d"))
    return out


@pytest.mark.parametrize(
    "retention",
    [
        RetentionSettings(),
        RetentionSettings(events_days=3, hourly_snapshots_days=1, daily_snapshots_days=10, alerts_days=2),
    ],
)
def test_cleanup_removes_exactly_what_is_past_retention(root: Path, retention: RetentionSettings) -> None:
    populate(root)
    before = {area: dates(root, area) for area in AREAS}
    dropped = maintenance.cleanup(root, retention, now=NOW)
    days = {
        store.EVENTS: retention.events_days,
        store.SNAPSHOTS_HOURLY: retention.hourly_snapshots_days,
        store.SNAPSHOTS_DAILY: retention.daily_snapshots_days,
        store.ALERTS: retention.alerts_days,
    }
    for area in AREAS:
        gone = expected(days[area])
        assert before[area] - dates(root, area) == gone, area
        assert {p.date for p in dropped if p.area == area} == gone
    # the boundary: the day that ended exactly at the cutoff goes, the next one stays
    assert "2026-04-06" not in dates(root, store.EVENTS) or retention.events_days != 30
    assert "2026-04-07" in dates(root, store.EVENTS) or retention.events_days != 30
    assert not list((root / store.STATE / "trash").iterdir())
    assert maintenance.cleanup(root, retention, now=NOW) == []


def test_dry_run_lists_without_dropping(root: Path) -> None:
    populate(root, days_back=40)
    listed = maintenance.cleanup(root, RetentionSettings(), now=NOW, dry_run=True)
    assert {(p.area, p.date) for p in listed} == {(store.EVENTS, d) for d in expected(30, 40)} | {
        (store.SNAPSHOTS_HOURLY, d) for d in expected(7, 40)
    }
    assert all(p.files == 1 and p.bytes == 108 for p in listed)
    assert dates(root, store.EVENTS) >= expected(30, 40)


def test_cli_cleanup(root: Path, runner: Any) -> None:
    populate(root, days_back=9)
    args = ["--data", str(root), "cleanup", "--now", NOW.isoformat()]
    dry = runner.invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "would drop snapshots/hourly/date=2026-04-29 (1 file, 108 B)",
        "would drop 1 partition (108 B)",
    ]
    assert (root / store.SNAPSHOTS_HOURLY / "date=2026-04-29").is_dir()
    real = runner.invoke(main, args)
    assert real.exit_code == 0 and real.stdout.splitlines()[-1] == "dropped 1 partition (108 B)"
    assert not (root / store.SNAPSHOTS_HOURLY / "date=2026-04-29").exists()
    assert (root / store.SNAPSHOTS_HOURLY / "date=2026-04-30").is_dir()  # ends after the cutoff
    quiet = runner.invoke(main, args)
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "", "")


def test_cli_cleanup_uses_configured_retention(root: Path, runner: Any, tmp_path: Path) -> None:
    populate(root, days_back=5)
    config = tmp_path / "voicepipe.toml"
    config.write_text("[retention]\nevents_days = 2\n")
    result = runner.invoke(
        main, ["--data", str(root), "--config", str(config), "cleanup", "--now", NOW.isoformat()]
    )
    assert result.exit_code == 0, result.stderr
    assert dates(root, store.EVENTS) == {"2026-05-05", "2026-05-06", "2026-05-07"}


def test_cleanup_that_cannot_write_drops_nothing(root: Path, runner: Any) -> None:
    """``_state`` is a file (a real failure: the trash cannot be made): one line,
    exit 1, every partition still there."""
    populate(root, days_back=40)
    (root / store.STATE).write_text("not a directory")
    before = {area: dates(root, area) for area in AREAS}
    result = runner.invoke(main, ["--data", str(root), "cleanup", "--now", NOW.isoformat()])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"voicepipe: error: cannot write under {root} (")
    assert result.stderr.count("\n") == 1
    assert {area: dates(root, area) for area in AREAS} == before


def test_verbose_cleanup_logs_each_dropped_partition(root: Path, runner: Any) -> None:
    populate(root, days_back=9)
    args = ["--data", str(root), "cleanup", "--now", NOW.isoformat()]
    result = runner.invoke(main, ["-v", *args])
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("voicepipe: info: cleanup: 1 partitions under ")
    assert lines[1].startswith("voicepipe: info: cleanup: dropped ") and "date=2026-04-29" in lines[1]
    quiet = runner.invoke(main, args)
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "", "")  # -v does not stick
