"""The artifact index (artifact_index.py): the ``artifacts`` rows it gives equal the
view over every event, however current the index is — built by aggregate, stale
after new files, carried over by compaction, trimmed by cleanup, damaged — and it
recomputes only the hours whose files changed."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicepipe_obs import aggregate as ag
from voicepipe_obs import artifact_index as ai
from voicepipe_obs import store
from voicepipe_obs.config import RetentionSettings
from voicepipe_obs.events import COLUMN_INDEX, NUM_COLUMNS
from voicepipe_obs.maintenance import cleanup, compact
from voicepipe_obs.query import connect, vetted_files

UTC = dt.timezone.utc
BASE = dt.datetime(2026, 3, 1, 22, tzinfo=UTC)
BASE_US = store.to_us(BASE)
MIN_US = 60_000_000
NOW = dt.datetime(2026, 3, 6, tzinfo=UTC)
NOW_ISO = "2026-03-06T00:00:00Z"

TYPES = [
    "artifact_received",
    "artifact_status_changed",
    "artifact_completed",
    "artifact_failed",
    "transcription_started",
    "transcription_completed",
    "transcription_failed",
    "claims_extraction_started",
    "claims_extracted",
    "entity_resolution_completed",
    "entity_needs_disambiguation",
    "entity_user_resolved",
    "drafts_generated",
    "draft_generation_failed",
    "retry_initiated",
    "retry_succeeded",
    "retry_failed",
    "circuit_breaker_opened",
]
STAGE_OF = {
    "transcription_started": "transcription",
    "transcription_completed": "transcription",
    "transcription_failed": "transcription",
    "claims_extraction_started": "claims_extraction",
    "claims_extracted": "claims_extraction",
    "entity_resolution_completed": "entity_resolution",
    "entity_needs_disambiguation": "entity_resolution",
    "drafts_generated": "draft_generation",
    "draft_generation_failed": "draft_generation",
}


@st.composite
def _event(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(TYPES))
    opt = st.one_of(st.none(), st.integers(0, 5))
    return {
        "event_type": kind,
        # minutes from 22:00: across 23:00, midnight and the next evening
        "minute": draw(st.one_of(st.integers(0, 60 * 20), st.sampled_from([59, 60, 119, 120, 121]))),
        "artifact_id": draw(st.sampled_from(["a1", "a2", "a3", "a4", "a5", None])),
        "organization_id": draw(st.sampled_from(["o1", "o2", None])),
        "coach_user_id": draw(st.sampled_from(["c1", "c2", None])),
        "voice_note_id": draw(st.sampled_from(["v1", None])),
        "source_channel": draw(st.sampled_from(["whatsapp", "app", None])),
        "pipeline_stage": STAGE_OF.get(kind) if draw(st.booleans()) else None,
        "new_status": draw(st.sampled_from(["processing", "transcribing", None]))
        if kind == "artifact_status_changed"
        else None,
        "error_code": draw(st.sampled_from(["Timeout", "Boom", None])),
        "error_message": draw(st.sampled_from(["it broke", None])),
        "claim_count": draw(opt),
        "entity_count": draw(opt),
        "disambiguation_count": draw(opt),
        "draft_count": draw(opt),
        "retry_attempt": draw(opt),
        "ai_cost": draw(st.one_of(st.none(), st.sampled_from([0.25, 0.5, 1.0]))),
    }


def _rows(events: list[dict[str, Any]], start: int) -> list[list[Any]]:
    """Event rows with ids ``e<start+i>`` and distinct timestamps (a tie between two
    events of an artifact would make "the latest" a matter of chance, in the view
    as in the index)."""
    rows = []
    for i, ev in enumerate(events, start=start):
        row: list[Any] = [None] * NUM_COLUMNS
        row[COLUMN_INDEX["event_id"]] = f"e{i}"
        row[COLUMN_INDEX["timestamp"]] = BASE_US + ev["minute"] * MIN_US + i
        for key, value in ev.items():
            if key != "minute":
                row[COLUMN_INDEX[key]] = value
        rows.append(row)
    return rows


def _view(root: Path) -> list[tuple[Any, ...]]:
    """The artifacts view over every event (the definition the index must match)."""
    con = connect(root, live=False)
    try:
        return sorted(con.execute("SELECT * FROM artifacts").fetchall(), key=repr)
    finally:
        con.close()


def _indexed(root: Path, fold: tuple[str, ...] | None = None) -> tuple[list[tuple[Any, ...]], int]:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        computed = ai.artifacts_table(con, root, vetted_files(root), "a", fold)
        return sorted(con.execute("SELECT * FROM a").fetchall(), key=repr), computed
    finally:
        con.close()


def _status(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """(artifact_id, status, received_at) of each row: what STATUS_FOLD decides."""
    return sorted((r[0], r[5], r[11]) for r in rows)


def _open(root: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        ai.open_artifacts_table(con, root, vetted_files(root), "o", (*ai.STATUS_FOLD, "organization_id"))
        return sorted(
            con.execute("SELECT artifact_id, status, received_at, organization_id FROM o").fetchall()
        )
    finally:
        con.close()


def _assert_same(root: Path) -> int:
    view = _view(root)
    rows, computed = _indexed(root)
    assert rows == view
    status_rows, _ = _indexed(root, ai.STATUS_FOLD)
    assert _status(status_rows) == _status(view)
    in_flight = sorted(
        (r[0], r[5], r[11], r[1]) for r in view if r[5] is not None and r[5] not in ("completed", "failed")
    )
    assert _open(root) == in_flight
    return computed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=st.lists(_event(), min_size=1, max_size=40),
    late=st.lists(_event(), max_size=15),
    split=st.integers(1, 3),
)
def test_the_index_gives_the_view_however_current_it_is(
    tmp_path_factory: pytest.TempPathFactory,
    first: list[dict[str, Any]],
    late: list[dict[str, Any]],
    split: int,
) -> None:
    root = tmp_path_factory.mktemp("data")
    rows = _rows(first, 0)
    for n in range(split):
        store.write_event_rows(root, rows[n::split], f"first-{n}")
    store.write_event_rows(root, rows[::3], "dups")  # the same events again
    _assert_same(root)  # no index: every hour from its events

    ag.aggregate(root, now=NOW)  # builds the index
    assert _assert_same(root) == 0

    if late:  # new files in indexed hours and new ones, not yet indexed
        store.write_event_rows(root, _rows(late, 1000) + rows[:2], "late")
        _assert_same(root)
        ag.aggregate(root, now=NOW)
        assert _assert_same(root) == 0

    compact(root, now=NOW, grace=dt.timedelta(0))  # every hour becomes one new file
    assert _assert_same(root) > 0  # the index no longer matches the files...
    ag.aggregate(root, now=NOW)
    assert _assert_same(root) == 0  # ...until aggregate carries it over


def _write(root: Path, hour: int, stem: str, events: list[tuple[str, str, int]]) -> None:
    """Events (type, artifact, minute within the hour) into hour ``hour`` after BASE."""
    rows = []
    for i, (kind, artifact, minute) in enumerate(events):
        row: list[Any] = [None] * NUM_COLUMNS
        row[COLUMN_INDEX["event_id"]] = f"{stem}-{i}"
        row[COLUMN_INDEX["event_type"]] = kind
        row[COLUMN_INDEX["artifact_id"]] = artifact
        row[COLUMN_INDEX["organization_id"]] = "org"
        row[COLUMN_INDEX["timestamp"]] = BASE_US + (hour * 60 + minute) * MIN_US + i
        rows.append(row)
    store.write_event_rows(root, rows, stem)


def _three_hours(root: Path) -> None:
    _write(root, 0, "h0", [("artifact_received", "a1", 1), ("transcription_started", "a1", 2)])
    _write(root, 1, "h1", [("artifact_received", "a2", 1), ("artifact_completed", "a2", 9)])
    _write(root, 2, "h2", [("artifact_completed", "a1", 5)])


def test_refresh_recomputes_only_the_hours_whose_files_changed(root: Path) -> None:
    _three_hours(root)
    first = ai.refresh(root, vetted_files(root))
    # 22:00 and 23:00 on one day, 00:00 on the next: one file per day
    assert (first.hours_computed, first.files_written) == (3, 2)
    again = ai.refresh(root, vetted_files(root))
    assert (again.hours_computed, again.files_written) == (0, 0)
    homes = ai.Manifest.load(root).homes

    _write(root, 1, "h1-late", [("retry_initiated", "a2", 30)])
    assert _assert_same(root) == 1  # the reader computes the changed hour itself
    changed = ai.refresh(root, vetted_files(root))
    assert (changed.hours_computed, changed.files_written) == (1, 1)
    after = ai.Manifest.load(root).homes
    # only that hour moved to a new file; its day's other hour still reads the old one
    assert {h for h in homes if after[h] != homes[h]} == {BASE_US + store.US_PER_HOUR}
    assert _assert_same(root) == 0
    status = {r[0]: r[5] for r in _view(root)}
    assert status == {"a1": "completed", "a2": "retrying"}


def test_a_retry_runs_until_its_outcome_or_its_own_end(root: Path) -> None:
    """DESIGN §4: ``retrying`` while a retry runs. A retry that ended with
    retry_failed (or retry_succeeded) and no artifact outcome after it no longer
    runs: the artifact's outcomes decide again. Each step in its own hour, so the
    index combines partial rows across hours."""
    failed = [("artifact_received", 1), ("transcription_failed", 2), ("artifact_failed", 3)]
    for aid in ("r1", "r2", "r3", "r4"):
        _write(root, 0, f"h0-{aid}", [(kind, aid, minute) for kind, minute in failed])
        _write(root, 1, f"h1-{aid}", [("retry_initiated", aid, 5)])
    ag.aggregate(root, now=NOW)

    def status() -> dict[str, str]:
        assert _assert_same(root) == 0  # the index, current, gives the view's rows
        return {r[0]: r[5] for r in _view(root)}

    assert status() == dict.fromkeys(("r1", "r2", "r3", "r4"), "retrying")
    _write(
        root,
        2,
        "h2",
        [("retry_failed", "r1", 1), ("retry_succeeded", "r2", 1), ("artifact_completed", "r2", 2)],
    )
    _write(root, 2, "h2-r3", [("retry_failed", "r3", 1), ("retry_initiated", "r3", 9)])  # and a second retry
    ag.aggregate(root, now=NOW)
    assert status() == {"r1": "failed", "r2": "completed", "r3": "retrying", "r4": "retrying"}
    assert [r[0] for r in _open(root)] == ["r3", "r4"]
    _write(root, 3, "h3", [("artifact_failed", "r4", 1)])  # an outcome ends it as before
    ag.aggregate(root, now=NOW)
    assert status()["r4"] == "failed"


def test_compaction_is_carried_over_without_reading_events(root: Path) -> None:
    _three_hours(root)
    _write(root, 0, "h0-dup", [("artifact_received", "a1", 1)])  # another file, same hour
    ai.refresh(root, vetted_files(root))
    compact(root, now=NOW, grace=dt.timedelta(0))
    result = ai.refresh(root, vetted_files(root))
    assert (result.hours_computed, result.hours_carried) == (0, 3)
    assert _assert_same(root) == 0


def test_cleanup_drops_hours_and_retires_their_files(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _three_hours(root)
    ai.refresh(root, vetted_files(root))
    manifest = ai.Manifest.load(root)
    old_file = ai.index_dir(root) / str(manifest.homes[BASE_US])
    # keep one day of events: the first day (22:00, 23:00) goes
    dropped = cleanup(root, RetentionSettings(events_days=1), now=BASE + dt.timedelta(days=1, hours=12))
    assert dropped
    assert _assert_same(root) == 0  # the gone hours' rows are left out at once
    result = ai.refresh(root, vetted_files(root))
    assert result.hours_dropped == 2
    manifest = ai.Manifest.load(root)
    assert BASE_US not in manifest.hours and old_file.name in manifest.retired
    assert old_file.exists()  # a reader may still be reading it
    monkeypatch.setattr(ai, "RETIRE_SECONDS", 0)
    ai.refresh(root, vetted_files(root))
    assert not old_file.exists()
    assert ai.Manifest.load(root).retired == {}


def test_a_damaged_index_is_never_believed(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    _three_hours(root)
    ai.refresh(root, vetted_files(root))
    manifest = ai.Manifest.load(root)
    last = max(manifest.hours)
    index_file = ai.index_dir(root) / str(manifest.homes[last])  # 00:00's (alone in its day)

    index_file.write_bytes(b"not parquet but long enough to have a footer")  # damaged
    with caplog.at_level(logging.WARNING, logger="voicepipe_obs.artifact_index"):
        assert _assert_same(root) == 1  # its hour from the events, the others from the index
        assert ai.refresh(root, vetted_files(root)).hours_computed == 1
    assert "is damaged" in caplog.text
    assert _assert_same(root) == 0

    index_file = ai.index_dir(root) / str(ai.Manifest.load(root).homes[last])
    index_file.unlink()  # deleted: the same
    assert _assert_same(root) == 1
    assert ai.refresh(root, vetted_files(root)).hours_computed == 1
    assert _assert_same(root) == 0

    (ai.index_dir(root) / ai.MANIFEST).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="voicepipe_obs.artifact_index"):
        assert _assert_same(root) == 3
        assert ai.refresh(root, vetted_files(root)).hours_computed == 3
    assert "ignoring unreadable" in caplog.text
    assert _assert_same(root) == 0


def test_a_crash_before_the_manifest_leaves_a_stray_file_that_goes(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _three_hours(root)
    ai.refresh(root, vetted_files(root))
    stray = ai.index_dir(root) / "part-20260301-crashed.parquet"
    stray.write_bytes((ai.index_dir(root) / str(ai.Manifest.load(root).homes[BASE_US])).read_bytes())
    assert _assert_same(root) == 0  # not named: never read
    ai.refresh(root, vetted_files(root))
    assert stray.exists()  # young: might be a concurrent writer's
    monkeypatch.setattr(ai, "RETIRE_SECONDS", 0)
    ai.refresh(root, vetted_files(root))
    assert not stray.exists()


def test_aggregate_keeps_the_index_current_and_opens_no_duckdb_when_idle(root: Path) -> None:
    _three_hours(root)
    ag.aggregate(root, now=NOW)
    assert _assert_same(root) == 0
    compact(root, now=NOW, grace=dt.timedelta(0))
    ag.aggregate(root, now=NOW)  # nothing new to aggregate: the index is carried over
    assert _assert_same(root) == 0
    # an idle run imports neither DuckDB nor pyarrow (cron runs it every few minutes)
    code = (
        "import sys, datetime as dt\n"
        "from voicepipe_obs.aggregate import aggregate\n"
        f"aggregate({str(root)!r}, now=dt.datetime(2026, 3, 6, tzinfo=dt.timezone.utc))\n"
        "print('pyarrow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_aggregate_reports_the_index_build_but_not_a_cron_runs_hour(root: Path) -> None:
    """The first build after upgrading (~30 s on a month of 10M events) gets its own
    progress; the hour a cron run indexes does not flash a bar."""
    hours = ai.REFRESH_HOURS + 5  # more than one batch
    for h in range(hours):
        _write(root, h, f"h{h}", [("artifact_received", f"a{h}", 1)])
    steps: list[tuple[int, int]] = []
    ag.aggregate(root, now=NOW, index_progress=lambda done, total: steps.append((done, total)))
    assert steps == [(ai.REFRESH_HOURS, hours), (hours, hours)]
    assert _assert_same(root) == 0
    _write(root, hours, "late", [("artifact_completed", "a1", 5)])
    steps.clear()
    ag.aggregate(root, now=NOW, index_progress=lambda done, total: steps.append((done, total)))
    assert steps == []
    assert _assert_same(root) == 0


def _stuck_store(root: Path) -> None:
    """Three artifacts stuck for days (received long before any report window), one
    completed, one retried after failing — spread over several days' partitions."""
    _write(root, 0, "d0", [("artifact_received", "s1", 1), ("transcription_started", "s1", 2)])
    _write(root, 0, "d0b", [("artifact_received", "ok", 3), ("artifact_completed", "ok", 9)])
    _write(root, 30, "d1", [("artifact_received", "s2", 1)])
    _write(root, 50, "d2", [("artifact_received", "r1", 1), ("artifact_failed", "r1", 5)])
    _write(root, 75, "d3", [("retry_initiated", "r1", 1), ("artifact_received", "s3", 4)])


@pytest.mark.parametrize("indexed", [False, True])
def test_check_counts_the_same_queue_with_and_without_the_index(root: Path, indexed: bool) -> None:
    _stuck_store(root)
    if indexed:
        ag.aggregate(root, now=NOW)
        assert json.loads((ai.index_dir(root) / ai.MANIFEST).read_text())["hours"]
    env = {**os.environ, "VOICEPIPE_DATA": str(root)}
    config = root.parent / "voicepipe.toml"
    config.write_text("[alerts.queue_depth]\nwarning = 3\n[alerts.stuck]\nwarning_count = 1\n")
    exe = Path(sys.executable).with_name("voicepipe")
    out = subprocess.run(
        [str(exe), "--config", str(config), "check", "--dry-run", "--format", "json", "--now", NOW_ISO],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 1, out.stderr
    found = {a["rule"]: a for a in json.loads(out.stdout)["active"]}
    assert found["queue_depth"]["value"] == 4  # s1, s2, s3 and r1 (retrying)
    assert found["stuck"]["value"] == 4


def test_an_index_file_of_the_wrong_shape_falls_back_to_the_events(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import pyarrow as pa

    _three_hours(root)
    ai.refresh(root, vetted_files(root))
    index_file = ai.index_dir(root) / str(ai.Manifest.load(root).homes[BASE_US])
    store.write_table(index_file, pa.table({"x": [1, 2]}))  # valid Parquet, not index rows
    with caplog.at_level(logging.WARNING, logger="voicepipe_obs.artifact_index"):
        rows, computed = _indexed(root)
    assert rows == _view(root) and computed == 3
    assert "reading the events instead" in caplog.text


def test_a_day_recomputed_hour_by_hour_is_merged_into_one_file(root: Path) -> None:
    hours = range(2, 2 + ai.MAX_DAY_FILES + 3)  # 00:00 onwards on the second day
    for hour in range(2 + ai.MAX_DAY_FILES + 4):
        _write(root, hour, f"h{hour}", [("artifact_received", f"a{hour}", 1)])
    ai.refresh(root, vetted_files(root))
    day = [BASE_US + h * store.US_PER_HOUR for h in range(2, 2 + ai.MAX_DAY_FILES + 4)]
    seen = []
    for hour in hours:
        _write(root, hour, f"late{hour}", [("artifact_completed", f"a{hour}", 30)])
        assert ai.refresh(root, vetted_files(root)).hours_computed == 1
        homes = ai.Manifest.load(root).homes
        seen.append(len({homes[h] for h in day}))
        assert _assert_same(root) == 0
    # each refresh adds a file for its hour, until the day has more than
    # MAX_DAY_FILES: then its rows are merged into one
    assert seen == [*range(2, ai.MAX_DAY_FILES + 1), 1, 2, 3, 4]


def test_counting_the_event_log_reads_compacted_hours_from_their_footers(root: Path) -> None:
    """reports.count_events (the event log's total) takes a whole compacted hour's
    count from its footer; the total must equal a distinct count over the events,
    with time bounds that cut hours and with filters."""
    from voicepipe_obs import reports
    from voicepipe_obs.reports import EventFilter

    for hour in range(4):
        _write(root, hour, f"h{hour}", [("artifact_received", f"a{hour}", m) for m in range(0, 60, 7)])
    compact(root, now=BASE + dt.timedelta(hours=3), grace=dt.timedelta(0))  # hours 0-2
    _write(root, 1, "again", [("artifact_received", "a1", m) for m in range(0, 60, 7)])  # duplicates
    now = BASE + dt.timedelta(hours=3, minutes=30)  # inside the last hour

    def distinct(f: EventFilter) -> int:
        con = connect(root, live=False)
        cond, params = f.sql()
        return int(
            con.execute(
                f"SELECT count(DISTINCT event_id) FROM events_raw WHERE {cond} AND timestamp <= $now",
                params | {"now": now},
            ).fetchone()[0]  # type: ignore[index]
        )

    for f in (
        EventFilter(),
        EventFilter(since=BASE + dt.timedelta(minutes=20)),
        EventFilter(until=BASE + dt.timedelta(hours=2, minutes=10)),
        EventFilter(since=BASE + dt.timedelta(hours=1), until=BASE + dt.timedelta(hours=3)),
        EventFilter(types=("artifact_received",), org="org"),
    ):
        assert reports.count_events(root, now=now, filters=f) == distinct(f), f


def test_a_broken_clocks_times_neither_overflow_nor_outrank_a_later_attempt(root: Path) -> None:
    """The key packs (retry attempt, time) into one BIGINT for times from 1970 to
    2112; the recorder takes years 1 to 9999. A year-9999 outcome of a high attempt
    must not overflow the fold (every report and check would fail), and a pre-1970
    one of the pipeline's own run must not borrow from the generation bits."""
    far, early = store.to_us(dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc)), -store.US_PER_DAY
    rows = []
    for i, (kind, artifact, ts, attempt) in enumerate(
        [
            ("artifact_received", "a-far", BASE_US, None),
            ("retry_initiated", "a-far", BASE_US + MIN_US, 1999),
            ("artifact_completed", "a-far", far, 1999),
            ("artifact_received", "a-early", BASE_US, None),
            ("retry_initiated", "a-early", BASE_US + MIN_US, 1),
            ("artifact_completed", "a-early", BASE_US + 2 * MIN_US, 1),
            ("artifact_failed", "a-early", early, None),  # the original run, clock at 1969
        ]
    ):
        row: list[Any] = [None] * NUM_COLUMNS
        row[COLUMN_INDEX["event_id"]] = f"clock-{i}"
        row[COLUMN_INDEX["event_type"]] = kind
        row[COLUMN_INDEX["artifact_id"]] = artifact
        row[COLUMN_INDEX["organization_id"]] = "org"
        row[COLUMN_INDEX["timestamp"]] = ts
        row[COLUMN_INDEX["retry_attempt"]] = attempt
        rows.append(row)
    store.write_event_rows(root, rows, "clock")
    status = {r[0]: r[5] for r in _view(root)}
    assert status == {"a-far": "completed", "a-early": "completed"}
    _assert_same(root)


def test_the_time_in_stage_is_the_current_stages_own(root: Path) -> None:
    """An artifact stuck in claims extraction, retried with --force from
    transcription (attempt 1), whose original run then turns up late with a stage
    event of its own: the current stage is the retry's (the later attempt), and so
    must be the time it was entered — not the stale event's, which would show the
    retry as having just entered transcription. In the view, in the index (built,
    and not yet built) and in the pipeline report's in-progress list."""
    from voicepipe_obs import reports

    rows = []
    for i, (kind, stage, minute, attempt) in enumerate(
        [
            ("artifact_received", "ingestion", 1, None),
            ("transcription_started", "transcription", 2, None),
            ("transcription_completed", "transcription", 3, None),
            ("claims_extraction_started", "claims_extraction", 4, None),
            ("retry_initiated", "transcription", 60, 1),
            ("transcription_started", "transcription", 61, 1),
            ("claims_extracted", "claims_extraction", 150, None),  # the original run, late
        ]
    ):
        row: list[Any] = [None] * NUM_COLUMNS
        row[COLUMN_INDEX["event_id"]] = f"stale-{i}"
        row[COLUMN_INDEX["event_type"]] = kind
        row[COLUMN_INDEX["artifact_id"]] = "s1"
        row[COLUMN_INDEX["organization_id"]] = "org"
        row[COLUMN_INDEX["pipeline_stage"]] = stage
        row[COLUMN_INDEX["timestamp"]] = BASE_US + minute * MIN_US
        row[COLUMN_INDEX["retry_attempt"]] = attempt
        rows.append(row)
    store.write_event_rows(root, rows, "stale")
    entered = BASE + dt.timedelta(minutes=61)
    now = BASE + dt.timedelta(hours=3)

    def stage_of(table: list[tuple[Any, ...]]) -> tuple[Any, ...]:
        (row,) = [(r[5], r[6], r[7]) for r in table if r[0] == "s1"]  # status, stage, its time
        return row

    assert stage_of(_view(root)) == ("retrying", "transcription", entered)
    assert _assert_same(root) == 3  # from the events: three hours
    ag.aggregate(root, now=now)
    assert _assert_same(root) == 0  # from the index

    def in_progress() -> list[tuple[Any, ...]]:
        report = reports.pipeline(root, now=now)
        return [
            (stage["stage"], r["artifact_id"], r["entered_at"], r["elapsed_ms"])
            for stage in report["stages"]
            for r in stage["in_progress"]
        ]

    assert in_progress() == [("transcription", "s1", entered, 119 * MIN_US / 1000)]
    (ai.index_dir(root) / ai.MANIFEST).unlink()  # and without the index
    assert in_progress() == [("transcription", "s1", entered, 119 * MIN_US / 1000)]


def test_an_index_of_format_4_is_rebuilt_once(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Format 5 gave ``current_stage_at`` its key (``current_stage_at__t``): an index
    written before (format 4, rows without that column) is neither read — its rows
    would fail the read, every time, until something rebuilt it — nor kept: the
    next refresh rebuilds it, once."""
    import pyarrow.parquet as pq

    _three_hours(root)
    ai.refresh(root, vetted_files(root))
    manifest = ai.Manifest.load(root)
    for name in manifest.live_files():  # the rows as format 4 wrote them
        path = ai.index_dir(root) / name
        store.write_table(path, pq.read_table(path).drop_columns(["current_stage_at__t"]))
    path = ai.index_dir(root) / ai.MANIFEST
    data = json.loads(path.read_text())
    data["version"] = 4
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="voicepipe_obs.artifact_index"):
        assert _assert_same(root) == 3  # from the events meanwhile
        assert ai.refresh(root, vetted_files(root)).hours_computed == 3
        assert ai.refresh(root, vetted_files(root)).hours_computed == 0
        assert _assert_same(root) == 0
    assert "unreadable" not in caplog.text


def test_deciding_outcome_keys_come_from_the_index_up_to_a_time(root: Path) -> None:
    """The failure-rate rule's lookup: each artifact's greatest outcome key as of a
    time — whole hours from the index (no event read once it is current), the hour
    the time falls in from its events up to that time, later outcomes not at all."""
    _three_hours(root)  # a2 completed at 23:09 (hour 1); a1 at 00:05 (hour 2)
    _write(root, 3, "h3", [("artifact_failed", "a2", 1)])  # after every time asked below
    ai.refresh(root, vetted_files(root))
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE among AS SELECT unnest(['a1', 'a2', 'a3']) AS artifact_id")

        def keys(until: dt.datetime) -> tuple[dict[str, int], int]:
            computed = ai.deciding_outcome_keys(con, root, vetted_files(root), "k", "among", until=until)
            return dict(con.execute("SELECT artifact_id, key FROM k").fetchall()), computed

        a1_done, a2_done = BASE_US + 125 * MIN_US, BASE_US + 69 * MIN_US + 1
        assert keys(BASE + dt.timedelta(hours=2, minutes=30)) == ({"a1": a1_done, "a2": a2_done}, 1)
        assert keys(BASE + dt.timedelta(hours=2, minutes=2)) == ({"a2": a2_done}, 1)
        assert keys(BASE + dt.timedelta(hours=2) - dt.timedelta(microseconds=1)) == ({"a2": a2_done}, 0)
        con.execute("DELETE FROM among")
        assert keys(BASE + dt.timedelta(hours=5)) == ({}, 0)
    finally:
        con.close()
