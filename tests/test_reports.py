"""Report functions (voicepipe_obs.reports) on a small fixed dataset with a frozen
clock: every figure is checked against numbers worked out by hand from the events
written below (real Parquet, real DuckDB)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from voicepipe_obs import reports
from voicepipe_obs.errors import EmptyStoreError, NotFoundError, UsageError

UTC = dt.timezone.utc
#: The frozen clock of every report test: Saturday 2026-11-28 12:00 UTC.
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def at(day: int, hh: int, mm: int = 0, ss: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hh, mm, ss, tzinfo=UTC)


def _stage(
    rec: Any,
    ctx: dict[str, Any],
    stage: str,
    start: dt.datetime,
    ms: float,
    *,
    outcome: str | None = None,
    **fields: Any,
) -> dt.datetime:
    """Emit a stage run: <stage>_started then its completion (or failure) event."""
    from voicepipe_obs.events import STAGE_EVENTS

    started, done, failed = STAGE_EVENTS[stage]
    end = start + dt.timedelta(milliseconds=ms)
    rec.emit(started, timestamp=start, stage_started_at=start, **ctx)
    etype = outcome or (failed if "error_code" in fields else done)
    rec.emit(
        etype, timestamp=end, stage_started_at=start, stage_completed_at=end, duration_ms=ms, **ctx, **fields
    )
    return end


def build_dataset(root: Path) -> None:
    """Seven artifacts over three days, a circuit-breaker flap, a retry, a review.

    a-001 org-a whatsapp  completed today 09:15:21 (received 09:15:00 → 21 s)
    a-002 org-a app       failed today at claims_extraction (LLMTimeout)
    a-003 org-b whatsapp  transcribing since 11:50:02
    a-004 org-b app       completed yesterday 15:00:40 (40 s)
    a-005 org-b whatsapp  failed yesterday at transcription, retried by alice today, completed 08:01
    a-006 org-a app       at claims_extraction since 11:55:06
    a-007 org-a whatsapp  completed 2026-11-25 (3 days ago)
    """
    from voicepipe_obs import Recorder

    rec = Recorder(root, strict=True, flush_interval=60, recover=False)

    def received(aid: str, org: str, coach: str, channel: str, ts: dt.datetime) -> dict[str, Any]:
        ctx = {"artifact_id": aid, "organization_id": org, "coach_user_id": coach}
        rec.emit("artifact_received", timestamp=ts, source_channel=channel, voice_note_id=f"vn-{aid}", **ctx)
        return ctx

    # a-001: the full happy path, today
    c = received("a-001", "org-a", "c-1", "whatsapp", at(28, 9, 15, 0))
    t = _stage(
        rec,
        c,
        "transcription",
        at(28, 9, 15, 2),
        5200,
        confidence_score=0.94,
        ai_cost=0.006,
        ai_model="whisper-1",
        transcript_word_count=120,
    )
    t = _stage(rec, c, "claims_extraction", t, 3800, claim_count=4, confidence_score=0.88, ai_cost=0.012)
    t = _stage(
        rec,
        c,
        "entity_resolution",
        t + dt.timedelta(seconds=1),
        1000,
        entity_count=4,
        disambiguation_count=1,
        outcome="entity_needs_disambiguation",
    )
    t = _stage(rec, c, "draft_generation", t, 5000, draft_count=2, ai_cost=0.02)
    rec.emit("artifact_completed", timestamp=at(28, 9, 15, 21), **c)
    rec.emit("entity_user_resolved", timestamp=at(28, 11, 0), disambiguation_count=1, actor="bob", **c)

    # a-002: fails at claims extraction, today
    c = received("a-002", "org-a", "c-2", "app", at(28, 10, 0, 0))
    t = _stage(rec, c, "transcription", at(28, 10, 0, 1), 2000, confidence_score=0.71, ai_cost=0.004)
    _stage(rec, c, "claims_extraction", t, 25000, error_code="LLMTimeout", error_message="upstream timed out")
    rec.emit(
        "artifact_failed",
        timestamp=at(28, 10, 0, 29),
        error_code="LLMTimeout",
        error_message="upstream timed out",
        **c,
    )

    # a-003: transcribing now
    c = received("a-003", "org-b", "c-3", "whatsapp", at(28, 11, 50, 0))
    rec.emit("transcription_started", timestamp=at(28, 11, 50, 2), stage_started_at=at(28, 11, 50, 2), **c)

    # a-004: completed yesterday
    c = received("a-004", "org-b", "c-3", "app", at(27, 15, 0, 0))
    t = _stage(rec, c, "transcription", at(27, 15, 0, 1), 9000, confidence_score=0.97, ai_cost=0.01)
    t = _stage(rec, c, "claims_extraction", t, 6000, claim_count=2, ai_cost=0.015)
    t = _stage(rec, c, "entity_resolution", t, 2000, entity_count=3, disambiguation_count=0)
    t = _stage(rec, c, "draft_generation", t, 4000, draft_count=1, ai_cost=0.02)
    rec.emit("artifact_completed", timestamp=at(27, 15, 0, 40), **c)

    # a-005: transcription failed yesterday; alice retried it this morning
    c = received("a-005", "org-b", "c-4", "whatsapp", at(27, 16, 0, 0))
    _stage(
        rec,
        c,
        "transcription",
        at(27, 16, 0, 1),
        30000,
        error_code="WhisperError",
        error_message="audio could not be decoded",
    )
    rec.emit(
        "artifact_failed",
        timestamp=at(27, 16, 0, 32),
        error_code="WhisperError",
        error_message="audio could not be decoded",
        **c,
    )
    rc = {**c, "retry_attempt": 1}
    rec.emit(
        "retry_initiated", timestamp=at(28, 8, 0, 0), pipeline_stage="transcription", actor="alice", **rc
    )
    t = _stage(rec, rc, "transcription", at(28, 8, 0, 1), 8000, confidence_score=0.9, ai_cost=0.008)
    t = _stage(rec, rc, "claims_extraction", t, 4000, claim_count=3, ai_cost=0.01)
    t = _stage(rec, rc, "entity_resolution", t, 3000, entity_count=2, disambiguation_count=0)
    t = _stage(rec, rc, "draft_generation", t, 5000, draft_count=1, ai_cost=0.02)
    rec.emit(
        "retry_succeeded", timestamp=at(28, 8, 0, 59), pipeline_stage="transcription", actor="alice", **rc
    )
    rec.emit("artifact_completed", timestamp=at(28, 8, 1, 0), **rc)

    # a-006: at claims extraction now
    c = received("a-006", "org-a", "c-1", "app", at(28, 11, 55, 0))
    t = _stage(rec, c, "transcription", at(28, 11, 55, 1), 4000, confidence_score=0.82, ai_cost=0.005)
    rec.emit(
        "claims_extraction_started", timestamp=at(28, 11, 55, 6), stage_started_at=at(28, 11, 55, 6), **c
    )

    # a-007: three days ago
    c = received("a-007", "org-a", "c-2", "whatsapp", at(25, 14, 0, 0))
    t = _stage(rec, c, "transcription", at(25, 14, 0, 1), 6000, confidence_score=0.55, ai_cost=0.007)
    t = _stage(rec, c, "claims_extraction", t, 5000, claim_count=1, ai_cost=0.01)
    t = _stage(
        rec,
        c,
        "entity_resolution",
        t,
        2000,
        entity_count=2,
        disambiguation_count=2,
        outcome="entity_needs_disambiguation",
    )
    t = _stage(rec, c, "draft_generation", t, 3000, draft_count=1, ai_cost=0.02)
    rec.emit("artifact_completed", timestamp=at(25, 14, 0, 30), **c)

    # the AI service flapped this morning
    rec.emit("circuit_breaker_opened", timestamp=at(28, 11, 30), error_message="openai 5xx burst")
    rec.emit("circuit_breaker_closed", timestamp=at(28, 11, 40))
    rec.flush()
    rec.close()


@pytest.fixture
def data(root: Path) -> Path:
    build_dataset(root)
    return root


# ------------------------------------------------------------------- empty store


@pytest.mark.parametrize(
    "call",
    [
        lambda r: reports.dashboard(r, now=NOW),
        lambda r: reports.pipeline(r, now=NOW),
        lambda r: reports.artifacts(r, now=NOW),
        lambda r: reports.artifact_detail(r, "a-1", now=NOW),
        lambda r: reports.metrics(r, now=NOW),
        lambda r: reports.events(r, now=NOW),
        lambda r: reports.event(r, "x"),
        lambda r: reports.retries(r, now=NOW),
    ],
)
def test_empty_and_missing_store_raise_a_friendly_error(root: Path, call: Any) -> None:
    for where in (root, root / "missing"):
        with pytest.raises(EmptyStoreError, match="voicepipe demo"):
            call(where)


# --------------------------------------------------------------------- figures


def test_dashboard_today_follows_the_time_zone(data: Path) -> None:
    utc = reports.dashboard(data, now=NOW, tz=UTC)
    assert utc["today_start"] == at(28, 0)
    assert utc["cards"]["completed_today"] == 2
    far_east = dt.timezone(dt.timedelta(hours=14))  # local now is the 29th, 02:00
    east = reports.dashboard(data, now=NOW, tz=far_east)
    assert east["today_start"] == at(28, 10)
    # a-005 (08:01) and a-001 (09:15) completed before local midnight; a-002 failed after it
    assert east["cards"]["completed_today"] == 0 and east["cards"]["failed_today"] == 1
    assert east["cards"]["completed_yesterday_same_time"] == 0  # nothing in [27th 10:00, 27th 12:00)
    assert east["cards"]["completed_change"] is None


def test_late_reviews_of_an_old_artifact_do_not_make_it_active(data: Path) -> None:
    """a-007 completed three days ago; a reviewer resolving its entities today must not
    bring it back into flight (its receipt lies outside the dashboard's window)."""
    from voicepipe_obs import Recorder

    before = reports.dashboard(data, now=NOW, tz=UTC)
    with Recorder(data, strict=True, recover=False) as rec:
        ctx = {"artifact_id": "a-007", "organization_id": "org-a"}
        rec.emit("entity_user_resolved", timestamp=at(28, 10), disambiguation_count=2, **ctx)
        rec.emit("draft_confirmed", timestamp=at(28, 10, 5), **ctx)
    after = reports.dashboard(data, now=NOW, tz=UTC)
    assert before["cards"]["active_artifacts"] == after["cards"]["active_artifacts"] == 2
    queues = {s["stage"]: s["queue_depth"] for s in after["stages"]}
    assert queues["ingestion"] == 0 and sum(queues.values()) == 2


def test_artifact_detail_timeline_and_header(data: Path) -> None:
    d = reports.artifact_detail(data, "a-001", now=NOW)
    a = d["artifact"]
    assert (a["status"], a["source_channel"], a["coach_user_id"], a["organization_id"]) == (
        "completed",
        "whatsapp",
        "c-1",
        "org-a",
    )
    assert a["processing_ms"] == 21_000 and a["total_ai_cost"] == pytest.approx(0.038)
    details = {ev["event_type"]: ev["detail"] for ev in d["timeline"]}
    assert details["transcription_completed"] == "5.2s, 120 words, confidence 0.94, $0.0060"
    assert details["entity_needs_disambiguation"] == "1.0s, 3 auto-resolved, 1 needs review"
    assert details["drafts_generated"] == "5.0s, 2 drafts, $0.0200"
    assert [ev["timestamp"] for ev in d["timeline"]] == sorted(ev["timestamp"] for ev in d["timeline"])
    assert d["retry_options"] == [] and d["retries"] == []


def test_retry_options_follow_the_failure_and_the_attempt_limit(data: Path) -> None:
    d = reports.artifact_detail(data, "a-002", now=NOW)
    assert [o["stage"] for o in d["retry_options"]] == ["claims_extraction", "full"]
    # a library call on a root that is not the default one: the command names it
    assert d["retry_options"][1]["command"] == f"voicepipe --data {data} retry a-002 --full --app MODULE"
    assert d["retry_note"] is not None and d["retry_note"].startswith("MODULE: ")
    none_left = reports.artifact_detail(
        data, "a-002", now=NOW, thresholds=reports.Thresholds(max_retry_attempts=0)
    )
    assert none_left["retry_options"] == []
    a5 = reports.artifact_detail(data, "a-005", now=NOW)
    assert [(r["actor"], r["attempt"], r["stage"], r["outcome"]) for r in a5["retries"]] == [
        ("alice", 1, "transcription", "succeeded"),
    ]
    with pytest.raises(NotFoundError, match="--search"):
        reports.artifact_detail(data, "nope", now=NOW)


def test_retry_command_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    root = tmp_path / "my data" / "vp's"
    cmd = reports.RetryCommand.for_root(root, data_flag=True, config="conf dir/v.toml")
    assert cmd.needs_app
    assert shlex.split(cmd.command("a-1; rm -rf /", full=True)) == [
        "voicepipe",
        "--data",
        str(root),
        "--config",
        "conf dir/v.toml",
        "retry",
        "a-1; rm -rf /",
        "--full",
        "--app",
        "MODULE",
    ]
    # retry.app configured: no --app; the root given as --data is carried
    configured = reports.RetryCommand.for_root(root, data_flag=True, configured_app="mypipeline.retry")
    assert configured.command("a-1") == f"voicepipe --data {shlex.quote(str(root))} retry a-1"
    assert not configured.needs_app
    # what `voicepipe demo` wrote: the demo's handler module
    (root / "_state").mkdir(parents=True)
    (root / "_state" / "demo.json").write_text("{}")
    demo = reports.RetryCommand.for_root(root, data_flag=False)
    assert demo.command("a-1") == "voicepipe retry a-1 --app voicepipe_obs._examples.voice_pipeline"
    # a library call: --data unless the root is the one voicepipe finds by itself
    monkeypatch.chdir(tmp_path)
    assert reports.RetryCommand.for_root(Path("voicepipe-data")).data is None
    assert reports.RetryCommand.for_root(root).data == str(root)
    monkeypatch.setenv("VOICEPIPE_DATA", str(root))
    assert reports.RetryCommand.for_root(root).data is None
    assert reports.RetryCommand.for_root(Path("voicepipe-data")).data == "voicepipe-data"


def test_unique_column_names() -> None:
    assert reports.unique_columns(["a", "b"]) == ["a", "b"]
    assert reports.unique_columns(["a", "a", "a"]) == ["a", "a_2", "a_3"]
    assert reports.unique_columns(["a", "a", "a_2"]) == ["a", "a_3", "a_2"]


def test_pipeline_in_progress_and_retry_queue(data: Path) -> None:
    p = reports.pipeline(data, now=NOW)
    by = {s["stage"]: s for s in p["stages"]}
    assert [r["artifact_id"] for r in by["transcription"]["in_progress"]] == ["a-003"]
    assert by["transcription"]["in_progress"][0]["elapsed_ms"] == 9 * 60_000 + 58_000
    assert [r["artifact_id"] for r in by["claims_extraction"]["retry_queue"]] == ["a-002"]
    assert by["claims_extraction"]["errors"][0]["error_code"] == "LLMTimeout"
    assert by["transcription"]["retry_queue"] == []  # a-005 failed there, but a retry completed it
    hours = by["transcription"]["latency_by_hour"]
    assert len(hours) == 24 and sum(h["count"] for h in hours) == 5
    with pytest.raises(UsageError):
        reports.pipeline(data, now=NOW, stage="ingestion")


def test_duplicate_files_count_once(data: Path) -> None:
    """Spool recovery can write an event twice: reports count it once."""
    import shutil

    def rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:  # sums may differ in the last bit
        return [{k: round(v, 9) if isinstance(v, float) else v for k, v in r.items()} for r in rows]

    before = rounded(reports.artifacts(data, now=NOW)["rows"])
    events_before = reports.events(data, now=NOW, limit=1000)["rows"]
    for f in list((data / "events").rglob("*.parquet")):
        shutil.copy(f, f.with_name("dup-" + f.name))
    assert rounded(reports.artifacts(data, now=NOW)["rows"]) == before
    assert reports.events(data, now=NOW, limit=1000)["rows"] == events_before
    assert len(reports.artifact_detail(data, "a-005", now=NOW)["timeline"]) == 15
    assert reports.dashboard(data, now=NOW)["cards"]["completed_today"] == 2


def test_metrics_read_snapshots_and_say_when_they_are_behind(data: Path) -> None:
    from voicepipe_obs import aggregate

    raw = reports.metrics(data, now=NOW, range_="7d", exact=True)
    assert raw["snapshot_buckets"] == 0 and "voicepipe aggregate" in raw["notes"][0]
    assert [s.date().isoformat() for s in raw["stale_buckets"]] == ["2026-11-25", "2026-11-27"]
    aggregate.aggregate(data, now=NOW)
    snap = reports.metrics(data, now=NOW, range_="7d", exact=True)
    assert snap["snapshot_buckets"] == 2 and snap["notes"] == [] and snap["stale_buckets"] == []
    for key in ("artifacts_received", "artifacts_processed", "completion_rate", "disambiguation_backlog"):
        assert snap["cards"][key] == raw["cards"][key], key
    assert snap["cards"]["total_ai_cost"] == pytest.approx(raw["cards"]["total_ai_cost"])

    def orgs(m: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [
            (o["organization_id"], o["artifacts_received"], o["artifacts_completed"], o["artifacts_failed"])
            for o in m["organizations"]
        ]

    assert orgs(snap) == orgs(raw) == [("org-a", 4, 2, 1), ("org-b", 3, 2, 1)]
    assert [b["source"] for b in snap["series"]] == [None, None, None, "snapshot", None, "snapshot", "events"]
    assert [b["artifacts_received"] for b in snap["series"]] == [0, 0, 0, 1, 0, 2, 4]
    # a missing daily snapshot is recomputed from raw events, and said so
    for f in (data / "snapshots" / "daily" / "date=2026-11-27").glob("*.parquet"):
        f.unlink()
    behind = reports.metrics(data, now=NOW, range_="7d", exact=True)
    assert [s.date().isoformat() for s in behind["stale_buckets"]] == ["2026-11-27"]
    assert "snapshots are behind: 1 daily bucket" in behind["notes"][0]
    assert behind["cards"]["artifacts_processed"] == raw["cards"]["artifacts_processed"]


def test_metrics_over_days_without_snapshots_are_exact(data: Path) -> None:
    """7d with no daily snapshot: range figures over the raw events of the whole range,
    as aggregate.window_metrics gives them — not weighted means of the days."""
    from voicepipe_obs import aggregate

    for org in (None, "org-b"):
        m = reports.metrics(data, now=NOW, range_="7d", org=org)
        assert m["unavailable"] == []
        exact = aggregate.window_metrics(data, m["start"], NOW, organization_id=org)[0]
        for key in ("avg_end_to_end_latency_ms", "p95_end_to_end_latency_ms"):
            assert m["cards"][key] == pytest.approx(exact[key]), key
        assert m["cards"]["auto_resolution_rate"] == pytest.approx(exact["auto_resolution_rate"])
        stages = {s["stage"]: s for s in m["stages"]}
        assert stages["transcription"]["p95_latency_ms"] == pytest.approx(
            exact["p95_transcription_latency_ms"]
        )
        by_org = {o["organization_id"]: o for o in m["organizations"]}
        for row in aggregate.window_metrics(data, m["start"], NOW, organization_id=org)[1:]:
            got = by_org[row["organization_id"]]["p95_end_to_end_latency_ms"]
            assert got == pytest.approx(row["p95_end_to_end_latency_ms"])


def test_totals_are_zero_not_null_when_nothing_adds_up(data: Path) -> None:
    for range_ in ("1h", "24h", "7d"):
        m = reports.metrics(data, now=NOW, range_=range_, org="nope")
        assert m["cards"]["total_ai_cost"] == 0.0 and m["cards"]["artifacts_processed"] == 0
        assert {b["total_ai_cost"] for b in m["series"]} == {0.0}
    quiet = NOW + dt.timedelta(days=1, hours=1)  # no cost recorded on the 29th
    assert reports.dashboard(data, now=quiet, tz=UTC)["cards"]["cost_today"] == 0.0


def test_metrics_org_filter(data: Path) -> None:
    m = reports.metrics(data, now=NOW, range_="24h", org="org-b")
    assert m["cards"]["artifacts_received"] == 3  # a-004, a-005, a-003
    assert [o["organization_id"] for o in m["organizations"]] == ["org-b"]
    assert m["cards"]["disambiguation_backlog"] == 0
    assert reports.metrics(data, now=NOW, range_="24h", org="' OR 1=1 --")["cards"]["artifacts_received"] == 0


def test_events_newest_first_across_days(data: Path) -> None:
    rows = reports.events(data, now=NOW, limit=1000)["rows"]
    assert len(rows) == 60
    assert [r["timestamp"] for r in rows] == sorted((r["timestamp"] for r in rows), reverse=True)
    assert rows[-1]["artifact_id"] == "a-007"
    f = reports.EventFilter(types=("artifact_completed",), since=at(27, 0), until=at(28, 9))
    assert [r["artifact_id"] for r in reports.events(data, now=NOW, filters=f)["rows"]] == ["a-005", "a-004"]
    with pytest.raises(UsageError, match="unknown event type"):
        reports.events(data, now=NOW, filters=reports.EventFilter(types=("nope",)))


def test_event_payload(data: Path) -> None:
    ev_id = reports.events(data, now=NOW, limit=1)["rows"][0]["event_id"]
    ev = reports.event(data, ev_id)
    assert ev["event_type"] == "claims_extraction_started" and ev["artifact_id"] == "a-006"
    assert ev["attributes"] is None or isinstance(ev["attributes"], dict)
    with pytest.raises(NotFoundError):
        reports.event(data, "' OR 1=1 --")


def test_follow_events_yields_new_files_only(data: Path) -> None:
    import shutil
    import threading
    import time

    from voicepipe_obs import Recorder

    old = next((data / "events" / "date=2026-11-25").rglob("*.parquet"))

    def write() -> None:
        time.sleep(0.3)  # after follow_events has listed the existing files
        # compaction rewrites a closed hour under a new name: not replayed
        shutil.copy(old, old.with_name("compacted-" + old.name))
        with Recorder(data, flush_interval=0.1, recover=False) as r:
            r.emit("budget_exceeded", ai_cost=12.5, organization_id="org-a")

    t = threading.Thread(target=write)
    t.start()
    got = []
    skip = dt.datetime.now(UTC) - dt.timedelta(minutes=10)
    for ev in reports.follow_events(data, poll_interval=0.05, skip_before=skip, stop_after=10):
        got.append(ev)
        break
    t.join()
    assert got and got[0]["event_type"] == "budget_exceeded" and got[0]["kind"] == "failure"


def test_follow_events_skips_a_new_file_with_corrupt_pages(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new file whose footer is valid but whose data pages are garbage lands with
    a good one: --follow warns once naming it and prints the good file's events,
    instead of ending in a DuckDB traceback."""
    import threading
    import time

    from voicepipe_obs import Recorder

    bad_copy: list[Path] = []

    def write() -> None:
        time.sleep(0.3)  # after follow_events has listed the existing files
        with Recorder(data, flush_interval=0.1, recover=False) as r:
            r.emit("budget_exceeded", ai_cost=12.5, organization_id="org-a")
        new = max((data / "events").rglob("*.parquet"), key=lambda p: p.stat().st_mtime_ns)
        raw = bytearray(new.read_bytes())
        footer = int.from_bytes(raw[-8:-4], "little")
        raw[4 : len(raw) - 8 - footer] = b"\x07" * (len(raw) - 12 - footer)
        broken = new.with_name("broken-" + new.name)
        broken.write_bytes(bytes(raw))
        bad_copy.append(broken)

    t = threading.Thread(target=write)
    t.start()
    got = []
    skip = dt.datetime.now(UTC) - dt.timedelta(minutes=10)
    with caplog.at_level("WARNING", logger="voicepipe_obs"):
        for ev in reports.follow_events(data, poll_interval=0.5, skip_before=skip, stop_after=10):
            got.append(ev)
            break
    t.join()
    assert got and got[0]["event_type"] == "budget_exceeded"
    if bad_copy and any(str(bad_copy[0]) in r.getMessage() for r in caplog.records):
        return  # read in the same poll as the good file: skipped with its warning
    # or it landed after the good file's poll: the next one must skip it too
    for _ in reports.follow_events(
        data, poll_interval=0.05, seen_files=set(), skip_before=skip, stop_after=1
    ):
        pass
    assert [r.getMessage() for r in caplog.records if str(bad_copy[0]) in r.getMessage()]


def test_retries_report(data: Path) -> None:
    r = reports.retries(data, now=NOW)
    assert r["totals"] == {"retries": 1, "succeeded": 1, "failed": 0, "pending": 0}
    (row,) = r["rows"]
    assert (row["artifact_id"], row["actor"], row["stage"], row["attempt"], row["outcome"]) == (
        "a-005",
        "alice",
        "transcription",
        1,
        "succeeded",
    )
    assert (row["initiated_at"], row["finished_at"]) == (at(28, 8), at(28, 8, 0, 59))
    assert reports.retries(data, now=NOW, artifact="a-001")["rows"] == []
    assert reports.retries(data, now=NOW, org="org-a")["rows"] == []


def test_alerts_report_reads_the_alert_log(data: Path) -> None:
    from voicepipe_obs import alerts

    empty = reports.alerts(data, now=NOW)
    assert empty["rows"] == [] and empty["alert_log_present"] is False
    alerts.run_check(data, now=NOW, notify=False)
    active = reports.alerts(data, now=NOW)
    assert active["alert_log_present"] is True
    history = reports.alerts(data, now=NOW, history=True)
    assert len(history["rows"]) >= len(active["rows"])
    assert all(r["status"] != "resolved" for r in active["rows"])


def test_filter_values_are_bounded() -> None:
    with pytest.raises(UsageError, match="too long"):
        reports.check_text("--org", "x" * 300)
    with pytest.raises(UsageError, match="NUL"):
        reports.check_text("--org", "a\x00b")
    assert reports.check_text("--org", "' OR 1=1 --") == "' OR 1=1 --"


# ------------------------------------------------------- disambiguation backlog


def _disambiguation_rows(start: dt.datetime) -> list[list[Any]]:
    """Four days from ``start``: o1 flags 3 a day and resolves 1; o2 flags 2 on day 1."""
    from voicepipe_obs import store
    from voicepipe_obs.events import COLUMN_INDEX, NUM_COLUMNS

    def row(n: int, event_type: str, when: dt.datetime, org: str, count: int) -> list[Any]:
        r: list[Any] = [None] * NUM_COLUMNS
        values = {"event_id": f"d{n}", "event_type": event_type, "timestamp": store.to_us(when),
                  "organization_id": org, "artifact_id": f"a{n}", "disambiguation_count": count}  # fmt: skip
        for key, value in values.items():
            r[COLUMN_INDEX[key]] = value
        return r

    rows = []
    for day in range(4):
        t = start + dt.timedelta(days=day, hours=3)
        rows.append(row(10 * day, "entity_needs_disambiguation", t, "o1", 3))
        rows.append(row(10 * day + 1, "entity_user_resolved", t + dt.timedelta(hours=1), "o1", 1))
    rows.append(row(99, "entity_needs_disambiguation", start + dt.timedelta(days=1, hours=5), "o2", 2))
    return rows


def test_disambiguation_backlog_reads_daily_snapshots_and_raw_events(tmp_path: Path) -> None:
    from voicepipe_obs import aggregate, store

    root = tmp_path / "root"
    start = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
    now = start + dt.timedelta(days=3, hours=12)  # day 3 is today
    store.write_event_rows(root, _disambiguation_rows(start), "d")
    raw = (
        reports.disambiguation_backlog(root, now=now),
        reports.disambiguation_backlog(root, now=now, org="o1"),
    )
    assert raw == (4 * 2 + 2, 4 * 2)
    aggregate.aggregate(root, now=now)
    assert reports._snapshot_backlog(root, [start + dt.timedelta(days=d) for d in (1, 2)], None) == {
        start + dt.timedelta(days=1): 4,
        start + dt.timedelta(days=2): 2,
    }
    assert (
        reports.disambiguation_backlog(root, now=now),
        reports.disambiguation_backlog(root, now=now, org="o1"),
    ) == raw
    assert reports.disambiguation_backlog(root, now=now, org="o2") == 2
    # day 2's figures now come from its snapshot: its raw events are no longer read
    for path in store.list_parquet(
        root, since=start + dt.timedelta(days=2), until=start + dt.timedelta(days=3)
    ):
        path.unlink()
    assert reports.disambiguation_backlog(root, now=now) == 4 * 2 + 2
    # the oldest retained day is always read raw (cleanup may have taken part of it)
    for path in store.list_parquet(root, since=start, until=start + dt.timedelta(days=1)):
        path.unlink()
    assert reports.disambiguation_backlog(root, now=now) == 3 * 2 + 2
