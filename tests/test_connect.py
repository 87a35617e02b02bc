"""`vp.connect()` for notebooks: live views that see new files and keep working
after compaction, cleanup and aggregation replace or remove files; fixed views
(``live=False``, what the commands use) skip unreadable files."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import duckdb
import pytest

import voicepipe_obs as vp
from voicepipe_obs import aggregate, maintenance, query, store
from voicepipe_obs.config import RetentionSettings
from voicepipe_obs.events import COLUMN_INDEX, NUM_COLUMNS, arrow_schema

UTC = dt.timezone.utc
DAY1 = dt.datetime(2026, 5, 4, tzinfo=UTC)


def ev(n: int, event_type: str, when: dt.datetime, artifact: str) -> list[Any]:
    row: list[Any] = [None] * NUM_COLUMNS
    row[COLUMN_INDEX["event_id"]] = f"e{n}"
    row[COLUMN_INDEX["event_type"]] = event_type
    row[COLUMN_INDEX["timestamp"]] = store.to_us(when)
    row[COLUMN_INDEX["artifact_id"]] = artifact
    row[COLUMN_INDEX["organization_id"]] = "o1"
    return row


def write(root: Path, first: int, day: int, stem: str) -> None:
    """Two artifacts received and completed in hour 3 of ``day``: 4 events."""
    t = DAY1 + dt.timedelta(days=day, hours=3)
    rows = [
        ev(first, "artifact_received", t, f"a{first}"),
        ev(first + 1, "artifact_completed", t + dt.timedelta(seconds=30), f"a{first}"),
        ev(first + 2, "artifact_received", t + dt.timedelta(minutes=1), f"a{first + 2}"),
        ev(first + 3, "artifact_completed", t + dt.timedelta(minutes=2), f"a{first + 2}"),
    ]
    store.write_event_rows(root, rows, stem)


def count(con: duckdb.DuckDBPyConnection, view: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {view}").fetchall()[0][0])


def test_live_connection_follows_new_files_compaction_aggregation_and_cleanup(root: Path) -> None:
    write(root, 0, 0, "w1")
    write(root, 10, 0, "w2")  # same hour, second file
    now = DAY1 + dt.timedelta(days=3)
    aggregate.aggregate(root, now=now)
    con = vp.connect(root)
    fixed = vp.connect(root, live=False)
    assert count(con, "events") == count(fixed, "events") == 8
    assert count(con, "snapshots_hourly") == 2  # 1 hour × (all organisations, o1)

    write(root, 20, 2, "w3")  # a Recorder flushing after the notebook connected
    write(root, 30, 2, "w4")
    assert count(con, "events") == 16
    assert count(fixed, "events") == 8  # fixed to the files present at connect time

    result = maintenance.compact(root, now=now, grace=dt.timedelta(0))
    assert result.files_in == 4 and result.files_out == 2  # sources deleted, replaced
    assert count(con, "events") == 16 and count(con, "events_raw") == 16
    assert count(con, "artifacts") == 8
    with pytest.raises(duckdb.IOException):  # the documented limit of fixed views
        count(fixed, "events")

    aggregate.aggregate(root, now=now)
    assert count(con, "snapshots_hourly") == 4 and count(con, "snapshots_daily") == 4
    completed = con.execute(
        "SELECT sum(artifacts_completed) FROM snapshots_hourly WHERE organization_id IS NULL"
    ).fetchall()
    assert completed == [(8,)]

    dropped = maintenance.cleanup(
        root, RetentionSettings(events_days=2, hourly_snapshots_days=2), now=now + dt.timedelta(hours=1)
    )
    assert {d.date for d in dropped if d.area == store.EVENTS} == {"2026-05-04"}
    assert count(con, "events") == 8  # day 1's partition is gone; day 3 remains
    assert count(con, "snapshots_hourly") == 2


def test_live_connection_with_an_unreadable_file_uses_the_readable_ones(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(root, 0, 0, "w1")
    bad = store.hour_dir(root, "2026-05-04", 3) / "torn.parquet"
    bad.write_bytes(b"PAR1 torn")
    with caplog.at_level(logging.WARNING):
        con = vp.connect(root)
    assert "torn.parquet" in caplog.text and "quarantine" in caplog.text
    assert count(con, "events") == 4
    # a glob would have read the torn file: the view lists the readable files
    src = query.area_source(root, store.EVENTS, empty="e", columns=arrow_schema().names, live=True)
    assert "torn.parquet" not in src and "*" not in src
    assert "w1.parquet" in src


def test_a_new_root_gives_empty_typed_views(tmp_path: Path) -> None:
    con = vp.connect(tmp_path / "nothing-here")
    for view in (
        "events",
        "events_raw",
        "artifacts",
        "snapshots_hourly",
        "snapshots_daily",
        "alerts",
        "alert_log",
    ):
        assert count(con, view) == 0
    assert "event_type" in [d[0] for d in con.execute("SELECT * FROM events").description]


def test_live_views_of_areas_filled_after_connecting_and_emptied_by_cleanup(root: Path) -> None:
    con = vp.connect(root)  # nothing written yet
    assert count(con, "events") == 0 and count(con, "snapshots_hourly") == 0
    write(root, 0, 0, "w1")
    now = DAY1 + dt.timedelta(days=1)
    aggregate.aggregate(root, now=now)
    assert count(con, "events") == 4 and count(con, "artifacts") == 2
    assert count(con, "snapshots_hourly") == 2 and count(con, "snapshots_daily") == 2
    cols = [d[0] for d in con.execute("SELECT * FROM snapshots_daily").description]
    assert cols == aggregate.snapshot_schema().names  # the contract's columns, in order

    dropped = maintenance.cleanup(
        root,
        RetentionSettings(events_days=1, hourly_snapshots_days=1, daily_snapshots_days=1),
        now=now + dt.timedelta(days=5),
    )
    assert {d.area for d in dropped} == {store.EVENTS, store.SNAPSHOTS_HOURLY, store.SNAPSHOTS_DAILY}
    for view in ("events", "artifacts", "snapshots_hourly", "snapshots_daily", "alerts", "alert_log"):
        assert count(con, view) == 0, view  # emptied areas read as empty, typed
    assert [d[0] for d in con.execute("SELECT * FROM events_raw").description] == [
        f.name for f in arrow_schema()
    ]
