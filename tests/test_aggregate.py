"""Snapshots: the contract (columns, views), hand-checked metric values, idempotence,
incremental runs after late events, crash convergence, compaction interplay, the
window queries, and the `voicepipe aggregate` command."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import voicepipe_obs as vp
from voicepipe_obs import aggregate as ag
from voicepipe_obs import maintenance, store
from voicepipe_obs.cli import main
from voicepipe_obs.errors import UsageError
from voicepipe_obs.events import COLUMN_INDEX, NUM_COLUMNS
from voicepipe_obs.timeparse import parse_duration, parse_range, parse_since

UTC = dt.timezone.utc
DAY1 = dt.datetime(2026, 5, 4, tzinfo=UTC)
NOW = dt.datetime(2026, 5, 7, 12, tzinfo=UTC)

DESIGN_COLUMNS = [
    "period_type", "period_start", "period_end", "organization_id", "created_at",
    "artifacts_received", "artifacts_completed", "artifacts_failed",
    "avg_transcription_latency_ms", "p95_transcription_latency_ms",
    "avg_claims_extraction_latency_ms", "p95_claims_extraction_latency_ms",
    "avg_entity_resolution_latency_ms", "p95_entity_resolution_latency_ms",
    "avg_draft_generation_latency_ms", "p95_draft_generation_latency_ms",
    "avg_end_to_end_latency_ms", "p50_end_to_end_latency_ms",
    "p95_end_to_end_latency_ms", "p99_end_to_end_latency_ms",
    "transcription_failure_rate", "claims_extraction_failure_rate",
    "entity_resolution_failure_rate", "draft_generation_failure_rate",
    "overall_failure_rate", "avg_transcript_confidence", "avg_claim_confidence",
    "auto_resolution_rate", "disambiguation_rate",
    "total_claims_extracted", "total_entities_resolved", "total_drafts_generated",
    "total_ai_cost", "avg_cost_per_artifact",
    "retries_initiated", "retries_succeeded", "retries_failed",
    # added after DESIGN §6 (its "derived" disambiguation backlog's two terms)
    "disambiguations_flagged", "disambiguations_resolved",
]  # fmt: skip

_ids = iter(range(10**9))


def ev(event_type: str, when: dt.datetime, **fields: Any) -> list[Any]:
    row: list[Any] = [None] * NUM_COLUMNS
    row[COLUMN_INDEX["event_id"]] = fields.pop("event_id", f"t{next(_ids)}")
    row[COLUMN_INDEX["event_type"]] = event_type
    row[COLUMN_INDEX["timestamp"]] = store.to_us(when)
    for key, value in fields.items():
        row[COLUMN_INDEX[key]] = value
    return row


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return DAY1 + dt.timedelta(days=day, hours=hour, minutes=minute, seconds=second)


def snapshot_files(root: Path) -> dict[str, str]:
    """relative path → content hash of every snapshot file."""
    out = {}
    for area in (store.SNAPSHOTS_HOURLY, store.SNAPSHOTS_DAILY):
        for path in store.list_parquet(root, area):
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def rows_of(root: Path, period: str, **kw: Any) -> list[dict[str, Any]]:
    return ag.read_snapshots(root, period, **kw)  # type: ignore[arg-type]


def pipeline(
    root: Path, artifact: str, org: str, start: dt.datetime, stem: str, *, fail: bool = False
) -> None:
    """One artifact through transcription and claims extraction, 10 s per step."""
    s = dt.timedelta(seconds=10)
    rows = [
        ev("artifact_received", start, artifact_id=artifact, organization_id=org),
        ev("transcription_completed", start + s, artifact_id=artifact, organization_id=org,
           duration_ms=1000.0, confidence_score=0.9, ai_cost=0.01),
    ]  # fmt: skip
    if fail:
        rows.append(ev("claims_extraction_failed", start + 2 * s, artifact_id=artifact, organization_id=org,
                       duration_ms=500.0, error_code="RateLimitError"))  # fmt: skip
        rows.append(ev("artifact_failed", start + 3 * s, artifact_id=artifact, organization_id=org))
    else:
        rows.append(ev("claims_extracted", start + 2 * s, artifact_id=artifact, organization_id=org,
                       duration_ms=2000.0, claim_count=3, confidence_score=0.7, ai_cost=0.02))  # fmt: skip
        rows.append(ev("artifact_completed", start + 3 * s, artifact_id=artifact, organization_id=org))
    store.write_event_rows(root, rows, stem)


# ------------------------------------------------------------------------ contract


def test_snapshot_schema_is_the_design_contract() -> None:
    assert ag.snapshot_schema().names == DESIGN_COLUMNS
    assert list(ag.SNAPSHOT_COLUMNS) == DESIGN_COLUMNS


def test_views_exist_typed_and_empty_without_files(root: Path) -> None:
    con = vp.connect(root)
    for view in ("snapshots_hourly", "snapshots_daily"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchall() == [(0,)]
        cols = [r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()]
        assert cols == DESIGN_COLUMNS


def test_views_read_the_snapshot_files(root: Path) -> None:
    pipeline(root, "a1", "o1", at(0, 10), "s1")
    ag.aggregate(root, now=NOW)
    con = vp.connect(root)
    assert con.execute(
        "SELECT period_type, organization_id, artifacts_completed FROM snapshots_hourly ORDER BY 2 NULLS FIRST"
    ).fetchall() == [("hourly", None, 1), ("hourly", "o1", 1)]
    assert con.execute("SELECT count(*) FROM snapshots_daily").fetchall() == [(2,)]


# ------------------------------------------------------------------------- values


def test_hand_checked_values(root: Path) -> None:
    pipeline(root, "a1", "o1", at(0, 10), "s1")
    pipeline(root, "a2", "o1", at(0, 10, 5), "s2", fail=True)
    pipeline(root, "a3", "o2", at(0, 10, 30), "s3")
    store.write_event_rows(root, [ev("circuit_breaker_opened", at(0, 10, 40))], "s4")  # no org
    ag.aggregate(root, now=NOW)
    (all_h, o1, o2) = rows_of(root, "hourly")
    assert (all_h["organization_id"], o1["organization_id"], o2["organization_id"]) == (None, "o1", "o2")
    assert all_h["period_start"] == at(0, 10) and all_h["period_end"] == at(0, 11)
    assert (all_h["artifacts_received"], all_h["artifacts_completed"], all_h["artifacts_failed"]) == (3, 2, 1)
    assert all_h["overall_failure_rate"] == pytest.approx(1 / 3)
    assert o1["claims_extraction_failure_rate"] == pytest.approx(0.5)
    assert o2["claims_extraction_failure_rate"] == 0.0
    assert all_h["transcription_failure_rate"] == 0.0
    assert all_h["entity_resolution_failure_rate"] is None  # nothing to divide by
    assert all_h["avg_entity_resolution_latency_ms"] is None
    assert all_h["auto_resolution_rate"] is None
    assert all_h["avg_end_to_end_latency_ms"] == 30_000.0
    assert all_h["avg_claims_extraction_latency_ms"] == 2000.0
    assert all_h["total_claims_extracted"] == 6
    assert all_h["total_ai_cost"] == pytest.approx(0.01 * 3 + 0.02 * 2)
    assert all_h["avg_cost_per_artifact"] == pytest.approx(0.07 / 3)
    assert all_h["retries_initiated"] == 0
    assert rows_of(root, "daily", organization_id=None)[0]["artifacts_received"] == 3


def test_end_to_end_latency_finds_receipts_outside_the_bucket(root: Path) -> None:
    # received just before midnight, completed after: the completion's hour and day
    store.write_event_rows(root, [ev("artifact_received", at(0, 23, 59), artifact_id="a1")], "r")
    ag.aggregate(root, now=NOW)
    store.write_event_rows(root, [ev("artifact_completed", at(1, 0, 1), artifact_id="a1")], "c")
    # and a second artifact received days earlier, completed in the same hour
    store.write_event_rows(root, [ev("artifact_received", at(-2, 5), artifact_id="a2")], "r2")
    store.write_event_rows(root, [ev("artifact_completed", at(1, 0, 30), artifact_id="a2")], "c2")
    ag.aggregate(root, now=NOW)
    [hour] = rows_of(root, "hourly", since=at(1, 0), until=at(1, 1))
    a1, a2 = 120_000.0, (at(1, 0, 30) - at(-2, 5)).total_seconds() * 1000
    assert hour["avg_end_to_end_latency_ms"] == pytest.approx((a1 + a2) / 2)
    assert hour["p50_end_to_end_latency_ms"] == pytest.approx((a1 + a2) / 2)
    [day] = rows_of(root, "daily", since=at(1, 0), until=at(2, 0))
    assert day["p99_end_to_end_latency_ms"] == pytest.approx(a1 + 0.99 * (a2 - a1))


def test_receipt_written_after_the_completion_is_found_in_the_same_run(root: Path) -> None:
    store.write_event_rows(root, [ev("artifact_completed", at(0, 1), artifact_id="a1")], "c")
    store.write_event_rows(root, [ev("artifact_received", at(2, 1), artifact_id="a1")], "r")
    ag.aggregate(root, now=NOW)
    [hour] = rows_of(root, "hourly", since=at(0, 1), until=at(0, 2))
    assert hour["avg_end_to_end_latency_ms"] == -2 * 86_400_000.0


def test_receipt_arriving_in_a_later_run_updates_the_completions_buckets(root: Path) -> None:
    # a1 completes in an hour of its own; its receipt (an hour earlier, same day) is
    # written only later. a2 likewise, with its receipt two days earlier.
    store.write_event_rows(root, [ev("artifact_completed", at(0, 5), artifact_id="a1")], "c1")
    store.write_event_rows(root, [ev("artifact_completed", at(0, 7), artifact_id="a2")], "c2")
    ag.aggregate(root, now=NOW)
    assert rows_of(root, "hourly", since=at(0, 5), until=at(0, 6))[0]["avg_end_to_end_latency_ms"] is None
    store.write_event_rows(root, [ev("artifact_received", at(0, 4), artifact_id="a1")], "r1")
    store.write_event_rows(root, [ev("artifact_received", at(-2, 7), artifact_id="a2")], "r2")
    ag.aggregate(root, now=NOW)
    [h5] = rows_of(root, "hourly", since=at(0, 5), until=at(0, 6))
    [h7] = rows_of(root, "hourly", since=at(0, 7), until=at(0, 8))
    assert (h5["avg_end_to_end_latency_ms"], h7["avg_end_to_end_latency_ms"]) == (
        3_600_000.0,
        2 * 86_400_000.0,
    )
    [day] = rows_of(root, "daily", since=at(0, 0), until=at(1, 0))
    assert day["avg_end_to_end_latency_ms"] == pytest.approx((3_600_000.0 + 2 * 86_400_000.0) / 2)
    # nothing is orphaned any more: a further run has nothing to do
    assert not (root / store.STATE / ag.ORPHANS_FILE).exists()
    assert ag.aggregate(root, now=NOW).nothing_to_do


def test_receipt_backfilled_earlier_than_the_known_one_updates_the_completion(root: Path) -> None:
    store.write_event_rows(root, [ev("artifact_received", at(0, 4), artifact_id="a1")], "r1")
    store.write_event_rows(root, [ev("artifact_completed", at(1, 4), artifact_id="a1")], "c1")
    ag.aggregate(root, now=NOW)
    [before] = rows_of(root, "hourly", since=at(1, 4), until=at(1, 5))
    assert before["avg_end_to_end_latency_ms"] == 86_400_000.0
    # an earlier receipt of the same artifact turns up (a recovered spool)
    store.write_event_rows(root, [ev("artifact_received", at(0, 2), artifact_id="a1")], "r0")
    ag.aggregate(root, now=NOW)
    [after] = rows_of(root, "hourly", since=at(1, 4), until=at(1, 5))
    assert after["avg_end_to_end_latency_ms"] == 86_400_000.0 + 2 * 3_600_000.0


def test_artifact_received_twice_counts_its_completion_once_in_a_range_run(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the artifact's two receipts land in two runs, so in two chunks of the receipts
    # index; a range run over several chunks joins its completion with the earliest
    store.write_event_rows(root, [ev("artifact_received", at(0, 10), artifact_id="a1")], "r1")
    store.write_event_rows(root, [ev("artifact_completed", at(0, 12), artifact_id="a1")], "c1")
    ag.aggregate(root, now=NOW)
    store.write_event_rows(root, [ev("artifact_received", at(0, 11), artifact_id="a1")], "r2")
    store.write_event_rows(root, [ev("artifact_received", at(2, 1), artifact_id="a2")], "r3")
    ag.aggregate(root, now=NOW)
    assert len(list((root / store.STATE / ag.RECEIPTS_DIR).glob("*.parquet"))) >= 2
    monkeypatch.setattr(ag, "CHUNK_DAYS", 1)  # several chunks: the index is loaded once
    ag.aggregate(root, now=NOW, since=at(0, 0), until=at(3, 0))
    [hour] = rows_of(root, "hourly", since=at(0, 12), until=at(0, 13))
    assert hour["artifacts_completed"] == 1
    assert hour["avg_end_to_end_latency_ms"] == hour["p50_end_to_end_latency_ms"] == 2 * 3_600_000.0


def test_duplicate_event_ids_are_counted_once(root: Path) -> None:
    row = ev("artifact_received", at(0, 3), artifact_id="a1", event_id="dup")
    store.write_event_rows(root, [row], "one")
    store.write_event_rows(root, [row], "two")
    ag.aggregate(root, now=NOW)
    assert rows_of(root, "hourly", organization_id=None)[0]["artifacts_received"] == 1


# ------------------------------------------------------------- incremental runs


def test_second_run_changes_nothing_and_rebuild_is_identical(root: Path) -> None:
    for i in range(4):
        pipeline(root, f"a{i}", f"o{i % 2}", at(i % 2, 5 + i), f"s{i}")
    first = ag.aggregate(root, now=NOW)
    assert (first.hourly_written, first.daily_written) == (4, 2)
    before = snapshot_files(root)
    again = ag.aggregate(root, now=NOW)
    assert again.nothing_to_do and again.new_files == 0
    assert snapshot_files(root) == before
    ag.aggregate(root, now=NOW, rebuild=True)
    assert snapshot_files(root) == before  # same rows, same bytes (created_at is `now`)


def test_late_events_update_exactly_their_hour_and_day(root: Path) -> None:
    for i in range(6):
        pipeline(root, f"a{i}", "o1", at(i % 3, 4 + i), f"s{i}")
    ag.aggregate(root, now=NOW)
    before = snapshot_files(root)
    late_hour = at(1, 5)
    store.write_event_rows(root, [ev("retry_initiated", late_hour + dt.timedelta(minutes=3))], "late")
    result = ag.aggregate(root, now=NOW + dt.timedelta(hours=1))
    assert (result.new_files, result.hourly_written, result.daily_written) == (1, 1, 1)
    after = snapshot_files(root)
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed == {
        "snapshots/hourly/date=2026-05-05/hourly-20260505T05.parquet",
        "snapshots/daily/date=2026-05-05/daily-20260505.parquet",
    }
    [hour] = rows_of(root, "hourly", since=late_hour, until=late_hour + dt.timedelta(hours=1),
                     organization_id=None)  # fmt: skip
    assert hour["retries_initiated"] == 1


def test_range_recompute_and_removal_of_emptied_buckets(root: Path) -> None:
    pipeline(root, "a1", "o1", at(0, 4), "s1")
    pipeline(root, "a2", "o1", at(0, 6), "s2")
    ag.aggregate(root, now=NOW)
    # the 06:00 events disappear (an operator removed a bad file): a range run fixes it
    for path in store.list_parquet(root, since=at(0, 6), until=at(0, 7)):
        path.unlink()
    result = ag.aggregate(root, now=NOW, since=at(0, 5), until=at(0, 7))
    assert result.mode == "range" and result.removed == 1
    assert [r["period_start"] for r in rows_of(root, "hourly", organization_id=None)] == [at(0, 4)]
    assert rows_of(root, "daily", organization_id=None)[0]["artifacts_received"] == 1


def test_range_leaves_new_files_outside_it_for_the_next_run(root: Path) -> None:
    pipeline(root, "a1", "o1", at(0, 4), "s1")
    pipeline(root, "a2", "o1", at(1, 4), "s2")
    ag.aggregate(root, now=NOW, since=at(0, 0), until=at(1, 0))
    assert len(rows_of(root, "daily", organization_id=None)) == 1
    result = ag.aggregate(root, now=NOW)
    assert result.new_files == 1 and result.daily_written == 1
    assert len(rows_of(root, "daily", organization_id=None)) == 2


def test_rebuild_respects_hourly_retention(root: Path) -> None:
    from voicepipe_obs.config import RetentionSettings

    pipeline(root, "a1", "o1", at(0, 4), "s1")
    pipeline(root, "a2", "o1", at(3, 4), "s2")
    ret = RetentionSettings(hourly_snapshots_days=2)
    result = ag.aggregate(root, now=at(3, 12), rebuild=True, retention=ret)
    assert (result.hourly_written, result.daily_written) == (1, 2)


def test_snapshots_outlive_their_events_through_rebuilds_and_ranges(root: Path, runner: Any) -> None:
    """Cleanup drops event days past their retention and keeps daily snapshots longer
    (DESIGN: 30 against 90 days): those snapshots are then all that is left of their
    days, and neither `--rebuild` nor a range over them may delete or change them."""
    from voicepipe_obs.config import RetentionSettings

    for d in range(5):
        pipeline(root, f"a{d}", "o1", at(d, 4), f"s{d}")
    now = at(4, 12)
    ag.aggregate(root, now=now)
    before = snapshot_files(root)
    assert len(before) == 10  # 5 hours with events, 5 days
    ret = RetentionSettings(events_days=2, hourly_snapshots_days=30, daily_snapshots_days=30)
    dropped = maintenance.cleanup(root, ret, now=now)
    assert sorted(p.date for p in dropped) == [f"{at(d, 0):%Y-%m-%d}" for d in (0, 1)]  # events only

    rebuild = ag.aggregate(root, now=now, rebuild=True, retention=ret)
    assert (rebuild.hourly_written, rebuild.daily_written, rebuild.removed) == (3, 3, 0)
    assert rebuild.kept_past_events == 4
    assert snapshot_files(root) == before  # recomputed from the same events: identical

    args = ["--data", str(root), "aggregate", "--now", now.isoformat()]
    result = runner.invoke(main, [*args, "--since", at(0, 0).isoformat(), "--until", at(3, 0).isoformat()])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("aggregated the requested range: 1 hourly snapshot and 1 daily snapshot")
    assert result.stdout.rstrip().endswith(
        "; 4 older snapshots kept as they are: their events are past retention"
    )
    assert snapshot_files(root) == before


def test_runs_do_not_write_snapshots_past_their_retention(root: Path) -> None:
    """An incremental run over a backfill writes no snapshot that cleanup would drop
    at once: only what the retention given keeps (a range is computed as asked)."""
    from voicepipe_obs.config import RetentionSettings

    for d in range(5):
        pipeline(root, f"a{d}", "o1", at(d, 4), f"s{d}")
    ret = RetentionSettings(hourly_snapshots_days=2, daily_snapshots_days=3)
    result = ag.aggregate(root, now=at(4, 12), retention=ret)
    assert (result.hourly_written, result.daily_written) == (2, 4)  # hours of days 3-4; days 1-4
    assert maintenance.expired_partitions(root, ret, now=at(4, 12)) == []
    assert ag.aggregate(root, now=at(4, 12), retention=ret).nothing_to_do
    ranged = ag.aggregate(root, now=at(4, 12), since=at(0, 0), until=at(5, 0), retention=ret)
    assert (ranged.hourly_written, ranged.daily_written) == (5, 5)


class Crash(Exception):
    pass


def test_crash_between_buckets_and_bookkeeping_converges(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(4):
        pipeline(root, f"a{i}", "o1", at(i, 4), f"s{i}")
    ag.aggregate(root, now=NOW)
    late = [ev("artifact_failed", at(d, 9), artifact_id="a0", organization_id="o1") for d in range(4)]
    store.write_event_rows(root, late, "late")

    # crash after three bucket files were written, before the bookkeeping
    real = store.write_table
    calls = {"n": 0}

    def flaky(path: Path, *args: Any, **kwargs: Any) -> Path:
        if "snapshots" in path.parts:
            calls["n"] += 1
            if calls["n"] > 3:
                raise Crash
        return real(path, *args, **kwargs)

    monkeypatch.setattr(store, "write_table", flaky)
    with pytest.raises(Crash):
        ag.aggregate(root, now=NOW)
    assert calls["n"] >= 4
    monkeypatch.setattr(store, "write_table", real)

    # and a crash after every bucket, while saving the bookkeeping
    def no_save(self: object, root: Path) -> None:
        raise Crash

    monkeypatch.setattr(ag._State, "save", no_save)
    with pytest.raises(Crash):
        ag.aggregate(root, now=NOW)
    monkeypatch.undo()

    result = ag.aggregate(root, now=NOW)
    assert result.new_files == 4  # still unrecorded, so recomputed
    converged = snapshot_files(root)
    ag.aggregate(root, now=NOW, rebuild=True)
    assert snapshot_files(root) == converged
    assert all(r["artifacts_failed"] == 1 for r in rows_of(root, "daily", organization_id=None))


def test_failure_while_a_chunk_is_computed_in_the_background_converges(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one day per chunk: a chunk's rows are computed on a worker while the next loads
    monkeypatch.setattr(ag, "CHUNK_DAYS", 1)
    for i in range(4):
        pipeline(root, f"a{i}", "o1", at(i, 4), f"s{i}")
    real = ag._snapshot_rows
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # the second day's rows, while the third day loads
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(ag, "_snapshot_rows", flaky)
    with pytest.raises(Crash):
        ag.aggregate(root, now=NOW)
    assert not (root / store.STATE / ag.STATE_FILE).exists()  # nothing recorded
    monkeypatch.setattr(ag, "_snapshot_rows", real)
    result = ag.aggregate(root, now=NOW)
    assert (result.new_files, result.daily_written) == (4, 4)
    converged = snapshot_files(root)
    monkeypatch.setattr(ag, "CHUNK_DAYS", 8)
    ag.aggregate(root, now=NOW, rebuild=True)
    assert snapshot_files(root) == converged


def test_compacted_files_are_not_recomputed_but_new_ones_are(root: Path) -> None:
    for i in range(3):
        pipeline(root, f"a{i}", "o1", at(0, 4), f"s{i}")  # three files in one hour
    ag.aggregate(root, now=NOW)
    before = snapshot_files(root)
    maintenance.compact(root, now=NOW, grace=dt.timedelta(0))
    assert len(store.list_parquet(root)) == 1
    result = ag.aggregate(root, now=NOW)
    assert (result.new_files, result.hourly_written) == (0, 0)
    assert snapshot_files(root) == before
    # a late file then compaction before aggregating: the merged file is new work
    pipeline(root, "a9", "o1", at(0, 4, 30), "late")
    maintenance.compact(root, now=NOW, grace=dt.timedelta(0))
    result = ag.aggregate(root, now=NOW)
    assert (result.new_files, result.hourly_written, result.daily_written) == (1, 1, 1)
    assert rows_of(root, "hourly", organization_id=None)[0]["artifacts_received"] == 4


def test_receipts_index_is_rebuilt_after_cleanup(root: Path) -> None:
    from voicepipe_obs.config import RetentionSettings

    pipeline(root, "a1", "o1", at(0, 4), "s1")
    ag.aggregate(root, now=NOW)
    assert ag._receipt_chunks(root)
    maintenance.cleanup(root, RetentionSettings(events_days=1), now=NOW)
    assert not ag._receipt_chunks(root)
    pipeline(root, "a2", "o1", at(3, 4), "s2")
    ag.aggregate(root, now=NOW)
    chunks = ag._receipt_chunks(root)
    assert len(chunks) == 1
    assert pq.read_table(chunks[0])["artifact_id"].to_pylist() == ["a2"]


# ---------------------------------------------------------------- window queries


def test_window_metrics_use_the_snapshot_definitions(root: Path) -> None:
    for i in range(5):
        pipeline(root, f"a{i}", f"o{i % 2}", at(0, 7, 10 * i), f"s{i}", fail=i == 3)
    ag.aggregate(root, now=NOW)
    hourly = rows_of(root, "hourly")
    window = ag.window_metrics(root, at(0, 7), at(0, 8))
    assert [r["organization_id"] for r in window] == [r["organization_id"] for r in hourly]
    for snap, live in zip(hourly, window, strict=True):
        for k in ag.METRIC_NAMES:
            assert live[k] == (None if snap[k] is None else pytest.approx(snap[k], rel=1e-12)), k
    one = ag.window_metrics(root, at(0, 7), at(0, 8), organization_id="o1")
    assert one[0]["artifacts_received"] == 2


def test_live_metrics_over_the_last_minutes(root: Path) -> None:
    pipeline(root, "a1", "o1", at(0, 7, 0), "s1")
    pipeline(root, "a2", "o1", at(0, 7, 40), "s2", fail=True)
    live = ag.live_metrics(root, now=at(0, 7, 50), minutes=30)
    assert (live["artifacts_received"], live["artifacts_failed"], live["artifacts_completed"]) == (1, 1, 0)
    assert live["overall_failure_rate"] == 1.0
    quiet = ag.live_metrics(root, now=at(2, 0), minutes=30)
    assert quiet["artifacts_received"] == 0 and quiet["overall_failure_rate"] is None
    assert quiet["total_ai_cost"] == 0.0


def test_stage_and_organization_breakdowns(root: Path) -> None:
    for i in range(4):
        pipeline(root, f"a{i}", "o1" if i else "o2", at(0, 7, i), f"s{i}", fail=i in (1, 2))
    stages = {s.stage: s for s in ag.stage_breakdown(root, at(0, 0), at(1, 0))}
    assert list(stages) == ["transcription", "claims_extraction", "entity_resolution", "draft_generation"]
    claims = stages["claims_extraction"]
    assert (claims.completed, claims.failed, claims.failure_rate) == (2, 2, 0.5)
    assert claims.top_errors == [("RateLimitError", 2)]
    assert claims.p95_latency_ms == 2000.0
    assert stages["transcription"].p50_latency_ms == 1000.0
    assert stages["draft_generation"].failure_rate is None
    orgs = ag.organization_breakdown(root, at(0, 0), at(1, 0))
    assert [o["organization_id"] for o in orgs] == ["o1", "o2"]
    assert orgs[0]["artifacts_received"] == 3 and orgs[0]["failure_rate"] == pytest.approx(2 / 3)
    assert orgs[1]["p95_end_to_end_latency_ms"] == 30_000.0
    with pytest.raises(UsageError):
        ag.stage_breakdown(root, at(1, 0), at(0, 0))


def test_stage_breakdown_latency_statistics_by_hand(root: Path) -> None:
    """Five transcriptions of 100, 200, 300, 400 and 1000 ms (one per artifact, one
    of them completed as entity resolution's other event to check the mapping too):
    average 400; percentiles interpolate linearly between ranks (DESIGN §6,
    quantile_cont): p50 at rank 2 → 300; p95 at rank 3.8 → 400 + 0.8 × 600 = 880;
    p99 at rank 3.96 → 400 + 0.96 × 600 = 976."""
    rows = [
        ev("transcription_completed", at(0, 7, i), artifact_id=f"a{i}", organization_id="o1", duration_ms=ms)
        for i, ms in enumerate([1000.0, 300.0, 100.0, 400.0, 200.0])
    ]
    rows += [
        ev("entity_resolution_completed", at(0, 8), artifact_id="a0", organization_id="o1", duration_ms=10.0),
        ev(
            "entity_needs_disambiguation",
            at(0, 8, 1),
            artifact_id="a1",
            organization_id="o1",
            duration_ms=30.0,
        ),
    ]
    store.write_event_rows(root, rows, "hand")
    stages = {s.stage: s for s in ag.stage_breakdown(root, at(0, 0), at(1, 0))}
    t = stages["transcription"]
    assert (t.completed, t.failed, t.failure_rate) == (5, 0, 0.0)
    assert (t.avg_latency_ms, t.p50_latency_ms) == (400.0, 300.0)
    assert t.p95_latency_ms == pytest.approx(880.0) and t.p99_latency_ms == pytest.approx(976.0)
    er = stages["entity_resolution"]
    assert (er.completed, er.avg_latency_ms, er.p50_latency_ms) == (2, 20.0, 20.0)
    assert er.p95_latency_ms == pytest.approx(29.0)  # rank 0.95 between 10 and 30


# -------------------------------------------------------------------------- time


def test_parse_since_forms() -> None:
    now = dt.datetime(2026, 5, 7, 12, 30, tzinfo=UTC)
    assert parse_since("30m", now) == now - dt.timedelta(minutes=30)
    assert parse_since("2h", now) == now - dt.timedelta(hours=2)
    assert parse_since("7d", now) == now - dt.timedelta(days=7)
    assert parse_since("1w", now) == now - dt.timedelta(weeks=1)
    assert parse_since("2026-05-01", now) == dt.datetime(2026, 5, 1, tzinfo=UTC)
    assert parse_since("2026-05-01T08:00Z", now) == dt.datetime(2026, 5, 1, 8, tzinfo=UTC)
    assert parse_since("2026-05-01 10:00+02:00", now) == dt.datetime(2026, 5, 1, 8, tzinfo=UTC)
    assert parse_since("today", now) == dt.datetime(2026, 5, 7, tzinfo=UTC)
    assert parse_since("yesterday", now) == dt.datetime(2026, 5, 6, tzinfo=UTC)
    assert parse_duration("90s") == dt.timedelta(seconds=90)
    assert parse_duration("0") == parse_duration("0s") == dt.timedelta(0)  # `compact --grace 0`
    with pytest.raises(UsageError, match="use a number and a unit"):
        parse_duration("5")  # five what?
    with pytest.raises(UsageError, match="30m, 2h, 7d"):
        parse_since("last tuesday", now)
    with pytest.raises(UsageError, match="must be before"):
        parse_range("1h", "2h", now)


# --------------------------------------------------------------------------- CLI


def test_cli_aggregate_summary_and_rerun(root: Path, runner: Any) -> None:
    pipeline(root, "a1", "o1", at(0, 4), "s1")
    args = ["--data", str(root), "aggregate", "--now", NOW.isoformat()]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(
        "aggregated 1 new event file: 1 hourly snapshot and 1 daily snapshot written"
    )
    assert result.stderr == ""
    again = runner.invoke(main, args)
    assert (again.exit_code, again.stdout) == (0, "snapshots up to date (no new event files)\n")
    rebuild = runner.invoke(main, [*args, "--rebuild"])
    assert rebuild.exit_code == 0 and "everything within retention" in rebuild.stdout


def test_cli_aggregate_range(root: Path, runner: Any) -> None:
    pipeline(root, "a1", "o1", at(0, 4), "s1")
    result = runner.invoke(
        main, ["--data", str(root), "aggregate", "--since", "2026-05-04T03:00", "--until", "2026-05-04T05:00"]
    )
    assert result.exit_code == 0, result.stderr
    assert "the requested range: 1 hourly snapshot and 1 daily snapshot" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday-ish"], "invalid time 'yesterday-ish'"),
        (["--since", "1h", "--until", "2h"], "must be before"),
        (["--rebuild", "--since", "1h"], "drop --since/--until"),
    ],
)
def test_cli_aggregate_usage_errors(root: Path, runner: Any, args: list[str], message: str) -> None:
    result = runner.invoke(main, ["--data", str(root), "aggregate", *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from voicepipe_obs.progress import progress_bar

    with progress_bar("days") as bar:  # stderr is not a terminal under pytest
        assert bar is None
    with progress_bar("days", enabled=True) as bar:
        assert bar is not None
        bar(1, 2)
        bar(2, 2)
    assert "days" in capsys.readouterr().err
    with progress_bar("hours", enabled=True) as bar:  # a bar finishes when done; the next starts anew
        assert bar is not None
        bar(1, 1)
        bar(1, 3)
        bar(3, 3)
    err = capsys.readouterr().err
    assert err.count("hours") == 2 and err.endswith("\n"), err


def test_unreadable_new_file_is_skipped_and_left_for_later(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline(root, "a1", "o1", at(0, 4), "s1")
    bad = store.hour_dir(root, "2026-05-04", 4) / "torn.parquet"
    bad.write_bytes(b"PAR1 torn")
    result = ag.aggregate(root, now=NOW)
    assert result.new_files == 1 and result.hourly_written == 1
    assert "torn.parquet" in caplog.text
    state = (root / store.STATE / ag.STATE_FILE).read_text()
    assert "torn.parquet" not in state and "s1.parquet" in state


def test_listing_sees_exactly_the_event_files_among_strays(root: Path) -> None:
    """The incremental run's own listing (os.scandir, no pathlib) agrees with
    store.list_parquet and skips what is not an event file of an hour partition."""
    pipeline(root, "a1", "o1", at(0, 4), "s1")
    pipeline(root, "a2", "o2", at(1, 23), "s2")
    pipeline(root, "a3", "o1", at(1, 23, 30), "s3")
    events = root / store.EVENTS
    hour = store.hour_dir(root, "2026-05-04", 4)
    valid = (hour / "s1.parquet").read_bytes()  # strays are readable: vetting cannot hide them
    (hour / ".s9.parquet.1a2b.tmp").write_bytes(valid)  # a write in progress
    (hour / ".hidden.parquet").write_bytes(valid)
    (hour / "notes.txt").write_text("not an event file")
    (events / "stray.parquet").write_bytes(valid)  # outside any partition
    (events / "date=2026-05-09").write_text("a file, not a directory")
    (events / "date=2026-05-04" / "hour=xx").mkdir()
    (events / "date=2026-05-04" / "hour=xx" / "x.parquet").write_bytes(valid)
    (events / "date=garbage" / "hour=01").mkdir(parents=True)
    (events / "date=garbage" / "hour=01" / "g.parquet").write_bytes(valid)
    (events / "misc").mkdir()

    listed = ag._list_event_files(root, seen=set())
    rels = [f.rel for f in listed]
    assert rels == [
        "events/date=2026-05-04/hour=04/s1.parquet",
        "events/date=2026-05-05/hour=23/s2.parquet",
        "events/date=2026-05-05/hour=23/s3.parquet",
    ]
    expected = [p.relative_to(root).as_posix() for p in store.list_parquet(root)]
    assert rels == [r for r in expected if "garbage" not in r]
    assert all(Path(f.file) == root / f.rel and f.path == root / f.rel for f in listed)
    assert [f.hour_us for f in listed] == [
        store.to_us(at(0, 4)),
        store.to_us(at(1, 23)),
        store.to_us(at(1, 23)),
    ]
    result = ag.aggregate(root, now=NOW)
    assert result.new_files == 3 and result.hourly_written == 2


@pytest.mark.timeout(120)  # iterating every hour since year 1 would take hours
def test_a_far_range_computes_only_the_buckets_with_something_to_do(root: Path, runner: Any) -> None:
    """--since 1970 (or year 1, through the library) on a two-day store: the same
    snapshots as a tight range, buckets left without events still lose their file,
    and only the days with events or snapshots are computed (not every hour since)."""
    import shutil

    pipeline(root, "a1", "o1", at(0, 4), "s1")
    pipeline(root, "a2", "o2", at(1, 6), "s2")
    pipeline(root, "a3", "o1", at(1, 7), "s3", fail=True)
    ag.aggregate(root, now=NOW)
    for path in store.list_parquet(root, since=at(1, 6), until=at(1, 7)):
        path.unlink()  # removed by hand: its hourly bucket must go, its day shrink
    copies = {name: root.parent / name for name in ("tight", "cli")}
    for copy in copies.values():
        shutil.copytree(root, copy)

    tight = ag.aggregate(copies["tight"], now=NOW, since=at(0, 0), until=at(2, 0))
    assert (tight.hourly_written, tight.daily_written, tight.removed) == (2, 2, 1)
    steps: list[tuple[int, int]] = []
    far = ag.aggregate(
        root,
        now=NOW,
        since=dt.datetime(1, 1, 1, tzinfo=UTC),
        until=dt.datetime(9998, 12, 31, tzinfo=UTC),
        progress=lambda done, total: steps.append((done, total)),
    )
    assert steps[-1] == (2, 2)  # two days computed, not 3.6 million
    assert (far.hourly_written, far.daily_written, far.removed, far.events_scanned) == (
        tight.hourly_written,
        tight.daily_written,
        tight.removed,
        tight.events_scanned,
    )
    assert snapshot_files(root) == snapshot_files(copies["tight"])

    since = ["--since", "1970-01-01", "--now", NOW.isoformat()]
    result = runner.invoke(main, ["-v", "--data", str(copies["cli"]), "aggregate", *since])
    assert result.exit_code == 0, result.stderr
    assert "2 hourly snapshots and 2 daily snapshots written, 1 empty bucket removed" in result.stdout
    assert "aggregating days: 2 of 2 days done" in result.stderr
    assert snapshot_files(copies["cli"]) == snapshot_files(copies["tight"])
